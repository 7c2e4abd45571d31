//! The ARM template in `infra/main.json` agrees with the code: every function folder that
//! Event Grid triggers has exactly one event subscription pointing at it; the event types
//! in the filters are exactly the ones the handler decodes; every app setting is one that
//! `Config` reads (or a known Functions platform setting) and every setting the app needs
//! in Azure is set; the role assignments grant what the Azure clients' calls need
//! (`cmkguard_azure::permissions`) at each mode, and nothing a stricter mode would not.
//!
//! Each check returns a list of problems; the mutation tests below break a copy of the
//! template one way at a time and assert the break is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use cmkguard::config::{Mode, channel_var, setting_names};
use cmkguard::events::HANDLED_EVENT_TYPES;
use cmkguard::events::domain::{REGISTRY_WRITE_OPERATION, RESOURCE_WRITE_SUCCESS};
use cmkguard_azure::permissions::{self, BUILTIN_ROLES, Needed, Scope};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main_template() -> Value {
    let path = repo().join("infra/main.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Settings the Functions platform reads (not cmkguard's Config).
const PLATFORM_SETTINGS: &[&str] = &[
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_RUNTIME",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID",
];

/// Settings a deployment in Azure must set (the defaults suit a laptop, not Functions):
/// the mode explicitly, the identity to use, the subscriptions to sweep, a durable ledger,
/// JSON logs, and identity-based host storage and telemetry.
const REQUIRED_SETTINGS: &[&str] = &[
    "CMKGUARD_MODE",
    "AZURE_CLIENT_ID",
    "CMKGUARD_SUBSCRIPTIONS",
    "CMKGUARD_LEDGER",
    "CMKGUARD_LOG_FORMAT",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
];

/// Built-in roles the template assigns for the platform (storage, telemetry, secrets);
/// they grant nothing that `permissions.rs` lists.
const PLATFORM_ROLES: &[(&str, &str)] = &[
    ("b7e6dc6d-f1e8-4753-8033-0f1bdc58ac7b", "Storage Blob Data Owner"),
    ("ba92f5b4-2d11-453d-a403-e96b0029c9fe", "Storage Blob Data Contributor"),
    ("3913510d-42f4-4b42-9ee9-d3e7c6a3f3c6", "Monitoring Metrics Publisher"),
    ("4633458b-17de-408a-b874-0445c86b69e6", "Key Vault Secrets User"),
];

/// A resource and the template that declares it (nested deployments are walked).
struct Found<'a> {
    resource: &'a Value,
    template: &'a Value,
    /// The `Microsoft.Resources/deployments` resource holding `template` (None: top level).
    deployment: Option<&'a Value>,
}

fn walk<'a>(template: &'a Value, deployment: Option<&'a Value>, out: &mut Vec<Found<'a>>) {
    for r in template["resources"].as_array().into_iter().flatten() {
        out.push(Found { resource: r, template, deployment });
        if r["type"] == "Microsoft.Resources/deployments" {
            walk(&r["properties"]["template"], Some(r), out);
        }
    }
}

fn all_resources(t: &Value) -> Vec<Found<'_>> {
    let mut out = Vec::new();
    walk(t, None, &mut out);
    out
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

// ------------------------------------------------------------------ functions and events

/// Function folder name → whether an Event Grid trigger starts it.
fn function_folders() -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("functions")).expect("functions/") {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("function.json")) else { continue };
        let f: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let event_grid = f["bindings"].as_array().into_iter().flatten().any(|b| b["type"] == "eventGridTrigger");
        out.insert(dir.file_name().unwrap().to_string_lossy().into_owned(), event_grid);
    }
    out
}

/// The function an event subscription delivers to (`.../functions/<Name>` in its resource id).
fn target_function(sub: &Value) -> Option<String> {
    let dest = &sub["properties"]["destination"];
    if !str_of(&dest["endpointType"]).eq_ignore_ascii_case("AzureFunction") {
        return None;
    }
    let id = str_of(&dest["properties"]["resourceId"]);
    let rest = &id[id.find("/functions/")? + "/functions/".len()..];
    let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    (!name.is_empty()).then_some(name)
}

fn event_problems(t: &Value, folders: &BTreeMap<String, bool>) -> Vec<String> {
    let mut problems = Vec::new();
    let subs: Vec<&Value> = all_resources(t)
        .into_iter()
        .map(|f| f.resource)
        .filter(|r| str_of(&r["type"]).ends_with("/eventSubscriptions"))
        .collect();
    let mut per_function: BTreeMap<String, usize> = BTreeMap::new();
    let mut routed: BTreeSet<(String, String)> = BTreeSet::new();
    for sub in &subs {
        let Some(function) = target_function(sub) else {
            problems.push(format!("event subscription {} does not deliver to an Azure Function", sub["name"]));
            continue;
        };
        if !folders.contains_key(&function) {
            problems.push(format!(
                "event subscription {} targets function {function:?}, which has no folder under functions/",
                sub["name"]
            ));
        }
        *per_function.entry(function.clone()).or_default() += 1;
        let filter = &sub["properties"]["filter"];
        for ty in filter["includedEventTypes"].as_array().into_iter().flatten() {
            routed.insert((str_of(ty).to_owned(), function.clone()));
        }
        if filter["includedEventTypes"].as_array().is_none_or(|a| a.iter().any(|t| t == RESOURCE_WRITE_SUCCESS)) {
            let narrowed = filter["advancedFilters"].as_array().into_iter().flatten().any(|f| {
                f["operatorType"] == "StringIn"
                    && f["key"] == "data.operationName"
                    && f["values"] == json!([REGISTRY_WRITE_OPERATION])
            });
            if !narrowed {
                problems.push(format!(
                    "event subscription {} takes {RESOURCE_WRITE_SUCCESS} without narrowing data.operationName to {REGISTRY_WRITE_OPERATION}",
                    sub["name"]
                ));
            }
        }
        let props = &sub["properties"];
        if props["deadLetterDestination"].is_null() && props["deadLetterWithResourceIdentity"].is_null() {
            problems.push(format!("event subscription {} has no dead-letter destination", sub["name"]));
        }
        if props["retryPolicy"].is_null() {
            problems.push(format!("event subscription {} has no retry policy", sub["name"]));
        }
    }
    for (name, event_grid) in folders {
        let n = per_function.get(name).copied().unwrap_or(0);
        let want = usize::from(*event_grid);
        if n != want {
            problems.push(format!("function {name} has {n} event subscriptions pointing at it; expected {want}"));
        }
    }
    let handled: BTreeSet<(String, String)> =
        HANDLED_EVENT_TYPES.iter().map(|(t, f)| ((*t).to_owned(), (*f).to_owned())).collect();
    for missing in handled.difference(&routed) {
        problems
            .push(format!("the handler decodes {} for {} but no event subscription delivers it", missing.0, missing.1));
    }
    for extra in routed.difference(&handled) {
        problems.push(format!(
            "an event subscription delivers {} to {}, which the handler does not decode there",
            extra.0, extra.1
        ));
    }
    problems
}

// ------------------------------------------------------------------ app settings

/// Splits `f(a, g(b, c), 'x,y')`'s arguments at top-level commas.
fn call_args<'a>(expr: &'a str, func: &str) -> Option<Vec<&'a str>> {
    let start = expr.find(&format!("{func}("))? + func.len() + 1;
    let (mut depth, mut quoted, mut from, mut args) = (0i32, false, start, Vec::new());
    for (i, c) in expr[start..].char_indices().map(|(i, c)| (i + start, c)) {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth == 0 => {
                args.push(expr[from..i].trim());
                return Some(args);
            }
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                args.push(expr[from..i].trim());
                from = i + 1;
            }
            _ => {}
        }
    }
    None
}

struct AppSettings {
    /// Literal setting names, and whether they are always set.
    literal: BTreeMap<String, bool>,
    /// Name patterns built with `format('…{0}…', …)`.
    patterns: BTreeSet<String>,
}

fn app_settings(t: &Value) -> Result<AppSettings, String> {
    let site = all_resources(t)
        .into_iter()
        .find(|f| f.resource["type"] == "Microsoft.Web/sites")
        .ok_or("no Microsoft.Web/sites")?;
    let wired = str_of(&site.resource["properties"]["siteConfig"]["appSettings"]);
    if wired != "[variables('appSettings')]" {
        return Err(format!("the site's siteConfig.appSettings is {wired:?}, expected \"[variables('appSettings')]\""));
    }
    let vars = &t["variables"];
    let combined = str_of(&vars["appSettings"]);
    let args = call_args(combined, "concat").ok_or("variables.appSettings is not a concat(...) expression")?;
    let mut out = AppSettings { literal: BTreeMap::new(), patterns: BTreeSet::new() };
    let lists: Vec<&str> = vars
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("appSettings") && *k != "appSettings")
        .map(String::as_str)
        .collect();
    for list in lists {
        let reference = format!("variables('{list}')");
        if !combined.contains(&reference) {
            return Err(format!("variables.{list} is not part of variables.appSettings"));
        }
        let always = args.contains(&reference.as_str());
        match &vars[list] {
            Value::Array(items) => {
                for item in items {
                    let name = item["name"]
                        .as_str()
                        .ok_or_else(|| format!("variables.{list}: an entry without a literal name"))?;
                    out.literal.insert(name.to_owned(), always);
                }
            }
            Value::String(expr) => {
                let mut rest = expr.as_str();
                while let Some(i) = rest.find("format('") {
                    let after = &rest[i + "format('".len()..];
                    let end = after.find('\'').ok_or("unterminated format string")?;
                    let pattern = &after[..end];
                    if pattern.starts_with("CMKGUARD_") || pattern.contains("_{0}") {
                        out.patterns.insert(pattern.to_owned());
                    }
                    rest = &after[end..];
                }
            }
            other => return Err(format!("variables.{list} is neither a list nor an expression: {other}")),
        }
    }
    Ok(out)
}

fn setting_problems(t: &Value) -> Vec<String> {
    let settings = match app_settings(t) {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    let config: BTreeSet<String> = setting_names().into_iter().collect();
    for name in settings.literal.keys() {
        if name == "FUNCTIONS_CUSTOMHANDLER_PORT" {
            problems.push(
                "FUNCTIONS_CUSTOMHANDLER_PORT is set by the Functions host; the template must not set it".to_owned(),
            );
        } else if !config.contains(name) && !PLATFORM_SETTINGS.contains(&name.as_str()) {
            problems.push(format!("app setting {name} is neither read by Config nor a known platform setting"));
        }
    }
    let channel_patterns: BTreeSet<String> = ["URL", "SECRET"].iter().map(|w| channel_var("{0}", w)).collect();
    for p in &settings.patterns {
        if !channel_patterns.contains(p) {
            problems.push(format!("app setting pattern {p:?} is not a per-channel variable ({channel_patterns:?})"));
        }
    }
    for req in REQUIRED_SETTINGS {
        match settings.literal.get(*req) {
            Some(true) => {}
            Some(false) => problems.push(format!("required app setting {req} is only set conditionally")),
            None => problems.push(format!("required app setting {req} is not set")),
        }
    }
    let mode = &t["parameters"]["mode"];
    let variants: Vec<Value> = Mode::value_variants().iter().map(|m| json!(m.as_str())).collect();
    if mode["defaultValue"] != json!(Mode::Monitor.as_str()) || mode["allowedValues"] != json!(variants) {
        problems.push(format!("parameter mode must default to monitor and allow exactly {variants:?}: {mode}"));
    }
    let mode_setting =
        t["variables"]["appSettingsCmkguard"].as_array().into_iter().flatten().find(|s| s["name"] == "CMKGUARD_MODE");
    if mode_setting.map(|s| &s["value"]) != Some(&json!("[parameters('mode')]")) {
        problems.push("CMKGUARD_MODE must come from the mode parameter".to_owned());
    }
    problems
}

// ------------------------------------------------------------------ roles

/// The actions and data actions a role assignment grants.
#[derive(Debug, Default, Clone)]
struct Grant {
    actions: Vec<String>,
    data_actions: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
}

/// Resolves an assignment's roleDefinitionId to what it grants; Ok(None) for a platform role.
fn resolve_role(found: &Found<'_>) -> Result<Option<Grant>, String> {
    let expr = str_of(&found.resource["properties"]["roleDefinitionId"]);
    let vars = &found.template["variables"];
    let guid_of = |v: &Value| {
        v.as_str().filter(|s| s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).map(str::to_owned)
    };
    let var = if let Some(i) = expr.find("variables('roles').") {
        let name: String =
            expr[i + "variables('roles').".len()..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        vars["roles"][&name].clone()
    } else if let Some(i) = expr.find("variables('") {
        let rest = &expr[i + "variables('".len()..];
        let name = &rest[..rest.find('\'').unwrap_or(rest.len())];
        if let Some(custom) = all_resources(found.template).into_iter().find(|f| {
            f.resource["type"] == "Microsoft.Authorization/roleDefinitions"
                && str_of(&f.resource["name"]) == format!("[variables('{name}')]")
        }) {
            let mut g = Grant::default();
            for p in custom.resource["properties"]["permissions"].as_array().into_iter().flatten() {
                g.actions.extend(strings(&p["actions"]));
                g.data_actions.extend(strings(&p["dataActions"]));
            }
            return Ok(Some(g));
        }
        vars[name].clone()
    } else {
        Value::Null
    };
    let guid = guid_of(&var).ok_or_else(|| {
        format!("role assignment {}: cannot resolve roleDefinitionId {expr:?}", found.resource["name"])
    })?;
    if let Some(role) = BUILTIN_ROLES.iter().find(|r| r.id.eq_ignore_ascii_case(&guid)) {
        return Ok(Some(Grant {
            actions: role.actions.iter().map(|s| (*s).to_owned()).collect(),
            data_actions: role.data_actions.iter().map(|s| (*s).to_owned()).collect(),
        }));
    }
    if PLATFORM_ROLES.iter().any(|(id, _)| id.eq_ignore_ascii_case(&guid)) {
        return Ok(None);
    }
    Err(format!(
        "role assignment {}: role {guid} is neither in permissions::BUILTIN_ROLES nor a known platform role",
        found.resource["name"]
    ))
}

/// The permission scopes an assignment covers: one at the subscription covers everything
/// in it; one on a vault covers the vault and its keys.
fn covered_scopes(found: &Found<'_>) -> Vec<Scope> {
    let at_subscription =
        found.deployment.is_some_and(|d| d.get("subscriptionId").is_some() && d.get("resourceGroup").is_none())
            && found.resource.get("scope").is_none();
    if at_subscription {
        return vec![Scope::Registries, Scope::Vault, Scope::VaultKeys, Scope::Identity];
    }
    let scope = str_of(&found.resource["scope"]);
    if scope.starts_with("[format('Microsoft.KeyVault/vaults/{0}'")
        && !scope.contains("/secrets/")
        && !scope.contains("/keys/")
    {
        return vec![Scope::Vault, Scope::VaultKeys];
    }
    Vec::new()
}

/// The mode level from which an assignment exists.
fn level(found: &Found<'_>) -> Result<Needed, String> {
    match found.resource.get("condition").map(str_of) {
        None => Ok(Needed::Always),
        Some("[parameters('remediationEnabled')]") => Ok(Needed::Enforce),
        Some("[parameters('vaultKeyRotationEnabled')]") => Ok(Needed::VaultKeyRotation),
        Some(other) => Err(format!("role assignment {}: unknown condition {other:?}", found.resource["name"])),
    }
}

fn role_problems(t: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    // The conditions inside nested templates must be wired to the mode as permissions.rs means.
    let vars = &t["variables"];
    if vars["remediationEnabled"] != json!("[equals(parameters('mode'), 'enforce')]") {
        problems.push(format!("variables.remediationEnabled must be enforce mode: {}", vars["remediationEnabled"]));
    }
    if vars["vaultKeyRotationEnabled"]
        != json!("[and(equals(parameters('mode'), 'enforce'), parameters('enableVaultKeyRotation'))]")
    {
        problems.push(format!(
            "variables.vaultKeyRotationEnabled must be enforce mode and the switch: {}",
            vars["vaultKeyRotationEnabled"]
        ));
    }
    for f in all_resources(t).into_iter().filter(|f| f.resource["type"] == "Microsoft.Resources/deployments") {
        for (param, want) in [
            ("remediationEnabled", "[variables('remediationEnabled')]"),
            ("vaultKeyRotationEnabled", "[variables('vaultKeyRotationEnabled')]"),
        ] {
            let given = &f.resource["properties"]["parameters"][param]["value"];
            if !given.is_null() && *given != json!(want) {
                problems.push(format!("deployment {} passes {param} = {given}, expected {want}", f.resource["name"]));
            }
        }
    }

    let mut grants: Vec<(Vec<Scope>, Needed, Grant)> = Vec::new();
    for f in all_resources(t).into_iter().filter(|f| f.resource["type"] == "Microsoft.Authorization/roleAssignments") {
        let (role, lvl) = match (resolve_role(&f), level(&f)) {
            (Ok(r), Ok(l)) => (r, l),
            (Err(e), _) | (_, Err(e)) => {
                problems.push(e);
                continue;
            }
        };
        if let Some(g) = role {
            grants.push((covered_scopes(&f), lvl, g));
        }
    }
    let levels = [Needed::Always, Needed::Enforce, Needed::VaultKeyRotation];
    for scope in [Scope::Registries, Scope::Vault, Scope::VaultKeys, Scope::Identity] {
        for (i, lvl) in levels.iter().enumerate() {
            let (mut actions, mut data) = (Vec::new(), Vec::new());
            for (scopes, at, g) in &grants {
                if scopes.contains(&scope) && at <= lvl {
                    actions.extend(g.actions.iter().map(String::as_str));
                    data.extend(g.data_actions.iter().map(String::as_str));
                }
            }
            let missing = permissions::missing(scope, *lvl, &actions, &data);
            if !missing.is_empty() {
                problems.push(format!("at {lvl:?} the template does not grant {missing:?} at {scope:?}"));
            }
            // Least privilege: nothing needed only by a stricter level is granted before it.
            let now: BTreeSet<&str> = permissions::actions(scope, *lvl).into_iter().collect();
            for later in &levels[i + 1..] {
                for p in permissions::PERMISSIONS
                    .iter()
                    .filter(|p| p.scope == scope && p.needed == *later && !now.contains(p.action))
                {
                    let granted = if p.data_action { &data } else { &actions };
                    if granted.iter().any(|g| permissions::covers(g, p.action)) {
                        problems.push(format!(
                            "at {lvl:?} the template already grants {} at {scope:?}, needed only at {later:?}",
                            p.action
                        ));
                    }
                }
            }
        }
    }
    problems
}

fn all_problems(t: &Value) -> Vec<String> {
    let folders = function_folders();
    let mut p = event_problems(t, &folders);
    p.extend(setting_problems(t));
    p.extend(role_problems(t));
    p
}

// ------------------------------------------------------------------ tests

#[test]
fn the_template_agrees_with_the_code() {
    let problems = all_problems(&main_template());
    assert!(problems.is_empty(), "infra/main.json disagrees with the code:\n  {}", problems.join("\n  "));
}

#[test]
fn every_event_grid_function_is_wired_and_the_timer_is_not() {
    let folders = function_folders();
    assert!(folders.values().filter(|eg| **eg).count() >= 2, "{folders:?}");
    for (_, f) in HANDLED_EVENT_TYPES {
        assert_eq!(folders.get(*f), Some(&true), "{f} must be an Event Grid function folder");
    }
}

/// Finds the nested template whose deployment name contains `part`.
fn nested<'a>(t: &'a mut Value, part: &str) -> &'a mut Value {
    let resources = t["resources"].as_array_mut().unwrap();
    let d = resources
        .iter_mut()
        .find(|r| r["type"] == "Microsoft.Resources/deployments" && str_of(&r["name"]).contains(part))
        .unwrap_or_else(|| panic!("no nested deployment named like {part}"));
    &mut d["properties"]["template"]
}

fn by_type<'a>(t: &'a mut Value, ty: &str) -> &'a mut Value {
    t["resources"].as_array_mut().unwrap().iter_mut().find(|r| r["type"] == ty).unwrap_or_else(|| panic!("no {ty}"))
}

/// Applies `mutate` to a copy of the template and asserts a problem containing each needle.
fn assert_reported(what: &str, mutate: impl FnOnce(&mut Value), needles: &[&str]) {
    let mut t = main_template();
    mutate(&mut t);
    let problems = all_problems(&t);
    for needle in needles {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{what}: expected a problem mentioning {needle:?}, got {problems:#?}"
        );
    }
}

const SUB: &str = "Microsoft.EventGrid/systemTopics/eventSubscriptions";

#[test]
fn a_function_name_that_does_not_exist_is_reported() {
    assert_reported(
        "misspelt function",
        |t| {
            let sub = by_type(nested(t, "-sub-events"), SUB);
            let id = str_of(&sub["properties"]["destination"]["properties"]["resourceId"])
                .replace("RegistryEvents", "RegistryEvent");
            sub["properties"]["destination"]["properties"]["resourceId"] = json!(id);
        },
        &["\"RegistryEvent\", which has no folder", "function RegistryEvents has 0 event subscriptions"],
    );
}

#[test]
fn a_second_subscription_to_one_function_is_reported() {
    assert_reported(
        "duplicate subscription",
        |t| {
            let vault = nested(t, "-vault-");
            let copy = by_type(vault, SUB).clone();
            vault["resources"].as_array_mut().unwrap().push(copy);
        },
        &["function KeyVaultEvents has 2 event subscriptions"],
    );
}

#[test]
fn a_missing_or_extra_event_type_is_reported() {
    assert_reported(
        "dropped event type",
        |t| {
            let sub = by_type(nested(t, "-vault-"), SUB);
            sub["properties"]["filter"]["includedEventTypes"]
                .as_array_mut()
                .unwrap()
                .retain(|e| e != "Microsoft.KeyVault.KeyExpired");
        },
        &["decodes Microsoft.KeyVault.KeyExpired for KeyVaultEvents but no event subscription delivers it"],
    );
    assert_reported(
        "unhandled event type",
        |t| {
            let sub = by_type(nested(t, "-vault-"), SUB);
            sub["properties"]["filter"]["includedEventTypes"]
                .as_array_mut()
                .unwrap()
                .push(json!("Microsoft.KeyVault.SecretNearExpiry"));
        },
        &["delivers Microsoft.KeyVault.SecretNearExpiry to KeyVaultEvents"],
    );
    assert_reported(
        "registry filter widened",
        |t| {
            let sub = by_type(nested(t, "-sub-events"), SUB);
            sub["properties"]["filter"].as_object_mut().unwrap().remove("advancedFilters");
        },
        &["without narrowing data.operationName"],
    );
}

#[test]
fn unknown_forbidden_and_missing_settings_are_reported() {
    assert_reported(
        "misspelt setting",
        |t| {
            t["variables"]["appSettingsCmkguard"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "CMKGUARD_MODEE", "value": "monitor"}))
        },
        &["CMKGUARD_MODEE is neither read by Config"],
    );
    assert_reported(
        "host port set",
        |t| {
            t["variables"]["appSettingsCmkguard"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "FUNCTIONS_CUSTOMHANDLER_PORT", "value": "8080"}))
        },
        &["FUNCTIONS_CUSTOMHANDLER_PORT is set by the Functions host"],
    );
    assert_reported(
        "ledger dropped",
        |t| t["variables"]["appSettingsCmkguard"].as_array_mut().unwrap().retain(|s| s["name"] != "CMKGUARD_LEDGER"),
        &["required app setting CMKGUARD_LEDGER is not set"],
    );
    assert_reported(
        "bad channel pattern",
        |t| {
            let v = str_of(&t["variables"]["appSettingsChannelUrls"])
                .replace("CMKGUARD_CHANNEL_{0}_URL", "CMKGUARD_CHANNEL_URL_{0}");
            t["variables"]["appSettingsChannelUrls"] = json!(v);
        },
        &["CMKGUARD_CHANNEL_URL_{0}"],
    );
    assert_reported(
        "enforce by default",
        |t| t["parameters"]["mode"]["defaultValue"] = json!("enforce"),
        &["parameter mode must default to monitor"],
    );
}

#[test]
fn missing_and_premature_grants_are_reported() {
    assert_reported(
        "key read dropped",
        |t| {
            let vault = nested(t, "-vault-");
            vault["resources"]
                .as_array_mut()
                .unwrap()
                .retain(|r| !(r["type"] == "Microsoft.Authorization/roleAssignments" && r.get("condition").is_none()));
        },
        &["Microsoft.KeyVault/vaults/keys/read"],
    );
    assert_reported(
        "rotator always on",
        |t| {
            let sub = nested(t, "-sub-roles-");
            for r in sub["resources"].as_array_mut().unwrap() {
                r.as_object_mut().unwrap().remove("condition");
            }
        },
        &["at Always the template already grants Microsoft.ContainerRegistry/registries/write"],
    );
    assert_reported(
        "rotate-key write dropped",
        |t| {
            let sub = nested(t, "-sub-roles-");
            let def = sub["resources"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|r| str_of(&r["name"]) == "[variables('rotatorRoleId')]")
                .unwrap();
            def["properties"]["permissions"][0]["actions"]
                .as_array_mut()
                .unwrap()
                .retain(|a| a != "Microsoft.ContainerRegistry/registries/write");
        },
        &["at Enforce the template does not grant [\"Microsoft.ContainerRegistry/registries/write\"]"],
    );
    assert_reported(
        "crypto officer in monitor mode",
        |t| {
            let vault = nested(t, "-vault-");
            for r in vault["resources"].as_array_mut().unwrap() {
                if r["type"] == "Microsoft.Authorization/roleAssignments" {
                    r.as_object_mut().unwrap().remove("condition");
                }
            }
        },
        &["already grants Microsoft.KeyVault/vaults/keys/rotate/action"],
    );
}

#[test]
fn call_args_splits_at_top_level_only() {
    assert_eq!(
        call_args("[concat(variables('a'), if(x, createArray(), variables('b')), 'p,q')]", "concat").unwrap(),
        ["variables('a')", "if(x, createArray(), variables('b'))", "'p,q'"]
    );
    assert_eq!(call_args("[concat(", "concat"), None);
}

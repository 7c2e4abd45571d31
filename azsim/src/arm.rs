//! The management host: ARM registries (GET/PUT/PATCH/list, LRO), vault GET, Resource
//! Graph queries, and azsim's own control API under `/_azsim/`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::faults::Route;
use crate::http::{Ctx, Flavor, Reply, Settings, arm_error, authorize, fault_reply, hv, json_resp};
use crate::kql::{KqlError, Query};
use crate::world::{Audience, IdentityInfo, NewRegistry, World, parse_kid, rfc3339};

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The parsed ARM path.
enum Path<'a> {
    Registry { sub: &'a str, rg: &'a str, name: &'a str },
    Operation { sub: &'a str, rg: &'a str, name: &'a str, op: &'a str },
    ListSub { sub: &'a str },
    ListRg { sub: &'a str, rg: &'a str },
    Vault { sub: &'a str, rg: &'a str, name: &'a str },
    ResourceGraph,
    Control,
    Other,
}

fn parse_path<'a>(segs: &[&'a str]) -> Path<'a> {
    match segs {
        [c, ..] if *c == "_azsim" => Path::Control,
        [p, rp, r] if eq(p, "providers") && eq(rp, "Microsoft.ResourceGraph") && eq(r, "resources") => {
            Path::ResourceGraph
        }
        [s, sub, p, rp, r]
            if eq(s, "subscriptions")
                && eq(p, "providers")
                && eq(rp, "Microsoft.ContainerRegistry")
                && eq(r, "registries") =>
        {
            Path::ListSub { sub }
        }
        [s, sub, g, rg, p, rp, r]
            if eq(s, "subscriptions")
                && eq(g, "resourceGroups")
                && eq(p, "providers")
                && eq(rp, "Microsoft.ContainerRegistry")
                && eq(r, "registries") =>
        {
            Path::ListRg { sub, rg }
        }
        [s, sub, g, rg, p, rp, r, name]
            if eq(s, "subscriptions")
                && eq(g, "resourceGroups")
                && eq(p, "providers")
                && eq(r, "registries")
                && eq(rp, "Microsoft.ContainerRegistry") =>
        {
            Path::Registry { sub, rg, name }
        }
        [s, sub, g, rg, p, rp, r, name, o, op]
            if eq(s, "subscriptions")
                && eq(g, "resourceGroups")
                && eq(p, "providers")
                && eq(rp, "Microsoft.ContainerRegistry")
                && eq(r, "registries")
                && eq(o, "operationStatuses") =>
        {
            Path::Operation { sub, rg, name, op }
        }
        [s, sub, g, rg, p, rp, v, name]
            if eq(s, "subscriptions")
                && eq(g, "resourceGroups")
                && eq(p, "providers")
                && eq(rp, "Microsoft.KeyVault")
                && eq(v, "vaults") =>
        {
            Path::Vault { sub, rg, name }
        }
        _ => Path::Other,
    }
}

/// Which route a management-host request is (for the call log and faults).
pub fn route_of(ctx: &Ctx) -> Route {
    let segs = ctx.segs();
    match (parse_path(&segs), &ctx.method) {
        (Path::Control, _) => Route::Control,
        (Path::ResourceGraph, m) if m == http::Method::POST => Route::ResourceGraph,
        (Path::ListSub { .. } | Path::ListRg { .. }, m) if m == http::Method::GET => Route::ArmRegistryList,
        (Path::Registry { .. }, m) if m == http::Method::GET => Route::ArmRegistryGet,
        (Path::Registry { .. }, m) if m == http::Method::PUT => Route::ArmRegistryPut,
        (Path::Registry { .. }, m) if m == http::Method::PATCH => Route::ArmRegistryPatch,
        (Path::Operation { .. }, m) if m == http::Method::GET => Route::ArmOperationStatus,
        (Path::Vault { .. }, m) if m == http::Method::GET => Route::ArmVaultGet,
        _ => Route::NotFound,
    }
}

pub fn handle(w: &mut World, s: &Settings, ctx: &Ctx, route: Route) -> Reply {
    if route == Route::Control {
        return crate::control::handle(w, ctx);
    }
    if route == Route::NotFound {
        return arm_error(
            404,
            "NoRegisteredProviderFound",
            &format!("azsim serves no {} {} on the management host.", ctx.method, ctx.path),
        )
        .into();
    }
    let token = match authorize(w, ctx, Audience::Arm) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Some(r) = fault_reply(w, route, Flavor::Arm) {
        return r;
    }
    let Some(api) = ctx.q("api-version").map(str::to_owned) else {
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
        .into();
    };
    let segs = ctx.segs();
    let resp = match parse_path(&segs) {
        Path::ResourceGraph => resource_graph(w, s, ctx),
        Path::Registry { sub, rg, name } => match route {
            Route::ArmRegistryGet => get_registry(w, sub, rg, name),
            Route::ArmRegistryPut => put_registry(w, s, ctx, sub, rg, name, &api, &token.client_id),
            _ => patch_registry(w, s, ctx, sub, rg, name, &api, &token.client_id),
        },
        Path::Operation { sub, rg, name, op }
            if w.operations.get(op).is_none_or(|o| o.registry != registry_key(sub, rg, name)) =>
        {
            arm_error(404, "OperationNotFound", &format!("The operation '{op}' was not found for registry '{name}'."))
        }
        Path::Operation { op, .. } => match w.poll_operation(op) {
            Some(body) => {
                let mut r = json_resp(200, &body);
                if body["status"] == "InProgress" {
                    r.headers_mut().insert("retry-after", hv(&s.lro_retry_after.to_string()));
                }
                r
            }
            None => arm_error(404, "OperationNotFound", &format!("The operation '{op}' was not found.")),
        },
        Path::ListSub { sub } => list_registries(w, ctx, sub, None, &api),
        Path::ListRg { sub, rg } => list_registries(w, ctx, sub, Some(rg), &api),
        Path::Vault { sub, rg, name } => get_vault(w, sub, rg, name),
        Path::Control | Path::Other => arm_error(404, "NotFound", "Not found."),
    };
    let mut resp = resp;
    let reads = if ctx.method == http::Method::GET {
        "x-ms-ratelimit-remaining-subscription-reads"
    } else {
        "x-ms-ratelimit-remaining-subscription-writes"
    };
    if resp.status().as_u16() != 429 {
        resp.headers_mut().insert(reads, hv("1199"));
    }
    resp.into()
}

fn rg_check(w: &World, sub: &str, rg: &str) -> Result<(), http::Response<crate::http::Body>> {
    if !w.resource_groups.keys().any(|(s, _)| eq(s, sub)) {
        return Err(arm_error(404, "SubscriptionNotFound", &format!("The subscription '{sub}' could not be found.")));
    }
    if !w.resource_groups.contains_key(&(sub.to_ascii_lowercase(), rg.to_ascii_lowercase())) {
        return Err(arm_error(404, "ResourceGroupNotFound", &format!("Resource group '{rg}' could not be found.")));
    }
    Ok(())
}

fn registry_key(sub: &str, rg: &str, name: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerRegistry/registries/{name}")
        .to_ascii_lowercase()
}

fn not_found(rg: &str, name: &str) -> http::Response<crate::http::Body> {
    arm_error(
        404,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.ContainerRegistry/registries/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

fn get_registry(w: &World, sub: &str, rg: &str, name: &str) -> http::Response<crate::http::Body> {
    if let Err(r) = rg_check(w, sub, rg) {
        return r;
    }
    match w.registries.get(&registry_key(sub, rg, name)) {
        Some(r) => json_resp(200, &r.doc),
        None => not_found(rg, name),
    }
}

fn get_vault(w: &World, sub: &str, rg: &str, name: &str) -> http::Response<crate::http::Body> {
    if let Err(r) = rg_check(w, sub, rg) {
        return r;
    }
    match w.vaults.get(&name.to_ascii_lowercase()).filter(|v| eq(&v.subscription, sub) && eq(&v.resource_group, rg)) {
        Some(v) => json_resp(200, &w.vault_doc(v)),
        None => arm_error(
            404,
            "ResourceNotFound",
            &format!("The Resource 'Microsoft.KeyVault/vaults/{name}' under resource group '{rg}' was not found."),
        ),
    }
}

fn list_registries(w: &World, ctx: &Ctx, sub: &str, rg: Option<&str>, api: &str) -> http::Response<crate::http::Body> {
    const PAGE: usize = 100;
    if let Some(rg) = rg {
        if let Err(r) = rg_check(w, sub, rg) {
            return r;
        }
    } else if !w.resource_groups.keys().any(|(s, _)| eq(s, sub)) {
        return arm_error(404, "SubscriptionNotFound", &format!("The subscription '{sub}' could not be found."));
    }
    let skip: usize = ctx.q("$skipToken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let all: Vec<&Value> = w
        .registries
        .values()
        .filter(|r| eq(&r.subscription, sub) && rg.is_none_or(|g| eq(&r.resource_group, g)))
        .map(|r| &r.doc)
        .collect();
    let page: Vec<&Value> = all.iter().skip(skip).take(PAGE).copied().collect();
    let mut body = json!({"value": page});
    if skip + PAGE < all.len() {
        let base = match rg {
            Some(g) => format!(
                "{}/subscriptions/{sub}/resourceGroups/{g}/providers/Microsoft.ContainerRegistry/registries",
                w.urls.arm()
            ),
            None => format!("{}/subscriptions/{sub}/providers/Microsoft.ContainerRegistry/registries", w.urls.arm()),
        };
        body["nextLink"] = json!(format!("{base}?api-version={api}&$skipToken={}", skip + PAGE));
    }
    json_resp(200, &body)
}

fn async_url(w: &World, sub: &str, rg: &str, name: &str, op: &str, api: &str) -> String {
    format!(
        "{}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerRegistry/registries/{name}/operationStatuses/{op}?api-version={api}",
        w.urls.arm()
    )
}

fn lro_response(w: &World, s: &Settings, status: u16, body: &Value, url: &str) -> http::Response<crate::http::Body> {
    let _ = w;
    let mut r = json_resp(status, body);
    r.headers_mut().insert("azure-asyncoperation", hv(url));
    r.headers_mut().insert("retry-after", hv(&s.lro_retry_after.to_string()));
    r
}

/// Resolve `userAssignedIdentities` keys of a request body into azsim identities.
fn resolve_identities(w: &World, identity: &Value) -> Result<Vec<IdentityInfo>, http::Response<crate::http::Body>> {
    let ty = identity["type"].as_str().unwrap_or("None");
    if eq(ty, "None") {
        return Ok(Vec::new());
    }
    if !eq(ty, "UserAssigned") {
        return Err(arm_error(
            400,
            "InvalidIdentityType",
            &format!("azsim supports identity type 'UserAssigned' only, not '{ty}'."),
        ));
    }
    let mut out = Vec::new();
    if let Some(m) = identity["userAssignedIdentities"].as_object() {
        for rid in m.keys() {
            match w.identities.iter().find(|i| eq(&i.resource_id, rid)) {
                Some(i) => out.push(i.clone()),
                None => {
                    return Err(arm_error(
                        400,
                        "InvalidUserAssignedIdentity",
                        &format!("The user-assigned identity '{rid}' was not found."),
                    ));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(arm_error(
            400,
            "InvalidIdentity",
            "identity.userAssignedIdentities must name at least one identity.",
        ));
    }
    Ok(out)
}

fn identity_doc(ids: &[IdentityInfo]) -> Value {
    let mut uai = serde_json::Map::new();
    for i in ids {
        uai.insert(i.resource_id.clone(), json!({"principalId": i.principal_id, "clientId": i.client_id}));
    }
    json!({"type": "userAssigned", "userAssignedIdentities": uai})
}

fn identity_ids(doc: &Value) -> Vec<String> {
    doc["identity"]["userAssignedIdentities"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

fn busy(w: &World, key: &str) -> bool {
    w.registries.get(key).is_some_and(|r| {
        let st = r.doc["properties"]["provisioningState"].as_str().unwrap_or("");
        st == "Updating" || st == "Creating"
    })
}

fn conflict() -> http::Response<crate::http::Body> {
    arm_error(
        409,
        "AnotherOperationInProgress",
        "Another operation is in progress on this registry; wait until it completes (azsim approximation).",
    )
}

#[allow(clippy::too_many_arguments)]
fn put_registry(
    w: &mut World,
    s: &Settings,
    ctx: &Ctx,
    sub: &str,
    rg: &str,
    name: &str,
    api: &str,
    caller: &str,
) -> http::Response<crate::http::Body> {
    if let Err(r) = rg_check(w, sub, rg) {
        return r;
    }
    let body = match ctx.json() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = registry_key(sub, rg, name);
    if busy(w, &key) {
        return conflict();
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric()) || name.len() < 5 || name.len() > 50 {
        return arm_error(
            400,
            "RegistryNameInvalid",
            "Registry names may contain only alpha numeric characters and must be between 5 and 50 characters.",
        );
    }
    let Some(location) = body["location"].as_str() else {
        return arm_error(400, "LocationRequired", "The location property is required for this definition.");
    };
    let Some(sku) = body["sku"]["name"].as_str() else {
        return arm_error(400, "SkuRequired", "sku.name is required.");
    };
    if !["Basic", "Standard", "Premium"].iter().any(|x| eq(x, sku)) {
        return arm_error(400, "InvalidSku", &format!("The sku '{sku}' is not valid."));
    }
    let ids = match resolve_identities(w, &body["identity"]) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let enc = &body["properties"]["encryption"];
    let wants_cmk = enc["status"].as_str().is_some_and(|x| eq(x, "enabled"))
        || enc["keyVaultProperties"]["keyIdentifier"].is_string();
    let existing = w.registries.get(&key).map(|r| r.doc.clone());
    let had_cmk = existing.as_ref().is_some_and(|d| d["properties"]["encryption"]["status"] == "enabled");
    if let Some(_old) = &existing {
        if wants_cmk && !had_cmk {
            return cmk_after_creation();
        }
        if had_cmk && !wants_cmk {
            return arm_error(
                400,
                "EncryptionCannotBeDisabled",
                "Customer-managed key encryption cannot be disabled once enabled (azsim approximation).",
            );
        }
    }
    let mut encryption = None;
    if wants_cmk {
        if !eq(sku, "Premium") {
            return arm_error(
                400,
                "CMKNotSupportedForSku",
                "Customer-managed key encryption requires the Premium sku (azsim approximation).",
            );
        }
        let Some(kid) = enc["keyVaultProperties"]["keyIdentifier"].as_str() else {
            return arm_error(
                400,
                "InvalidKeyVaultKeyIdentifier",
                "properties.encryption.keyVaultProperties.keyIdentifier is required.",
            );
        };
        let client = enc["keyVaultProperties"]["identity"].as_str();
        let rids: Vec<String> = ids.iter().map(|i| i.resource_id.clone()).collect();
        if let Err(e) = w.validate_cmk(kid, client, &rids) {
            return arm_error(e.status, &e.code, &e.message);
        }
        encryption = Some((kid.to_owned(), client.unwrap_or_default().to_owned()));
    }
    let tags: std::collections::BTreeMap<String, String> = body["tags"]
        .as_object()
        .map(|m| {
            m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect()
        })
        .unwrap_or_default();
    let canonical_sku = ["Basic", "Standard", "Premium"].into_iter().find(|x| eq(x, sku)).unwrap_or("Premium");
    let created = existing
        .as_ref()
        .and_then(|d| d["systemData"]["createdAt"].as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| w.now());
    let mut doc = w.new_registry_doc(NewRegistry {
        subscription: sub,
        resource_group: rg,
        name,
        location,
        sku: canonical_sku,
        identities: &ids,
        encryption,
        tags: &tags,
        created,
    });
    // Copy settable scalar properties the caller sent.
    if let Some(props) = body["properties"].as_object() {
        for k in [
            "adminUserEnabled",
            "publicNetworkAccess",
            "zoneRedundancy",
            "anonymousPullEnabled",
            "dataEndpointEnabled",
            "networkRuleBypassOptions",
        ] {
            if let Some(v) = props.get(k) {
                doc["properties"][k] = v.clone();
            }
        }
    }
    let key_changed = existing.as_ref().is_some_and(|old| {
        old["properties"]["encryption"]["keyVaultProperties"]["versionedKeyIdentifier"]
            != doc["properties"]["encryption"]["keyVaultProperties"]["versionedKeyIdentifier"]
    });
    let status = if existing.is_some() { 200 } else { 201 };
    let mut shown = match &existing {
        Some(old) => old.clone(),
        None => doc.clone(),
    };
    shown["properties"]["provisioningState"] = json!(if existing.is_some() { "Updating" } else { "Creating" });
    if existing.is_some() {
        w.set_registry_doc(&key, shown.clone());
    } else {
        w.insert_registry(sub, rg, name, shown.clone());
    }
    let op = w.start_operation(&key, doc, key_changed, caller);
    lro_response(w, s, status, &shown, &async_url(w, sub, rg, name, &op, api))
}

fn cmk_after_creation() -> http::Response<crate::http::Body> {
    arm_error(
        400,
        "EncryptionCannotBeEnabledAfterCreation",
        "Customer-managed key encryption can only be enabled when the registry is created (azsim approximation).",
    )
}

/// Merge `patch` into `target` like ARM PATCH: objects merge, other values replace.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
fn patch_registry(
    w: &mut World,
    s: &Settings,
    ctx: &Ctx,
    sub: &str,
    rg: &str,
    name: &str,
    api: &str,
    caller: &str,
) -> http::Response<crate::http::Body> {
    if let Err(r) = rg_check(w, sub, rg) {
        return r;
    }
    let body = match ctx.json() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let key = registry_key(sub, rg, name);
    let Some(old) = w.registries.get(&key).map(|r| r.doc.clone()) else {
        return not_found(rg, name);
    };
    if busy(w, &key) {
        return conflict();
    }
    let mut doc = old.clone();
    if let Some(tags) = body.get("tags").filter(|t| t.is_object()) {
        doc["tags"] = tags.clone();
    }
    if let Some(sku) = body["sku"]["name"].as_str() {
        let Some(canonical) = ["Basic", "Standard", "Premium"].into_iter().find(|x| eq(x, sku)) else {
            return arm_error(400, "InvalidSku", &format!("The sku '{sku}' is not valid."));
        };
        if old["properties"]["encryption"]["status"] == "enabled" && canonical != "Premium" {
            return arm_error(
                400,
                "CMKNotSupportedForSku",
                "A registry with customer-managed key encryption must stay Premium (azsim approximation).",
            );
        }
        doc["sku"] = json!({"name": canonical, "tier": canonical});
    }
    if let Some(identity) = body.get("identity").filter(|i| i.is_object()) {
        match resolve_identities(w, identity) {
            Ok(ids) if ids.is_empty() => {
                if let Some(m) = doc.as_object_mut() {
                    m.remove("identity");
                }
            }
            Ok(ids) => doc["identity"] = identity_doc(&ids),
            Err(r) => return r,
        }
    }
    let mut key_changed = false;
    if let Some(props) = body["properties"].as_object() {
        let read_only = [
            "loginServer",
            "creationDate",
            "provisioningState",
            "status",
            "dataEndpointHostNames",
            "privateEndpointConnections",
            "encryption",
        ];
        for (k, v) in props {
            if read_only.contains(&k.as_str()) {
                continue;
            }
            let mut slot = doc["properties"][k].clone();
            if slot.is_null() {
                slot = v.clone();
            } else {
                merge(&mut slot, v);
            }
            doc["properties"][k] = slot;
        }
        if let Some(enc) = props.get("encryption").filter(|e| e.is_object()) {
            let had = old["properties"]["encryption"]["status"] == "enabled";
            let status = enc["status"].as_str().unwrap_or(if had { "enabled" } else { "disabled" });
            let new_kid = enc["keyVaultProperties"]["keyIdentifier"].as_str();
            if !had && (eq(status, "enabled") || new_kid.is_some()) {
                return cmk_after_creation();
            }
            if had && eq(status, "disabled") {
                return arm_error(
                    400,
                    "EncryptionCannotBeDisabled",
                    "Customer-managed key encryption cannot be disabled once enabled (azsim approximation).",
                );
            }
            if had {
                let old_kvp = &old["properties"]["encryption"]["keyVaultProperties"];
                let kid = new_kid.or(old_kvp["keyIdentifier"].as_str()).unwrap_or_default().to_owned();
                let client =
                    enc["keyVaultProperties"]["identity"].as_str().or(old_kvp["identity"].as_str()).map(str::to_owned);
                if let Err(e) = w.validate_cmk(&kid, client.as_deref(), &identity_ids(&doc)) {
                    return arm_error(e.status, &e.code, &e.message);
                }
                let versioned = w.versioned_of(&kid).unwrap_or_else(|| kid.clone());
                key_changed = old_kvp["versionedKeyIdentifier"].as_str().is_none_or(|v| !eq(v, &versioned));
                let mut kvp = json!({
                    "keyIdentifier": kid,
                    "versionedKeyIdentifier": versioned,
                    "identity": client,
                    "keyRotationEnabled": parse_kid(&kid).is_some_and(|k| k.version.is_none()),
                });
                if let Some(ts) = old_kvp.get("lastKeyRotationTimestamp") {
                    kvp["lastKeyRotationTimestamp"] = ts.clone();
                }
                doc["properties"]["encryption"] = json!({"status": "enabled", "keyVaultProperties": kvp});
            }
        }
    }
    // The encryption identity must stay attached.
    if let Some(client) = doc["properties"]["encryption"]["keyVaultProperties"]["identity"].as_str() {
        let attached = doc["identity"]["userAssignedIdentities"]
            .as_object()
            .is_some_and(|m| m.values().any(|v| v["clientId"].as_str().is_some_and(|c| eq(c, client))));
        if !attached {
            return arm_error(
                400,
                "InvalidEncryptionIdentity",
                &format!("The encryption identity '{client}' is not assigned to the registry."),
            );
        }
    }
    let mut shown = old;
    shown["properties"]["provisioningState"] = json!("Updating");
    shown["systemData"]["lastModifiedAt"] = json!(rfc3339(w.now()));
    w.set_registry_doc(&key, shown.clone());
    let op = w.start_operation(&key, doc, key_changed, caller);
    lro_response(w, s, 201, &shown, &async_url(w, sub, rg, name, &op, api))
}

// ------------------------------------------------------------------ Resource Graph

fn rg_bad_request(detail_code: &str, message: &str) -> http::Response<crate::http::Body> {
    json_resp(
        400,
        &json!({"error": {
            "code": "BadRequest",
            "message": "Please provide below info when asking for support: timestamp, correlationId.",
            "details": [{"code": detail_code, "message": message}],
        }}),
    )
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SkipToken {
    skip: usize,
    q: String,
}

fn query_fingerprint(query: &str, subs: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(query.as_bytes());
    for s in subs {
        h.update(b"\0");
        h.update(s.to_ascii_lowercase().as_bytes());
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn resource_graph(w: &World, s: &Settings, ctx: &Ctx) -> http::Response<crate::http::Body> {
    let body = match ctx.json() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(text) = body["query"].as_str() else {
        return rg_bad_request("InvalidQuery", "The request body needs a 'query' string.");
    };
    let query = match Query::parse(text) {
        Ok(q) => q,
        Err(e @ KqlError::Unsupported(_)) => return rg_bad_request("UnsupportedQuery", &e.to_string()),
        Err(e) => return rg_bad_request("InvalidQuery", &format!("Query is invalid: {e}")),
    };
    let subs: Vec<String> = body["subscriptions"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let opts = &body["options"];
    if let Some(fmt) = opts["resultFormat"].as_str()
        && !eq(fmt, "objectArray")
    {
        return rg_bad_request("UnsupportedQuery", &format!("resultFormat '{fmt}' (azsim serves objectArray only)"));
    }
    let top = match &opts["$top"] {
        Value::Null => s.rg_default_top,
        v => match v.as_u64() {
            Some(n) if (1..=1000).contains(&n) => n as usize,
            _ => return rg_bad_request("InvalidQuery", "options.$top must be a whole number from 1 to 1000."),
        },
    };
    let fp = query_fingerprint(text, &subs);
    let skip = match opts["$skipToken"].as_str() {
        Some(tok) => {
            let parsed = STANDARD
                .decode(tok)
                .ok()
                .and_then(|b| serde_json::from_slice::<SkipToken>(&b).ok())
                .filter(|t| t.q == fp);
            match parsed {
                Some(t) => t.skip,
                None => {
                    return rg_bad_request(
                        "InvalidSkipToken",
                        "The $skipToken is invalid or belongs to a different query.",
                    );
                }
            }
        }
        None => match &opts["$skip"] {
            Value::Null => 0,
            v => match v.as_u64() {
                Some(n) => n as usize,
                None => return rg_bad_request("InvalidQuery", "options.$skip must be a whole number."),
            },
        },
    };
    let in_scope = |sub: &str| subs.is_empty() || subs.iter().any(|x| eq(x, sub));
    let vault_rows: Vec<Value> =
        w.vaults.values().filter(|v| in_scope(&v.subscription)).map(|v| w.vault_row(v)).collect();
    let rows = w.registries.values().filter(|r| in_scope(&r.subscription)).map(|r| &r.row).chain(vault_rows.iter());
    let page = query.page(rows, skip, top);
    let more = skip + page.len() < page.total;
    let out = RgResponse {
        total_records: page.total,
        count: page.len(),
        result_truncated: if more && !query.projects_id() { "true" } else { "false" },
        facets: [],
        skip_token: (more && query.projects_id()).then(|| {
            let tok = SkipToken { skip: skip + top, q: fp };
            STANDARD.encode(serde_json::to_vec(&tok).unwrap_or_default())
        }),
        data: page,
    };
    // Serialized straight from the stored rows (no copy of the page).
    match serde_json::to_vec(&out) {
        Ok(bytes) => crate::http::json_bytes(200, bytes),
        Err(e) => arm_error(500, "InternalServerError", &format!("serializing the page failed: {e}")),
    }
}

/// Resource Graph's response body (2024-04-01).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RgResponse<'q, 'a> {
    total_records: usize,
    count: usize,
    result_truncated: &'static str,
    facets: [(); 0],
    #[serde(rename = "$skipToken", skip_serializing_if = "Option::is_none")]
    skip_token: Option<String>,
    data: crate::kql::Page<'q, 'a>,
}

//! cmkguard's default policy: keeps container registries' customer-managed keys healthy.
//!
//! Rules (ids are stable; test cases in `../testcases/default/` cover each):
//! - `CMK001` registry without CMK (written or swept) → critical + notify. CMK can only be
//!   chosen at creation, so nothing is remediated.
//! - `CMK002` registry pinned to a versioned key while `prefer_versionless` → rotate to versionless.
//! - `CMK003` key near expiry (within `expiry_warning_days`) → medium, days left and every
//!   registry using it; rotate the vault key when `rotate_vault_key_near_expiry`.
//! - `CMK004` key has a new version → rotate registries pinned to an older version;
//!   audit only for versionless registries (they follow within an hour).
//! - `CMK005` key expired, `CMK006` key disabled, `CMK007` key not RSA → critical.
//! - `CMK008` vault without soft delete or purge protection → high (unconfirmed → low).
//!
//! A registry tagged with `exemption_tag` (any value but `false`) is left alone. While the
//! key itself is unhealthy (CMK005–CMK007) no registry is rotated onto it.

use cmkguard_policy_sdk::{
    CONTRACT_VERSION, DecisionBuilder, EventKind, Input, Key, KeyRef, Policy, PolicyMetadata, Registry, ResourceRef,
    RotateTarget, Severity, concat, days_until, parse_severity, severity_name, severity_rank, tag,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The policy's settings (`CMKGUARD_POLICY_SETTINGS`); every field is optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Settings {
    /// Channel per severity name (`info` … `critical`); unlisted severities use `default_channel`.
    channels: BTreeMap<String, String>,
    /// Channel for severities not in `channels`; `null` = no notification for them.
    default_channel: Option<String>,
    /// Findings below this severity are not notified.
    notify_min_severity: String,
    /// Registries with this tag are exempt.
    exemption_tag: String,
    /// Warn this many days before a key expires.
    expiry_warning_days: i64,
    /// Registries should use versionless key ids (follow new versions by themselves).
    prefer_versionless: bool,
    /// Ask for a new vault key version when the key nears expiry.
    rotate_vault_key_near_expiry: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            channels: BTreeMap::new(),
            default_channel: Some("ops".to_owned()),
            notify_min_severity: "medium".to_owned(),
            exemption_tag: "cmkguard-exempt".to_owned(),
            expiry_warning_days: 30,
            prefer_versionless: true,
            rotate_vault_key_near_expiry: false,
        }
    }
}

/// Settings checked and resolved.
struct Config {
    channels: [Option<String>; 5],
    notify_min: Severity,
    exemption_tag: String,
    warning_secs: i64,
    prefer_versionless: bool,
    rotate_vault_key: bool,
}

fn valid_channel(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn config(settings: &str) -> Result<Config, String> {
    // No settings (the common case) skips the JSON parser.
    let s: Settings = match settings.trim() {
        "" | "{}" => Settings::default(),
        text => serde_json::from_str(text).map_err(|e| format!("settings: {e}"))?,
    };
    let mut channels: [Option<String>; 5] = Default::default();
    if let Some(d) = &s.default_channel {
        if !valid_channel(d) {
            return Err(format!("settings: default_channel {d:?} may only use letters, digits, - and _ (at most 64)"));
        }
        channels.iter_mut().for_each(|c| *c = Some(d.clone()));
    }
    for (sev, channel) in &s.channels {
        let sev = parse_severity(sev).ok_or_else(|| {
            format!("settings: channels has unknown severity {sev:?} (info, low, medium, high, critical)")
        })?;
        if !valid_channel(channel) {
            return Err(format!("settings: channel {channel:?} may only use letters, digits, - and _ (at most 64)"));
        }
        channels[severity_rank(sev) as usize] = Some(channel.clone());
    }
    let notify_min = parse_severity(&s.notify_min_severity)
        .ok_or_else(|| format!("settings: notify_min_severity {:?} is not a severity", s.notify_min_severity))?;
    if !(1..=365).contains(&s.expiry_warning_days) {
        return Err(format!("settings: expiry_warning_days must be between 1 and 365, not {}", s.expiry_warning_days));
    }
    if s.exemption_tag.trim().is_empty() {
        return Err("settings: exemption_tag must not be empty".to_owned());
    }
    Ok(Config {
        channels,
        notify_min,
        exemption_tag: s.exemption_tag,
        warning_secs: s.expiry_warning_days * 86_400,
        prefer_versionless: s.prefer_versionless,
        rotate_vault_key: s.rotate_vault_key_near_expiry,
    })
}

/// The policy (public for the native profiling harness, `examples/profile.rs`).
pub struct DefaultPolicy;

impl Policy for DefaultPolicy {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata {
            name: "cmkguard-default".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            contract_version: CONTRACT_VERSION.to_owned(),
        }
    }

    fn validate_settings(settings: &str) -> Result<(), String> {
        config(settings).map(|_| ())
    }

    fn evaluate(input: &Input<'_>) -> Result<cmkguard_policy_sdk::Decision, String> {
        let cfg = config(input.settings)?;
        Ok(evaluate(&cfg, input))
    }
}

cmkguard_policy_sdk::export_policy!(DefaultPolicy);

struct Ctx<'a> {
    cfg: &'a Config,
    out: DecisionBuilder,
}

impl Ctx<'_> {
    fn report(&mut self, rule: &str, severity: Severity, resource: ResourceRef, title: &str, message: String) {
        if severity_rank(severity) >= severity_rank(self.cfg.notify_min)
            && let Some(channel) = &self.cfg.channels[severity_rank(severity) as usize]
        {
            let title = concat(&["[", severity_name(severity), "] ", rule, ": ", title]);
            self.out.notify(channel, severity, title, message.clone());
        }
        self.out.finding(rule, severity, resource, message);
    }
}

/// A registry the rules look at (not exempt), with its configured key id parsed.
struct InScope<'a> {
    r: &'a Registry<'a>,
    key: Option<KeyRef<'a>>,
}

fn exempt(cfg: &Config, r: &Registry<'_>) -> bool {
    tag(r, &cfg.exemption_tag).is_some_and(|v| !v.trim().eq_ignore_ascii_case("false"))
}

fn evaluate(cfg: &Config, input: &Input<'_>) -> cmkguard_policy_sdk::Decision {
    let mut cx = Ctx { cfg, out: DecisionBuilder::new() };
    let kind = input.event.kind;
    // Each registry's configured key id is parsed once, here.
    let registries: Vec<InScope<'_>> = input
        .registries
        .iter()
        .filter(|r| !exempt(cfg, r))
        .map(|r| InScope { r, key: r.key_identifier.and_then(KeyRef::parse) })
        .collect();

    // CMK001: a registry written (or found by a sweep) without CMK.
    if matches!(kind, EventKind::RegistryWritten | EventKind::Sweep) {
        for InScope { r, .. } in registries.iter().filter(|s| !s.r.encryption_enabled) {
            let why = if r.sku.eq_ignore_ascii_case("premium") {
                "CMK can only be chosen when a registry is created: recreate it with a customer-managed key and move its images"
            } else {
                "CMK needs the Premium SKU and can only be chosen when a registry is created: recreate it as Premium with a customer-managed key"
            };
            cx.report(
                "CMK001",
                Severity::Critical,
                (*r).into(),
                "registry without customer-managed key",
                concat(&[
                    "Registry ",
                    r.name,
                    " (",
                    r.sku,
                    ", ",
                    r.location,
                    ") is not encrypted with a customer-managed key. ",
                    why,
                    ".",
                ]),
            );
        }
    }

    let key_ok = match &input.key {
        Some(key) => key_rules(&mut cx, input, key, &registries),
        None => true,
    };

    // CMK002 / CMK004: registries pinned to a key version.
    if key_ok {
        registry_key_rules(&mut cx, input, &registries);
    }

    if cx.out.has_findings() {
        cx.out.audit();
    }
    cx.out.build()
}

/// Key-level rules; returns whether the key is healthy enough to rotate registries onto.
fn key_rules(cx: &mut Ctx<'_>, input: &Input<'_>, key: &Key<'_>, registries: &[InScope<'_>]) -> bool {
    let kind = input.event.kind;
    let now = input.now;
    let Some(kref) = KeyRef::parse(key.key_id) else {
        return false;
    };
    let users: Vec<&str> =
        registries.iter().filter(|s| s.key.as_ref().is_some_and(|k| k.same_key(&kref))).map(|s| s.r.name).collect();
    let used_by = if users.is_empty() { "no registry in scope".to_owned() } else { users.join(", ") };
    let mut healthy = true;

    // CMK005: expired.
    let expired = key.expires.is_some_and(|e| e <= now);
    if expired || kind == EventKind::KeyExpired {
        healthy = false;
        cx.report(
            "CMK005",
            Severity::Critical,
            ResourceRef::Key,
            "key expired",
            format!("Key {} in {} has expired; registries using it ({used_by}) cannot read their content. Create a new key version and rotate them.", key.name, key.vault_uri),
        );
    } else if let Some(exp) = key
        .expires
        .filter(|e| e - now <= cx.cfg.warning_secs)
        .or(key.expires.filter(|_| kind == EventKind::KeyNearExpiry))
    {
        // CMK003: near expiry.
        let days = days_until(now, exp);
        cx.report(
            "CMK003",
            Severity::Medium,
            ResourceRef::Key,
            "key near expiry",
            format!("Key {} in {} expires in {days} day(s); used by: {used_by}.", key.name, key.vault_uri),
        );
        if cx.cfg.rotate_vault_key && key.enabled {
            cx.out.rotate_vault_key();
        }
    } else if kind == EventKind::KeyNearExpiry {
        cx.report(
            "CMK003",
            Severity::Medium,
            ResourceRef::Key,
            "key near expiry",
            format!(
                "Key Vault reports key {} in {} near expiry (expiry date unknown); used by: {used_by}.",
                key.name, key.vault_uri
            ),
        );
    }

    // CMK006: disabled.
    if !key.enabled {
        healthy = false;
        cx.report(
            "CMK006",
            Severity::Critical,
            ResourceRef::Key,
            "key disabled",
            format!(
                "Key {} in {} is disabled; registries using it ({used_by}) cannot read their content.",
                key.name, key.vault_uri
            ),
        );
    }

    // CMK007: not RSA.
    if !(key.key_type.eq_ignore_ascii_case("RSA") || key.key_type.eq_ignore_ascii_case("RSA-HSM")) {
        healthy = false;
        cx.report(
            "CMK007",
            Severity::Critical,
            ResourceRef::Key,
            "key is not RSA",
            format!(
                "Key {} in {} is {}; container registry encryption needs RSA or RSA-HSM.",
                key.name, key.vault_uri, key.key_type
            ),
        );
    }

    // CMK008: vault safety net.
    let vault = &key.vault;
    let missing: Vec<&str> = [("soft delete", vault.soft_delete), ("purge protection", vault.purge_protection)]
        .into_iter()
        .filter(|(_, v)| *v == Some(false))
        .map(|(n, _)| n)
        .collect();
    let unknown: Vec<&str> = [("soft delete", vault.soft_delete), ("purge protection", vault.purge_protection)]
        .into_iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        cx.report(
            "CMK008",
            Severity::High,
            ResourceRef::Vault,
            "vault can lose the key",
            format!(
                "Vault {} has no {}: a deleted key (and every registry using it: {used_by}) could be lost for good.",
                key.vault_uri,
                missing.join(" and ")
            ),
        );
    } else if !unknown.is_empty() {
        cx.report(
            "CMK008",
            Severity::Low,
            ResourceRef::Vault,
            "vault protection not confirmed",
            format!("Could not confirm {} on vault {}.", unknown.join(" and "), key.vault_uri),
        );
    }
    healthy
}

fn registry_key_rules(cx: &mut Ctx<'_>, input: &Input<'_>, registries: &[InScope<'_>]) {
    let kind = input.event.kind;
    let key = input.key.as_ref();
    let kref = key.and_then(|k| KeyRef::parse(k.key_id));
    for InScope { r, key: configured } in registries.iter().filter(|s| s.r.encryption_enabled) {
        let Some(configured) = configured else {
            continue;
        };
        let ours = kref.as_ref().is_some_and(|k| k.same_key(configured));
        match configured.version {
            Some(pinned) => {
                let outdated =
                    ours && kref.as_ref().and_then(|k| k.version).is_some_and(|v| !v.eq_ignore_ascii_case(pinned));
                if kind == EventKind::KeyNewVersionCreated && outdated {
                    // CMK004: pinned to an older version.
                    let target =
                        if cx.cfg.prefer_versionless { RotateTarget::Versionless } else { RotateTarget::LatestVersion };
                    cx.out.finding(
                        "CMK004",
                        Severity::Low,
                        *r,
                        concat(&[
                            "Registry ",
                            r.name,
                            " is pinned to key version ",
                            pinned,
                            "; a new version exists: rotating.",
                        ]),
                    );
                    cx.out.rotate_registry(r, target);
                } else if cx.cfg.prefer_versionless && (ours || key.is_none()) {
                    // CMK002: pinned while versionless is preferred.
                    cx.out.finding(
                        "CMK002",
                        Severity::Low,
                        *r,
                        concat(&[
                            "Registry ",
                            r.name,
                            " is pinned to key version ",
                            pinned,
                            "; versionless keys are preferred (it then follows new versions by itself): rotating to versionless.",
                        ]),
                    );
                    cx.out.rotate_registry(r, RotateTarget::Versionless);
                }
            }
            None if kind == EventKind::KeyNewVersionCreated && ours => {
                cx.out.finding(
                    "CMK004",
                    Severity::Info,
                    *r,
                    concat(&[
                        "Registry ",
                        r.name,
                        " uses the versionless key id and picks up the new version by itself (within about an hour).",
                    ]),
                );
                cx.out.audit();
            }
            None => {}
        }
    }
}

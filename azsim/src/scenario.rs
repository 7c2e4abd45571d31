//! The scenario file: azsim's seed state (tenant, vaults, keys, registries, clock), one
//! JSON format shared by the demo and the end-to-end tests (documented in SCENARIO.md).

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a scenario could not be loaded. Always names the offending part.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("scenario is not valid JSON for azsim: {0}")]
    Json(#[from] serde_json::Error),
    #[error("scenario is inconsistent: {0}")]
    Invalid(String),
}

/// A moment in scenario time: an RFC 3339 timestamp, or relative to the scenario
/// clock (`now`, `now+10d`, `now-90d`, `now+2h`, `now+30m`, `now+15s`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    Absolute(DateTime<Utc>),
    Relative(Duration),
}

impl TimeSpec {
    /// Resolve against the scenario's start time.
    pub fn resolve(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            TimeSpec::Absolute(t) => *t,
            TimeSpec::Relative(d) => now + *d,
        }
    }

    /// Parse the textual form (see the type's docs).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(rest) = t.strip_prefix("now") {
            if rest.is_empty() {
                return Ok(TimeSpec::Relative(Duration::zero()));
            }
            let (sign, num) = match rest.as_bytes()[0] {
                b'+' => (1i64, &rest[1..]),
                b'-' => (-1i64, &rest[1..]),
                _ => return Err(format!("bad relative time {s:?}: expected now+N[dhms] or now-N[dhms]")),
            };
            if num.len() < 2 {
                return Err(format!("bad relative time {s:?}: missing amount or unit"));
            }
            // The unit is the last character, which may be more than one byte (found by fuzzing).
            let unit_at = num.char_indices().last().map_or(0, |(i, _)| i);
            let (digits, unit) = num.split_at(unit_at);
            let n: i64 =
                digits.parse().map_err(|_| format!("bad relative time {s:?}: {digits:?} is not a whole number"))?;
            let secs = match unit {
                "d" => n.checked_mul(86_400),
                "h" => n.checked_mul(3_600),
                "m" => n.checked_mul(60),
                "s" => Some(n),
                _ => return Err(format!("bad relative time {s:?}: unit must be d, h, m or s")),
            }
            .filter(|v| v.abs() <= 100 * 365 * 86_400)
            .ok_or_else(|| format!("bad relative time {s:?}: out of range"))?;
            return Ok(TimeSpec::Relative(Duration::seconds(sign * secs)));
        }
        DateTime::parse_from_rfc3339(t)
            .map(|d| TimeSpec::Absolute(d.with_timezone(&Utc)))
            .map_err(|e| format!("bad time {s:?}: {e} (use RFC 3339 or now±N[dhms])"))
    }
}

impl fmt::Display for TimeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeSpec::Absolute(t) => write!(f, "{}", t.to_rfc3339()),
            TimeSpec::Relative(d) => {
                let s = d.num_seconds();
                if s == 0 { write!(f, "now") } else { write!(f, "now{}{}s", if s < 0 { '-' } else { '+' }, s.abs()) }
            }
        }
    }
}

impl Serialize for TimeSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TimeSpec::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The whole seed state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    /// Entra tenant id (GUID) used in challenges, vaults and events.
    pub tenant: String,
    /// Scenario time. Absent: the real clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockSpec>,
    pub subscriptions: Vec<Subscription>,
    /// User-assigned managed identities (registries reference them by `name`).
    #[serde(default)]
    pub identities: Vec<Identity>,
    /// The caller's system-assigned identity (token requests without a client id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identity: Option<SystemIdentity>,
    #[serde(default)]
    pub vaults: Vec<Vault>,
    #[serde(default)]
    pub registries: Vec<Registry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClockSpec {
    /// Scenario start time (RFC 3339).
    pub now: DateTime<Utc>,
    /// `true`: time stands still unless moved through the control API;
    /// `false` (default): it advances with the wall clock from `now`.
    #[serde(default)]
    pub frozen: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    pub id: String,
    #[serde(default)]
    pub resource_groups: Vec<ResourceGroup>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceGroup {
    pub name: String,
    pub location: String,
}

/// Where a resource lives. `subscription` defaults to the first subscription.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    pub resource_group: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    pub name: String,
    #[serde(flatten)]
    pub placement: Placement,
    pub client_id: String,
    pub principal_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemIdentity {
    pub client_id: String,
    pub principal_id: String,
}

fn yes() -> bool {
    true
}
fn ninety() -> u32 {
    90
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Vault {
    pub name: String,
    #[serde(flatten)]
    pub placement: Placement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default = "yes")]
    pub soft_delete: bool,
    #[serde(default = "ninety")]
    pub soft_delete_retention_days: u32,
    #[serde(default)]
    pub purge_protection: bool,
    #[serde(default)]
    pub keys: Vec<Key>,
}

/// Key type as Key Vault names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kty {
    #[serde(rename = "RSA")]
    Rsa,
    #[serde(rename = "RSA-HSM")]
    RsaHsm,
    #[serde(rename = "EC")]
    Ec,
    #[serde(rename = "EC-HSM")]
    EcHsm,
}

impl Kty {
    pub fn as_str(self) -> &'static str {
        match self {
            Kty::Rsa => "RSA",
            Kty::RsaHsm => "RSA-HSM",
            Kty::Ec => "EC",
            Kty::EcHsm => "EC-HSM",
        }
    }
    pub fn is_rsa(self) -> bool {
        matches!(self, Kty::Rsa | Kty::RsaHsm)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Key {
    pub name: String,
    pub kty: Kty,
    /// RSA modulus size in bits (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// EC curve (default P-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Oldest first; the last one is the current version. At least one.
    pub versions: Vec<KeyVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<RotationPolicy>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyVersion {
    /// 32 hex characters; generated deterministically when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<TimeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<TimeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<TimeSpec>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotationPolicy {
    /// Key Vault's `lifetimeActions`, e.g.
    /// `[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}]`.
    #[serde(default)]
    pub lifetime_actions: Vec<serde_json::Value>,
    /// ISO-8601 duration for new versions' expiry, e.g. `P2Y`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_time: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Registry {
    pub name: String,
    #[serde(flatten)]
    pub placement: Placement,
    /// Defaults to the resource group's location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `Basic`, `Standard` or `Premium` (default; CMK needs Premium).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// Names of user-assigned identities attached to the registry.
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<TimeSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Encryption {
    /// `vault/key` (versionless), `vault/key/<version>` or `vault/key/@N` (the N-th
    /// listed version, 0-based; `@latest` for the current one) — versioned.
    pub key: String,
    /// Name of the identity (listed in the registry's `identities`) used to reach the key.
    pub identity: String,
}

/// A parsed `Encryption::key` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub vault: String,
    pub key: String,
    pub version: VersionRef,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionRef {
    Versionless,
    Id(String),
    Index(usize),
    Latest,
}

impl KeyRef {
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad =
            || format!("key reference {s:?} must be vault/key, vault/key/<version>, vault/key/@N or vault/key/@latest");
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let version = match parts.as_slice() {
            [_, _] => VersionRef::Versionless,
            [_, _, v] => match v.strip_prefix('@') {
                Some("latest") => VersionRef::Latest,
                Some(n) => VersionRef::Index(n.parse().map_err(|_| bad())?),
                None => VersionRef::Id((*v).to_owned()),
            },
            _ => return Err(bad()),
        };
        Ok(KeyRef { vault: parts[0].to_owned(), key: parts[1].to_owned(), version })
    }
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 90
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Scenario {
    /// Parse and validate scenario JSON.
    pub fn from_json(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = serde_json::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    /// Read, parse and validate a scenario file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: path.display().to_string(), source })?;
        Self::from_json(&text)
    }

    /// Scenario start time (the pinned clock, or now).
    pub fn start_time(&self) -> DateTime<Utc> {
        self.clock.as_ref().map(|c| c.now).unwrap_or_else(Utc::now)
    }

    pub(crate) fn subscription_of<'a>(&'a self, p: &'a Placement) -> &'a str {
        p.subscription.as_deref().unwrap_or_else(|| self.subscriptions[0].id.as_str())
    }

    fn rg_exists(&self, p: &Placement) -> bool {
        let sub = self.subscription_of(p);
        self.subscriptions.iter().any(|s| {
            s.id.eq_ignore_ascii_case(sub)
                && s.resource_groups.iter().any(|r| r.name.eq_ignore_ascii_case(&p.resource_group))
        })
    }

    /// Check every cross reference; errors name the offending entry.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if !is_guid(&self.tenant) {
            return bad(format!("tenant {:?} is not a GUID", self.tenant));
        }
        if self.subscriptions.is_empty() {
            return bad("at least one subscription is required".into());
        }
        for s in &self.subscriptions {
            if !is_guid(&s.id) {
                return bad(format!("subscription id {:?} is not a GUID", s.id));
            }
            for rg in &s.resource_groups {
                if !valid_name(&rg.name) {
                    return bad(format!("resource group name {:?} is not valid", rg.name));
                }
            }
        }
        let mut seen = HashSet::new();
        for i in &self.identities {
            if !valid_name(&i.name) || !seen.insert(i.name.to_ascii_lowercase()) {
                return bad(format!("identity {:?}: invalid or duplicate name", i.name));
            }
            if !is_guid(&i.client_id) || !is_guid(&i.principal_id) {
                return bad(format!("identity {:?}: clientId and principalId must be GUIDs", i.name));
            }
            if !self.rg_exists(&i.placement) {
                return bad(format!(
                    "identity {:?}: resource group {:?} is not declared",
                    i.name, i.placement.resource_group
                ));
            }
        }
        let mut vault_names = HashSet::new();
        for v in &self.vaults {
            let ok = v.name.len() >= 3
                && v.name.len() <= 24
                && v.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok || !vault_names.insert(v.name.to_ascii_lowercase()) {
                return bad(format!("vault {:?}: invalid (3-24 letters, digits, dashes) or duplicate name", v.name));
            }
            if !self.rg_exists(&v.placement) {
                return bad(format!(
                    "vault {:?}: resource group {:?} is not declared",
                    v.name, v.placement.resource_group
                ));
            }
            let mut key_names = HashSet::new();
            for k in &v.keys {
                let ok = !k.name.is_empty()
                    && k.name.len() <= 127
                    && k.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !ok || !key_names.insert(k.name.to_ascii_lowercase()) {
                    return bad(format!("key {}/{}: invalid or duplicate name", v.name, k.name));
                }
                if k.versions.is_empty() {
                    return bad(format!("key {}/{}: needs at least one version", v.name, k.name));
                }
                let mut ids = HashSet::new();
                for ver in &k.versions {
                    if let Some(id) = &ver.version {
                        let ok = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
                        if !ok || !ids.insert(id.to_ascii_lowercase()) {
                            return bad(format!(
                                "key {}/{}: version {id:?} must be 32 hex characters and unique",
                                v.name, k.name
                            ));
                        }
                    }
                }
                if let Some(size) = k.size
                    && (!k.kty.is_rsa() || ![2048, 3072, 4096].contains(&size))
                {
                    return bad(format!(
                        "key {}/{}: size {size} needs an RSA key of 2048, 3072 or 4096 bits",
                        v.name, k.name
                    ));
                }
            }
        }
        let mut reg_names = HashSet::new();
        for r in &self.registries {
            let ok = r.name.len() >= 5 && r.name.len() <= 50 && r.name.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok || !reg_names.insert(r.name.to_ascii_lowercase()) {
                return bad(format!("registry {:?}: invalid (5-50 letters or digits) or duplicate name", r.name));
            }
            if !self.rg_exists(&r.placement) {
                return bad(format!(
                    "registry {:?}: resource group {:?} is not declared",
                    r.name, r.placement.resource_group
                ));
            }
            if let Some(sku) = &r.sku
                && !["Basic", "Standard", "Premium"].contains(&sku.as_str())
            {
                return bad(format!("registry {:?}: sku {sku:?} is not Basic, Standard or Premium", r.name));
            }
            for id in &r.identities {
                if !self.identities.iter().any(|i| i.name.eq_ignore_ascii_case(id)) {
                    return bad(format!("registry {:?}: identity {id:?} is not declared", r.name));
                }
            }
            if let Some(enc) = &r.encryption {
                if r.sku.as_deref().is_some_and(|s| s != "Premium") {
                    return bad(format!("registry {:?}: customer-managed keys need the Premium sku", r.name));
                }
                if !r.identities.iter().any(|i| i.eq_ignore_ascii_case(&enc.identity)) {
                    return bad(format!(
                        "registry {:?}: encryption identity {:?} is not one of its identities",
                        r.name, enc.identity
                    ));
                }
                let kr = KeyRef::parse(&enc.key)
                    .map_err(|m| ScenarioError::Invalid(format!("registry {:?}: {m}", r.name)))?;
                let vault = self.vaults.iter().find(|v| v.name.eq_ignore_ascii_case(&kr.vault));
                let key = vault.and_then(|v| v.keys.iter().find(|k| k.name.eq_ignore_ascii_case(&kr.key)));
                let Some(key) = key else {
                    return bad(format!("registry {:?}: key {}/{} is not declared", r.name, kr.vault, kr.key));
                };
                match &kr.version {
                    VersionRef::Index(n) if *n >= key.versions.len() => {
                        return bad(format!("registry {:?}: key {} has no version @{n}", r.name, enc.key));
                    }
                    VersionRef::Id(id)
                        if !key
                            .versions
                            .iter()
                            .any(|v| v.version.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(id))) =>
                    {
                        return bad(format!("registry {:?}: key version {id:?} is not declared", r.name));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn relative_times() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(TimeSpec::parse("now+10d").unwrap().resolve(now).to_rfc3339(), "2026-01-11T00:00:00+00:00");
        assert_eq!(TimeSpec::parse("now-1h").unwrap().resolve(now).to_rfc3339(), "2025-12-31T23:00:00+00:00");
        assert!(TimeSpec::parse("now+10x").unwrap_err().contains("unit"));
        assert!(TimeSpec::parse("tomorrow").unwrap_err().contains("RFC 3339"));
        // A multi-byte last character panicked (fuzz/artifacts/scenario, "now+67Ж").
        assert!(TimeSpec::parse("now+67Ж").unwrap_err().contains("unit"));
        assert!(TimeSpec::parse("now-Ж").is_err());
    }

    #[test]
    fn key_refs() {
        assert_eq!(KeyRef::parse("kv/k").unwrap().version, VersionRef::Versionless);
        assert_eq!(KeyRef::parse("kv/k/@1").unwrap().version, VersionRef::Index(1));
        assert_eq!(KeyRef::parse("kv/k/@latest").unwrap().version, VersionRef::Latest);
        assert!(KeyRef::parse("kv//k").is_err());
        assert!(KeyRef::parse("kv/k/@x").is_err());
    }

    #[test]
    fn unknown_reference_is_named() {
        let text = r#"{"tenant":"11111111-1111-1111-1111-111111111111",
            "subscriptions":[{"id":"22222222-2222-2222-2222-222222222222","resourceGroups":[{"name":"rg","location":"westeurope"}]}],
            "registries":[{"name":"regone","resourceGroup":"rg","identities":["nope"]}]}"#;
        let err = Scenario::from_json(text).unwrap_err().to_string();
        assert!(err.contains("identity \"nope\""), "{err}");
    }

    #[test]
    fn demo_scenario_is_valid() {
        let text = include_str!("../scenarios/demo.json");
        Scenario::from_json(text).unwrap();
    }

    proptest! {
        #[test]
        fn time_spec_never_panics(s in ".{0,40}") {
            let _ = TimeSpec::parse(&s);
        }

        #[test]
        fn time_spec_round_trips(secs in -1_000_000_000i64..1_000_000_000) {
            let t = TimeSpec::Relative(Duration::seconds(secs));
            prop_assert_eq!(TimeSpec::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn key_ref_never_panics(s in "[a-z0-9/@]{0,30}") {
            let _ = KeyRef::parse(&s);
        }

        #[test]
        fn scenario_json_never_panics(s in ".{0,200}") {
            let _ = Scenario::from_json(&s);
        }
    }
}

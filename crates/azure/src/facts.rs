//! Turns Azure's answers (ARM registry and vault documents, Resource Graph rows, Key Vault
//! key bundles and rotation policies) into the policy's facts ([`cmkguard_model`] types).
//!
//! Azure documents drift in casing (`userAssigned` vs `UserAssigned`, `KeyIdentifier`);
//! property names are looked up case-insensitively.

use chrono::{DateTime, Utc};
use cmkguard_model::{RegistryFacts, VaultFacts};
use serde::Deserialize;
use serde_json::Value;

/// `obj[name]`, ignoring ASCII case of the property name.
pub fn prop<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    let map = obj.as_object()?;
    map.get(name).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// `obj.a.b.c`, case-insensitively.
pub fn path<'a>(obj: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().try_fold(obj, |cur, n| prop(cur, n))
}

fn string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn boolean(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// A registry document (ARM GET or a Resource Graph row with `properties`) → facts.
/// `None` when it has no id or name.
pub fn registry_facts(doc: &Value) -> Option<RegistryFacts> {
    let id = string(prop(doc, "id"))?;
    let name = string(prop(doc, "name")).or_else(|| id.rsplit('/').next().map(str::to_owned))?;
    let enc = path(doc, &["properties", "encryption"]);
    let kvp = enc.and_then(|e| prop(e, "keyVaultProperties"));
    let field = |n: &str| kvp.and_then(|k| string(prop(k, n)));
    let tags = prop(doc, "tags")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.trim().to_owned(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some(RegistryFacts {
        id,
        name,
        sku: string(path(doc, &["sku", "name"])).unwrap_or_default(),
        location: string(prop(doc, "location")).unwrap_or_default(),
        encryption_enabled: enc
            .and_then(|e| string(prop(e, "status")))
            .is_some_and(|s| s.eq_ignore_ascii_case("enabled")),
        key_identifier: field("keyIdentifier"),
        versioned_key_identifier: field("versionedKeyIdentifier"),
        identity: field("identity"),
        key_rotation_enabled: kvp.and_then(|k| boolean(prop(k, "keyRotationEnabled"))).unwrap_or(false),
        last_rotation: field("lastKeyRotationTimestamp")
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|d| d.with_timezone(&Utc)),
        provisioning_state: string(path(doc, &["properties", "provisioningState"])),
        tags,
    })
}

/// A vault document (ARM GET or Resource Graph row) → the safety-net facts. A missing
/// `enablePurgeProtection` stays `None`: not confirmed.
pub fn vault_facts(doc: &Value) -> VaultFacts {
    let props = prop(doc, "properties");
    VaultFacts {
        soft_delete: props.and_then(|p| boolean(prop(p, "enableSoftDelete"))),
        purge_protection: props.and_then(|p| boolean(prop(p, "enablePurgeProtection"))),
    }
}

/// A Key Vault key bundle (`GET /keys/{name}[/{version}]`, rotate, …).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct KeyBundle {
    pub key: JsonWebKey,
    #[serde(default)]
    pub attributes: KeyAttributes,
    #[serde(default)]
    pub tags: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub managed: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JsonWebKey {
    pub kid: String,
    pub kty: String,
    #[serde(default)]
    pub key_ops: Vec<String>,
    /// RSA modulus, base64url.
    #[serde(default)]
    pub n: Option<String>,
    #[serde(default)]
    pub crv: Option<String>,
}

/// Key attributes; times are Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyAttributes {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub updated: Option<i64>,
    #[serde(default)]
    pub recovery_level: Option<String>,
    #[serde(default)]
    pub recoverable_days: Option<i64>,
}

/// One entry of `GET /keys/{name}/versions`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct KeyItem {
    pub kid: String,
    #[serde(default)]
    pub attributes: KeyAttributes,
}

/// `GET /keys/{name}/rotationpolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub lifetime_actions: Vec<LifetimeAction>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LifetimeAction {
    #[serde(default)]
    pub trigger: Value,
    pub action: ActionType,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActionType {
    #[serde(rename = "type")]
    pub kind: String,
}

impl RotationPolicy {
    /// The policy rotates the key by itself (a `Rotate` lifetime action).
    pub fn rotates(&self) -> bool {
        self.lifetime_actions.iter().any(|a| a.action.kind.eq_ignore_ascii_case("rotate"))
    }
}

pub fn unix(t: Option<i64>) -> Option<DateTime<Utc>> {
    t.and_then(|s| DateTime::from_timestamp(s, 0))
}

/// RSA modulus size in bits from the base64url `n` (padding tolerated, leading zero bytes
/// not counted).
pub fn rsa_bits(n: &str) -> Option<u32> {
    let s = n.trim().trim_end_matches('=');
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'+' || b == b'/')
    {
        return None;
    }
    let bytes = (s.len() / 4) * 3
        + match s.len() % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        };
    // A JWK modulus has no leading zero byte; if the first 8 bits are zero, do not count them.
    let first_byte_zero = s.len() >= 2 && s.as_bytes()[0] == b'A' && matches!(s.as_bytes()[1], b'A'..=b'D');
    let bytes = if first_byte_zero { bytes - 1 } else { bytes };
    u32::try_from(bytes * 8).ok().filter(|b| *b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixture(rel: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/azure-fixtures").join(rel);
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
    }

    #[test]
    fn registry_fixture() {
        let f = registry_facts(&fixture("arm/acr.cmk.3-rotate-key.registry.GET.200.response.json")).unwrap();
        assert_eq!(f.name, "testreg000006");
        assert_eq!(f.sku, "Premium");
        assert!(f.encryption_enabled);
        assert_eq!(f.identity.as_deref(), Some("33b5bfe1-ff99-42ec-a264-a19d6bf8e4f7"));
        assert!(f.key_identifier.as_deref().unwrap().ends_with("/482c3c34119042a9b7c998c0f70ea0a1"));
        assert!(!f.key_rotation_enabled);
        assert_eq!(f.provisioning_state.as_deref(), Some("Succeeded"));
    }

    #[test]
    fn vault_fixtures() {
        let live = vault_facts(&fixture("keyvault/kv.mgmt.Vaults_Get.purge-protection.GET.200.response.json"));
        assert_eq!(live, VaultFacts { soft_delete: Some(true), purge_protection: Some(true) });
        let example = fixture("keyvault/kv.mgmt.Vaults_Get.2024-11-01.json");
        let body = &example["responses"]["200"]["body"];
        assert_eq!(vault_facts(body).purge_protection, None);
    }

    #[test]
    fn key_fixtures() {
        let get = fixture("keyvault/kv.data.GetKey.7.5.json");
        let b: KeyBundle = serde_json::from_value(get["responses"]["200"]["body"].clone()).unwrap();
        assert!(b.key.kty.starts_with("RSA"));
        assert_eq!(rsa_bits(b.key.n.as_deref().unwrap()), Some(2048));
        let pol = fixture("keyvault/kv.data.GetKeyRotationPolicy.7.5.json");
        let p: RotationPolicy = serde_json::from_value(pol["responses"]["200"]["body"].clone()).unwrap();
        assert!(p.rotates());
    }

    #[test]
    fn rsa_sizes() {
        // 256 bytes with the top bit set → 2048 bits; base64url length 342.
        let n = format!("w{}", "A".repeat(341));
        assert_eq!(rsa_bits(&n), Some(2048));
        assert_eq!(rsa_bits(""), None);
        assert_eq!(rsa_bits("!!"), None);
    }

    proptest! {
        #[test]
        fn converters_never_panic(s in ".{0,300}") {
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = registry_facts(&v);
                let _ = vault_facts(&v);
            }
            let _ = rsa_bits(&s);
        }
    }
}

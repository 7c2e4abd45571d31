//! Generated estates: large, deterministic scenarios (e.g. 10,000 registries for the sweep
//! benchmark) in the same format as hand-written scenario files.

use std::collections::BTreeMap;

use crate::scenario::{
    ClockSpec, Encryption, Identity, Key, KeyVersion, Kty, Placement, Registry, ResourceGroup, Scenario, Subscription,
    TimeSpec, Vault,
};

/// A deterministic GUID from a label (stable across runs).
fn guid(label: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(label.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// Shape of a generated estate.
#[derive(Clone, Debug)]
pub struct EstateSpec {
    pub registries: usize,
    pub subscriptions: usize,
    pub resource_groups_per_subscription: usize,
    /// Keys in the shared vault; registries spread over them.
    pub keys: usize,
}

impl Default for EstateSpec {
    fn default() -> Self {
        EstateSpec { registries: 10_000, subscriptions: 2, resource_groups_per_subscription: 5, keys: 10 }
    }
}

/// Build the estate: every 10th registry has no CMK, a third of the rest use a versioned
/// key id, the others a versionless one. Registry names are `reg00000`, `reg00001`, …
pub fn generate(spec: &EstateSpec) -> Scenario {
    let subs: Vec<String> = (0..spec.subscriptions.max(1)).map(|i| guid(&format!("sub{i}"))).collect();
    let rgs = spec.resource_groups_per_subscription.max(1);
    let subscriptions = subs
        .iter()
        .map(|id| Subscription {
            id: id.clone(),
            resource_groups: (0..rgs)
                .map(|g| ResourceGroup { name: format!("rg{g:02}"), location: "westeurope".into() })
                .collect(),
        })
        .collect();
    let first = Placement { subscription: Some(subs[0].clone()), resource_group: "rg00".into() };
    let identities = subs
        .iter()
        .enumerate()
        .map(|(i, sub)| Identity {
            name: format!("cmk-id-{i}"),
            placement: Placement { subscription: Some(sub.clone()), resource_group: "rg00".into() },
            client_id: guid(&format!("client{i}")),
            principal_id: guid(&format!("principal{i}")),
        })
        .collect();
    let keys = (0..spec.keys.max(1))
        .map(|k| Key {
            name: format!("cmk{k:02}"),
            kty: Kty::Rsa,
            size: None,
            crv: None,
            tags: BTreeMap::new(),
            versions: vec![
                KeyVersion {
                    created: Some(TimeSpec::parse("now-400d").unwrap_or(TimeSpec::Relative(chrono::Duration::zero()))),
                    ..KeyVersion::default_enabled()
                },
                KeyVersion {
                    created: Some(TimeSpec::parse("now-30d").unwrap_or(TimeSpec::Relative(chrono::Duration::zero()))),
                    exp: Some(
                        TimeSpec::parse(&format!("now+{}d", 20 + k * 30))
                            .unwrap_or(TimeSpec::Relative(chrono::Duration::zero())),
                    ),
                    ..KeyVersion::default_enabled()
                },
            ],
            rotation_policy: None,
        })
        .collect();
    let vault = Vault {
        name: "estate-kv".into(),
        placement: first,
        location: None,
        soft_delete: true,
        soft_delete_retention_days: 90,
        purge_protection: true,
        keys,
    };
    let registries = (0..spec.registries)
        .map(|i| {
            let sub_i = i % subs.len();
            let placement = Placement {
                subscription: Some(subs[sub_i].clone()),
                resource_group: format!("rg{:02}", (i / subs.len()) % rgs),
            };
            let identity = format!("cmk-id-{sub_i}");
            let key = format!("estate-kv/cmk{:02}", i % spec.keys.max(1));
            let encryption = match i % 10 {
                0 => None,
                1..=3 => Some(Encryption { key: format!("{key}/@0"), identity: identity.clone() }),
                _ => Some(Encryption { key, identity: identity.clone() }),
            };
            Registry {
                name: format!("reg{i:05}"),
                placement,
                location: None,
                sku: Some("Premium".into()),
                identities: vec![identity],
                encryption,
                tags: BTreeMap::from([("team".to_owned(), format!("team{}", i % 7))]),
                created: None,
            }
        })
        .collect();
    Scenario {
        tenant: guid("tenant"),
        clock: Some(ClockSpec {
            now: chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_default(),
            frozen: false,
        }),
        subscriptions,
        identities,
        system_identity: None,
        vaults: vec![vault],
        registries,
    }
}

impl KeyVersion {
    fn default_enabled() -> Self {
        KeyVersion { enabled: true, ..KeyVersion::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_estate_is_valid() {
        let s = generate(&EstateSpec { registries: 500, ..EstateSpec::default() });
        s.validate().unwrap();
        assert_eq!(s.registries.len(), 500);
        assert!(s.registries.iter().filter(|r| r.encryption.is_none()).count() == 50);
    }
}

//! Facts: everything the host found out about an event, handed to the policy.
//!
//! The JSON form of [`PolicyInput`] is the one documented input format: `cmkguard eval
//! --facts`, policy test cases and the demo scenario all use it. Times are RFC 3339.
//!
//! The key's and the registries' facts are [`Shared`]: a cache of facts (the handler's
//! benchmark, a sweep's key cache) hands the same facts to many events by reference
//! count instead of copying ≈ 140 strings per event (BENCHMARKS.md "Throughput and
//! memory"). They read and serialize exactly like the plain values.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value shared by reference count, read through `Deref` and serialized as the value
/// itself (transparent in JSON). Mutation (`DerefMut`) copies it first if it is shared
/// (`Arc::make_mut`), so a holder never changes another's facts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(value))
    }
}

impl<T> Clone for Shared<T> {
    /// A reference-count increment, not a copy of the value.
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> std::ops::DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<'a, T> IntoIterator for &'a Shared<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        (&*self.0).into_iter()
    }
}

impl<'a, T: Clone> IntoIterator for &'a mut Shared<T>
where
    &'a mut T: IntoIterator,
{
    type Item = <&'a mut T as IntoIterator>::Item;
    type IntoIter = <&'a mut T as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        Arc::make_mut(&mut self.0).into_iter()
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Self::new)
    }
}

/// The whole input of one policy evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub event: EventInfo,
    /// The evaluation's "now" (pinned in tests with `--now`).
    pub now: DateTime<Utc>,
    /// The key the event is about, or the key the registry uses; absent when unknown
    /// (e.g. a registry without CMK).
    #[serde(default)]
    pub key: Option<Shared<KeyFacts>>,
    /// The registries in scope: those using the key, or the one registry written.
    #[serde(default)]
    pub registries: Shared<Vec<RegistryFacts>>,
    /// The policy's own settings, as a JSON document the policy validates itself.
    #[serde(default = "empty_settings")]
    pub settings: String,
}

fn empty_settings() -> String {
    "{}".to_owned()
}

/// The event as the policy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInfo {
    /// One of `key-near-expiry`, `key-expired`, `key-new-version-created`,
    /// `registry-written`, `sweep` (see [`crate::EventKind::name`]).
    pub kind: String,
    pub id: String,
    pub time: DateTime<Utc>,
    #[serde(default)]
    pub subject: String,
}

impl From<&crate::Event> for EventInfo {
    /// The event as the policy sees it: kind name, id, time and subject.
    fn from(e: &crate::Event) -> Self {
        Self { kind: e.kind.name().to_owned(), id: e.id.clone(), time: e.time, subject: e.subject.clone() }
    }
}

/// A Key Vault key (its current version) and the vault's safety net.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFacts {
    /// Versioned key id of the current version (`key.kid`).
    pub key_id: String,
    pub vault_uri: String,
    pub name: String,
    pub version: String,
    /// `RSA`, `RSA-HSM`, `EC`, `EC-HSM`, `oct-HSM`, …
    pub key_type: String,
    /// Modulus size in bits for RSA keys.
    #[serde(default)]
    pub key_size: Option<u32>,
    pub enabled: bool,
    #[serde(default)]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default)]
    pub created: Option<DateTime<Utc>>,
    /// The key has a rotation policy with a `Rotate` lifetime action.
    #[serde(default)]
    pub has_rotation_policy: bool,
    pub vault: VaultFacts,
}

/// The vault's protection against losing the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultFacts {
    /// `None` when the management plane did not say (treated as "not confirmed").
    #[serde(default)]
    pub soft_delete: Option<bool>,
    #[serde(default)]
    pub purge_protection: Option<bool>,
}

/// One container registry and its encryption settings, as ARM reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFacts {
    /// ARM resource id.
    pub id: String,
    pub name: String,
    /// `Basic`, `Standard`, `Premium`.
    pub sku: String,
    pub location: String,
    /// `properties.encryption.status == enabled`.
    pub encryption_enabled: bool,
    /// `keyVaultProperties.keyIdentifier`: what was configured (versioned or versionless).
    #[serde(default)]
    pub key_identifier: Option<String>,
    /// `keyVaultProperties.versionedKeyIdentifier`: the version in use.
    #[serde(default)]
    pub versioned_key_identifier: Option<String>,
    /// `keyVaultProperties.identity`: the user-assigned identity's client id.
    #[serde(default)]
    pub identity: Option<String>,
    #[serde(default)]
    pub key_rotation_enabled: bool,
    #[serde(default)]
    pub last_rotation: Option<DateTime<Utc>>,
    /// `properties.provisioningState` (e.g. `Succeeded`, `Updating`).
    #[serde(default)]
    pub provisioning_state: Option<String>,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
}

impl PolicyInput {
    /// Parses the documented JSON format with a message that names the bad field.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"{"event":{"kind":"key-near-expiry","id":"e1","time":"2026-01-01T00:00:00Z","subject":"k"},
        "now":"2026-01-02T00:00:00Z",
        "key":{"key_id":"https://v.vault.azure.net/keys/k/1","vault_uri":"https://v.vault.azure.net/","name":"k",
               "version":"1","key_type":"RSA","enabled":true,"vault":{}},
        "registries":[{"id":"/subscriptions/s/resourceGroups/g/providers/Microsoft.ContainerRegistry/registries/r",
                       "name":"r","sku":"Premium","location":"westeurope","encryption_enabled":true}]}"#;

    #[test]
    fn shared_facts_read_and_serialize_like_plain_ones() {
        let input = PolicyInput::from_json(INPUT).expect("parses");
        assert_eq!(input.registries.len(), 1);
        assert_eq!(input.key.as_ref().map(|k| k.name.as_str()), Some("k"));
        let json = serde_json::to_value(&input).expect("serializes");
        // Transparent: the same shape as the documented format, no wrapper.
        assert_eq!(json["registries"][0]["name"], "r");
        assert_eq!(json["key"]["version"], "1");
        assert_eq!(PolicyInput::from_json(&json.to_string()).expect("round trip"), input);
    }

    #[test]
    fn a_clone_shares_the_facts_and_a_change_copies_them_first() {
        let a = PolicyInput::from_json(INPUT).expect("parses");
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.registries.0, &b.registries.0), "a clone shares, it does not copy");
        b.registries[0].name = "changed".into();
        let first = b.registries[0].clone();
        b.registries.push(first);
        assert_eq!(a.registries.len(), 1);
        assert_eq!(a.registries[0].name, "r", "the other holder's facts are untouched");
        assert_eq!(b.registries.len(), 2);
    }
}

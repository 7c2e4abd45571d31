//! Facts: everything the host found out about an event, handed to the policy.
//!
//! The JSON form of [`PolicyInput`] is the one documented input format: `cmkguard eval
//! --facts`, policy test cases and the demo scenario all use it. Times are RFC 3339.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    pub key: Option<KeyFacts>,
    /// The registries in scope: those using the key, or the one registry written.
    #[serde(default)]
    pub registries: Vec<RegistryFacts>,
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

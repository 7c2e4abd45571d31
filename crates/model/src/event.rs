//! The typed domain event: what happened, independent of the wire format it came in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::resource::{KeyId, ResourceId};

/// One thing that happened in Azure that cmkguard cares about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The event id Event Grid assigned (the idempotency key), or a synthetic id for a sweep.
    pub id: String,
    /// When the event happened (`eventTime` / `time`).
    pub time: DateTime<Utc>,
    /// `subject` as sent.
    pub subject: String,
    /// The original type string, e.g. `Microsoft.KeyVault.KeyNearExpiry`.
    pub event_type: String,
    pub kind: EventKind,
}

/// The event kinds cmkguard acts on. Anything else decodes to
/// `crate::event::Decoded::Ignored` in the handler and never gets here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EventKind {
    KeyNearExpiry(KeyEvent),
    KeyExpired(KeyEvent),
    KeyNewVersionCreated(KeyEvent),
    RegistryWritten(RegistryWrite),
    /// The periodic scan of the estate: one per registry (and its key) per run.
    Sweep {
        registry: ResourceId,
    },
}

impl EventKind {
    /// The kind's name as the policy contract spells it.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::KeyNearExpiry(_) => "key-near-expiry",
            EventKind::KeyExpired(_) => "key-expired",
            EventKind::KeyNewVersionCreated(_) => "key-new-version-created",
            EventKind::RegistryWritten(_) => "registry-written",
            EventKind::Sweep { .. } => "sweep",
        }
    }
}

/// The `data` of a Key Vault key event (same shape for every Key Vault event type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyEvent {
    /// The vault's ARM resource id (`topic` / `source`), when it parses.
    pub vault_resource_id: Option<ResourceId>,
    /// `VaultName`.
    pub vault_name: String,
    /// `ObjectName`: the key name.
    pub key_name: String,
    /// `Version`.
    pub version: String,
    /// `Id`: the versioned key id.
    pub key_id: KeyId,
    /// `NBF`, when sent.
    pub not_before: Option<DateTime<Utc>>,
    /// `EXP`, when sent.
    pub expires: Option<DateTime<Utc>>,
}

/// A successful ARM write of a container registry (`ResourceWriteSuccess` with
/// operation `Microsoft.ContainerRegistry/registries/write`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryWrite {
    pub registry: ResourceId,
    /// `data.correlationId`, to tell cmkguard's own writes apart in logs.
    pub correlation_id: Option<String>,
    /// Who made the change (`data.claims.appid` or a name), when present.
    pub caller: Option<String>,
}

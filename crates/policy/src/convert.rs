//! Conversions between the domain model ([`cmkguard_model`]) and the contract's lean
//! encoding (times as Unix seconds, the event kind as an enum).

use chrono::{DateTime, Utc};
use cmkguard_model as model;

use crate::bindings::cmkguard::policy::types as wit;
use crate::error::EvalError;

fn secs(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

/// The contract's event kind for a model kind name.
pub fn event_kind(name: &str) -> Result<wit::EventKind, EvalError> {
    Ok(match name {
        "key-near-expiry" => wit::EventKind::KeyNearExpiry,
        "key-expired" => wit::EventKind::KeyExpired,
        "key-new-version-created" => wit::EventKind::KeyNewVersionCreated,
        "registry-written" => wit::EventKind::RegistryWritten,
        "sweep" => wit::EventKind::Sweep,
        other => {
            return Err(EvalError::Input(format!(
                "event kind {other:?} is not one of key-near-expiry, key-expired, key-new-version-created, registry-written, sweep"
            )));
        }
    })
}

/// Builds the contract input; `settings` overrides `input.settings` when given.
pub fn input(input: &model::PolicyInput, settings: Option<&str>) -> Result<wit::PolicyInput, EvalError> {
    Ok(wit::PolicyInput {
        event: wit::EventInfo {
            kind: event_kind(&input.event.kind)?,
            id: input.event.id.clone(),
            time: secs(input.event.time),
            subject: input.event.subject.clone(),
        },
        now: secs(input.now),
        key: input.key.as_ref().map(key),
        registries: input.registries.iter().map(registry).collect(),
        settings: settings.unwrap_or(&input.settings).to_owned(),
    })
}

fn key(k: &model::KeyFacts) -> wit::KeyFacts {
    wit::KeyFacts {
        key_id: k.key_id.clone(),
        vault_uri: k.vault_uri.clone(),
        name: k.name.clone(),
        version: k.version.clone(),
        key_type: k.key_type.clone(),
        key_size: k.key_size,
        enabled: k.enabled,
        expires: k.expires.map(secs),
        not_before: k.not_before.map(secs),
        created: k.created.map(secs),
        has_rotation_policy: k.has_rotation_policy,
        vault: wit::VaultFacts { soft_delete: k.vault.soft_delete, purge_protection: k.vault.purge_protection },
    }
}

fn registry(r: &model::RegistryFacts) -> wit::RegistryFacts {
    wit::RegistryFacts {
        id: r.id.clone(),
        name: r.name.clone(),
        sku: r.sku.clone(),
        location: r.location.clone(),
        encryption_enabled: r.encryption_enabled,
        key_identifier: r.key_identifier.clone(),
        versioned_key_identifier: r.versioned_key_identifier.clone(),
        identity: r.identity.clone(),
        key_rotation_enabled: r.key_rotation_enabled,
        last_rotation: r.last_rotation.map(secs),
        provisioning_state: r.provisioning_state.clone(),
        tags: r.tags.clone(),
    }
}

pub fn severity(s: wit::Severity) -> model::Severity {
    match s {
        wit::Severity::Info => model::Severity::Info,
        wit::Severity::Low => model::Severity::Low,
        wit::Severity::Medium => model::Severity::Medium,
        wit::Severity::High => model::Severity::High,
        wit::Severity::Critical => model::Severity::Critical,
    }
}

/// The model decision for a contract decision (validated separately).
pub fn decision(d: wit::Decision) -> model::Decision {
    model::Decision {
        findings: d
            .findings
            .into_iter()
            .map(|f| model::Finding {
                rule_id: f.rule_id,
                severity: severity(f.severity),
                resource: f.resource,
                message: f.message,
            })
            .collect(),
        actions: d
            .actions
            .into_iter()
            .map(|a| match a {
                wit::Action::Audit => model::Action::Audit,
                wit::Action::RotateRegistryKey(r) => model::Action::RotateRegistryKey {
                    registry: r.registry,
                    target: match r.target {
                        wit::RotateTarget::Versionless => model::RotateTarget::Versionless,
                        wit::RotateTarget::LatestVersion => model::RotateTarget::LatestVersion,
                        wit::RotateTarget::KeyId(k) => model::RotateTarget::KeyId(k),
                    },
                },
                wit::Action::RotateVaultKey(k) => model::Action::RotateVaultKey { key: k.key },
                wit::Action::Notify(n) => model::Action::Notify {
                    channel: n.channel,
                    severity: severity(n.severity),
                    title: n.title,
                    text: n.text,
                },
            })
            .collect(),
    }
}

//! Conversions between the domain model ([`cmkguard_model`]) and the contracts' lean
//! encodings (times as Unix seconds, the event kind as an enum): contract 1 borrows
//! every string from the model; contract 2 ([`v2`]) copies them into one string table,
//! and its decisions name input resources by position, which [`v2::decision`] maps
//! back to their ids.

use chrono::{DateTime, Utc};
use cmkguard_model as model;

use crate::bindings::cmkguard::policy::types as wit;
use crate::error::EvalError;

fn secs(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

/// The registries' tags, flattened, so that the contract input can borrow them.
pub struct Tags<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Tags<'a> {
    pub fn of(input: &'a model::PolicyInput) -> Self {
        Self(input.registries.iter().flat_map(|r| r.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))).collect())
    }
}

/// Registries' facts borrowed from the model (`tags` from [`Tags::of`] of the same input).
pub fn registries<'a>(input: &'a model::PolicyInput, tags: &'a Tags<'a>) -> Vec<wit::RegistryFacts<'a>> {
    let mut rest = tags.0.as_slice();
    input
        .registries
        .iter()
        .map(|r| {
            let (mine, tail) = rest.split_at(r.tags.len());
            rest = tail;
            registry(r, mine)
        })
        .collect()
}

/// Builds the contract input, borrowing every string from `input`; `settings` overrides
/// `input.settings` when given.
pub fn input<'a>(
    input: &'a model::PolicyInput,
    registries: &'a [wit::RegistryFacts<'a>],
    settings: Option<&'a str>,
) -> Result<wit::PolicyInput<'a>, EvalError> {
    Ok(wit::PolicyInput {
        event: wit::EventInfo {
            kind: event_kind(&input.event.kind)?,
            id: &input.event.id,
            time: secs(input.event.time),
            subject: &input.event.subject,
        },
        now: secs(input.now),
        key: input.key.as_deref().map(key),
        registries,
        settings: settings.unwrap_or(&input.settings),
    })
}

fn key(k: &model::KeyFacts) -> wit::KeyFacts<'_> {
    wit::KeyFacts {
        key_id: &k.key_id,
        vault_uri: &k.vault_uri,
        name: &k.name,
        version: &k.version,
        key_type: &k.key_type,
        key_size: k.key_size,
        enabled: k.enabled,
        expires: k.expires.map(secs),
        not_before: k.not_before.map(secs),
        created: k.created.map(secs),
        has_rotation_policy: k.has_rotation_policy,
        vault: wit::VaultFacts { soft_delete: k.vault.soft_delete, purge_protection: k.vault.purge_protection },
    }
}

fn registry<'a>(r: &'a model::RegistryFacts, tags: &'a [(&'a str, &'a str)]) -> wit::RegistryFacts<'a> {
    wit::RegistryFacts {
        id: &r.id,
        name: &r.name,
        sku: &r.sku,
        location: &r.location,
        encryption_enabled: r.encryption_enabled,
        key_identifier: r.key_identifier.as_deref(),
        versioned_key_identifier: r.versioned_key_identifier.as_deref(),
        identity: r.identity.as_deref(),
        key_rotation_enabled: r.key_rotation_enabled,
        last_rotation: r.last_rotation.map(secs),
        provisioning_state: r.provisioning_state.as_deref(),
        tags,
    }
}

/// `event_kind` and `severity`: the contract's event kind for the model's, and the model's
/// severity for a contract's. Both are the same in contracts 1 and 2; `wit` names the
/// contract's types module where this is used.
macro_rules! conversions {
    () => {
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

        pub fn severity(s: wit::Severity) -> model::Severity {
            match s {
                wit::Severity::Info => model::Severity::Info,
                wit::Severity::Low => model::Severity::Low,
                wit::Severity::Medium => model::Severity::Medium,
                wit::Severity::High => model::Severity::High,
                wit::Severity::Critical => model::Severity::Critical,
            }
        }

        fn rotate_target(t: wit::RotateTarget) -> model::RotateTarget {
            match t {
                wit::RotateTarget::Versionless => model::RotateTarget::Versionless,
                wit::RotateTarget::LatestVersion => model::RotateTarget::LatestVersion,
                wit::RotateTarget::KeyId(k) => model::RotateTarget::KeyId(k),
            }
        }
    };
}

conversions!();

/// The model decision for a contract-1 decision (validated separately).
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
                wit::Action::RotateRegistryKey(r) => {
                    model::Action::RotateRegistryKey { registry: r.registry, target: rotate_target(r.target) }
                }
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

/// Contract 2.0.0: the input's strings in one string table, records with spans.
pub mod v2 {
    use cmkguard_model as model;

    use super::secs;
    use crate::bindings_v2::cmkguard::policy::types as wit;
    use crate::error::EvalError;

    conversions!();

    /// The model decision for a contract-2 decision: the input resources it names by
    /// position are replaced by their ids from `input` (the input the policy was given).
    /// A position outside the input is an invalid decision, as an unknown id is, and so is
    /// a registry or key whose id does not parse (as with contract 1, where such an id
    /// matches nothing). The rest is checked by `validate_resolved`, which relies on this.
    pub fn decision(d: wit::Decision, input: &model::PolicyInput) -> Result<model::Decision, EvalError> {
        // Whether each registry's id parses, checked once per registry named.
        let mut valid: Vec<Option<bool>> = Vec::new();
        let mut registry = |i: u32, what: &dyn Fn() -> String| {
            let invalid = |why: String| EvalError::InvalidDecision(format!("{} names registry {i}, {why}", what()));
            let r = input
                .registries
                .get(i as usize)
                .ok_or_else(|| invalid(format!("but the input has {} registries", input.registries.len())))?;
            if valid.is_empty() {
                valid.resize(input.registries.len(), None);
            }
            if !*valid[i as usize].get_or_insert_with(|| model::ResourceId::is_valid(&r.id)) {
                return Err(invalid(format!("whose id {:?} is not a resource id", r.id)));
            }
            Ok(r.id.clone())
        };
        let key = |what: &dyn Fn() -> String| {
            input.key.as_ref().ok_or_else(|| {
                EvalError::InvalidDecision(format!("{} names the key, but the input has no key", what()))
            })
        };
        let key_id_parses = std::cell::OnceCell::new();
        let key_id = |what: &dyn Fn() -> String| {
            let k = key(what)?;
            if !*key_id_parses.get_or_init(|| model::KeyId::parse(&k.key_id).is_ok()) {
                return Err(EvalError::InvalidDecision(format!(
                    "{} names the key, whose id {:?} is not a key id",
                    what(),
                    k.key_id
                )));
            }
            Ok(k.key_id.clone())
        };
        let mut findings = Vec::with_capacity(d.findings.len());
        for (i, f) in d.findings.into_iter().enumerate() {
            let what = || format!("finding {i} ({})", f.rule_id);
            let resource = match f.resource {
                wit::ResourceRef::Registry(r) => registry(r, &what)?,
                wit::ResourceRef::Key => key_id(&what)?,
                wit::ResourceRef::Vault => key(&what)?.vault_uri.clone(),
            };
            findings.push(model::Finding {
                rule_id: f.rule_id,
                severity: severity(f.severity),
                resource,
                message: f.message,
            });
        }
        let mut actions = Vec::with_capacity(d.actions.len());
        for (i, a) in d.actions.into_iter().enumerate() {
            actions.push(match a {
                wit::Action::Audit => model::Action::Audit,
                wit::Action::RotateRegistryKey(r) => model::Action::RotateRegistryKey {
                    registry: registry(r.registry, &|| format!("action {i} (rotate-registry-key)"))?,
                    target: rotate_target(r.target),
                },
                wit::Action::RotateVaultKey => {
                    model::Action::RotateVaultKey { key: key_id(&|| format!("action {i} (rotate-vault-key)"))? }
                }
                wit::Action::Notify(n) => model::Action::Notify {
                    channel: n.channel,
                    severity: severity(n.severity),
                    title: n.title,
                    text: n.text,
                },
            });
        }
        Ok(model::Decision { findings, actions })
    }

    /// The contract input, owned: the string table, the records pointing into it and the
    /// registries' and tags' rows (`wit/v2/policy.wit`, `policy-input.registries`).
    pub struct Input {
        strings: String,
        event: wit::EventInfo,
        now: i64,
        key: Option<wit::KeyFacts>,
        registries: Vec<u32>,
        tags: Vec<u32>,
        settings: wit::Span,
    }

    /// Words per registry row and per tag row, and the registry row's flag bits
    /// (`wit/v2/policy.wit`, `policy-input.registries`; the SDK decodes the same layout).
    pub const REGISTRY_WORDS: usize = 21;
    pub const TAG_WORDS: usize = 4;
    const ENCRYPTION_ENABLED: u32 = 1 << 0;
    const KEY_ROTATION_ENABLED: u32 = 1 << 1;
    const HAS_KEY_IDENTIFIER: u32 = 1 << 2;
    const HAS_VERSIONED_KEY_IDENTIFIER: u32 = 1 << 3;
    const HAS_IDENTITY: u32 = 1 << 4;
    const HAS_PROVISIONING_STATE: u32 = 1 << 5;
    const HAS_LAST_ROTATION: u32 = 1 << 6;

    /// Appends strings and hands out their spans.
    struct Table(String);

    impl Table {
        fn span(&mut self, s: &str) -> wit::Span {
            // Offsets past u32 are caught once the table is complete (`Input::new`).
            let offset = self.0.len() as u32;
            self.0.push_str(s);
            wit::Span { offset, len: s.len() as u32 }
        }

        /// Appends `s`'s span to a row.
        fn push(&mut self, row: &mut Vec<u32>, s: &str) {
            let span = self.span(s);
            row.extend([span.offset, span.len]);
        }

        /// Appends an optional string's span (0, 0 when absent) and returns `bit` when present.
        fn push_opt(&mut self, row: &mut Vec<u32>, s: Option<&str>, bit: u32) -> u32 {
            match s {
                Some(s) => {
                    self.push(row, s);
                    bit
                }
                None => {
                    row.extend([0, 0]);
                    0
                }
            }
        }
    }

    impl Input {
        /// Encodes `input`; `settings` overrides `input.settings` when given.
        pub fn new(input: &model::PolicyInput, settings: Option<&str>) -> Result<Self, EvalError> {
            let kind = event_kind(&input.event.kind)?;
            let mut t = Table(String::with_capacity(1024 + 512 * input.registries.len()));
            let event = wit::EventInfo {
                kind,
                id: t.span(&input.event.id),
                time: secs(input.event.time),
                subject: t.span(&input.event.subject),
            };
            let key = input.key.as_ref().map(|k| wit::KeyFacts {
                key_id: t.span(&k.key_id),
                vault_uri: t.span(&k.vault_uri),
                name: t.span(&k.name),
                version: t.span(&k.version),
                key_type: t.span(&k.key_type),
                key_size: k.key_size,
                enabled: k.enabled,
                expires: k.expires.map(secs),
                not_before: k.not_before.map(secs),
                created: k.created.map(secs),
                has_rotation_policy: k.has_rotation_policy,
                vault: wit::VaultFacts { soft_delete: k.vault.soft_delete, purge_protection: k.vault.purge_protection },
            });
            let tag_count: usize = input.registries.iter().map(|r| r.tags.len()).sum();
            let mut tags = Vec::with_capacity(TAG_WORDS * tag_count);
            let mut rows = Vec::with_capacity(REGISTRY_WORDS * input.registries.len());
            for r in &input.registries {
                let first = (tags.len() / TAG_WORDS) as u32;
                for (k, v) in &r.tags {
                    t.push(&mut tags, k);
                    t.push(&mut tags, v);
                }
                t.push(&mut rows, &r.id);
                t.push(&mut rows, &r.name);
                t.push(&mut rows, &r.sku);
                t.push(&mut rows, &r.location);
                let mut flags = 0;
                if r.encryption_enabled {
                    flags |= ENCRYPTION_ENABLED;
                }
                if r.key_rotation_enabled {
                    flags |= KEY_ROTATION_ENABLED;
                }
                flags |= t.push_opt(&mut rows, r.key_identifier.as_deref(), HAS_KEY_IDENTIFIER);
                flags |= t.push_opt(&mut rows, r.versioned_key_identifier.as_deref(), HAS_VERSIONED_KEY_IDENTIFIER);
                flags |= t.push_opt(&mut rows, r.identity.as_deref(), HAS_IDENTITY);
                flags |= t.push_opt(&mut rows, r.provisioning_state.as_deref(), HAS_PROVISIONING_STATE);
                rows.extend([first, r.tags.len() as u32]);
                let last_rotation = match r.last_rotation {
                    Some(at) => {
                        flags |= HAS_LAST_ROTATION;
                        secs(at)
                    }
                    None => 0,
                };
                // Two's complement, low word first.
                rows.extend([last_rotation as u32, (last_rotation >> 32) as u32, flags]);
            }
            debug_assert_eq!(rows.len(), REGISTRY_WORDS * input.registries.len());
            let settings = t.span(settings.unwrap_or(&input.settings));
            if u32::try_from(t.0.len()).is_err() || u32::try_from(tag_count).is_err() {
                return Err(EvalError::Input(format!(
                    "the input's strings take {} bytes; contract 2 addresses at most 4 GiB",
                    t.0.len()
                )));
            }
            Ok(Self { strings: t.0, event, now: secs(input.now), key, registries: rows, tags, settings })
        }

        /// The contract value, borrowing from `self`.
        pub fn wit(&self) -> wit::PolicyInput<'_> {
            wit::PolicyInput {
                strings: &self.strings,
                event: self.event,
                now: self.now,
                key: self.key,
                registries: &self.registries,
                tags: &self.tags,
                settings: self.settings,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::bindings_v2::cmkguard::policy::types as wit;
    use crate::error::EvalError;
    use cmkguard_model as model;

    fn finding(resource: wit::ResourceRef) -> wit::Finding {
        wit::Finding { rule_id: "X1".into(), severity: wit::Severity::Low, resource, message: "m".into() }
    }

    #[test]
    fn v2_decisions_name_input_resources_by_position() {
        let input = crate::sample::sample_input(3);
        let key = input.key.as_ref().unwrap();
        let d = wit::Decision {
            findings: vec![
                finding(wit::ResourceRef::Registry(2)),
                finding(wit::ResourceRef::Key),
                finding(wit::ResourceRef::Vault),
            ],
            actions: vec![
                wit::Action::RotateRegistryKey(wit::RotateRegistryKey {
                    registry: 1,
                    target: wit::RotateTarget::Versionless,
                }),
                wit::Action::RotateVaultKey,
            ],
        };
        let m = super::v2::decision(d, &input).unwrap();
        let resources: Vec<&str> = m.findings.iter().map(|f| f.resource.as_str()).collect();
        assert_eq!(resources, [input.registries[2].id.as_str(), &key.key_id, &key.vault_uri]);
        assert_eq!(
            m.actions,
            [
                model::Action::RotateRegistryKey {
                    registry: input.registries[1].id.clone(),
                    target: model::RotateTarget::Versionless
                },
                model::Action::RotateVaultKey { key: key.key_id.clone() },
            ]
        );
    }

    #[test]
    fn v2_registry_and_tag_rows_follow_the_documented_layout() {
        use chrono::TimeZone;
        let mut input = crate::sample::sample_input(2);
        let r = &mut input.registries[1];
        r.last_rotation = Some(chrono::Utc.timestamp_opt(-2, 0).unwrap());
        r.identity = None;
        r.provisioning_state = Some("Succeeded".into());
        let owned = super::v2::Input::new(&input, None).unwrap();
        let wit = owned.wit();
        let text = |offset: u32, len: u32| &wit.strings[offset as usize..][..len as usize];
        assert_eq!(wit.registries.len(), 2 * super::v2::REGISTRY_WORDS);
        // wit/v2/policy.wit, `policy-input.registries` and `policy-input.tags`.
        let row = &wit.registries[super::v2::REGISTRY_WORDS..];
        let r = &input.registries[1];
        assert_eq!(text(row[0], row[1]), r.id);
        assert_eq!(text(row[2], row[3]), r.name);
        assert_eq!(text(row[4], row[5]), r.sku);
        assert_eq!(text(row[6], row[7]), r.location);
        assert_eq!(Some(text(row[8], row[9])), r.key_identifier.as_deref());
        assert_eq!(Some(text(row[10], row[11])), r.versioned_key_identifier.as_deref());
        assert_eq!((row[12], row[13]), (0, 0));
        assert_eq!(text(row[14], row[15]), "Succeeded");
        let (first, count) = (row[16] as usize, row[17] as usize);
        assert_eq!((first, count), (r.tags.len(), r.tags.len()));
        assert_eq!((row[18], row[19]), (u32::MAX - 1, u32::MAX));
        let enc = u32::from(r.encryption_enabled);
        let rot = u32::from(r.key_rotation_enabled) << 1;
        assert_eq!(row[20], enc | rot | 1 << 2 | 1 << 3 | 1 << 5 | 1 << 6);
        let tags: Vec<(&str, &str)> = wit.tags[super::v2::TAG_WORDS * first..][..super::v2::TAG_WORDS * count]
            .chunks_exact(super::v2::TAG_WORDS)
            .map(|t| (text(t[0], t[1]), text(t[2], t[3])))
            .collect();
        let want: Vec<(&str, &str)> = r.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(tags, want);
    }

    #[test]
    fn v2_positions_outside_the_input_are_invalid_decisions() {
        let mut input = crate::sample::sample_input(3);
        let refused = |d: wit::Decision, input: &model::PolicyInput| match super::v2::decision(d, input) {
            Err(EvalError::InvalidDecision(m)) => m,
            other => panic!("accepted or wrong error: {other:?}"),
        };
        let one = |f: wit::Finding| wit::Decision { findings: vec![f], actions: vec![] };
        let m = refused(one(finding(wit::ResourceRef::Registry(3))), &input);
        assert!(m.contains("finding 0 (X1) names registry 3, but the input has 3 registries"), "{m}");
        let m = refused(
            wit::Decision {
                findings: vec![],
                actions: vec![
                    wit::Action::Audit,
                    wit::Action::RotateRegistryKey(wit::RotateRegistryKey {
                        registry: u32::MAX,
                        target: wit::RotateTarget::LatestVersion,
                    }),
                ],
            },
            &input,
        );
        assert!(m.contains("action 1 (rotate-registry-key) names registry 4294967295"), "{m}");
        input.registries[0].id = "acr00".into();
        let m = refused(one(finding(wit::ResourceRef::Registry(0))), &input);
        assert!(m.contains("names registry 0, whose id \"acr00\" is not a resource id"), "{m}");
        input.key.as_mut().unwrap().key_id = "acr-cmk".into();
        let m = refused(wit::Decision { findings: vec![], actions: vec![wit::Action::RotateVaultKey] }, &input);
        assert!(m.contains("whose id \"acr-cmk\" is not a key id"), "{m}");
        input.key = None;
        let m = refused(one(finding(wit::ResourceRef::Vault)), &input);
        assert!(m.contains("names the key, but the input has no key"), "{m}");
        let m = refused(wit::Decision { findings: vec![], actions: vec![wit::Action::RotateVaultKey] }, &input);
        assert!(m.contains("action 0 (rotate-vault-key)"), "{m}");
    }
}

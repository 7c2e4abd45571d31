//! The decision validator (`cmkguard_model::validate`): an arbitrary decision against a
//! fixture policy input (sometimes with fuzzed ids). Beyond "no panic": whatever it
//! accepts only touches resources the input names, and stays within the limits; and on a
//! decision shaped like a resolved contract-2 decision (every resource one of the input's
//! own ids, each of which parses) `validate_resolved` agrees with `validate`.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use cmkguard_model::validate::{DecisionLimits, validate, validate_resolved};
use cmkguard_model::{Action, Decision, Finding, KeyId, PolicyInput, ResourceId, RotateTarget, Severity};
use libfuzzer_sys::fuzz_target;

/// An id: mostly one the input names (or a near miss of one), sometimes anything.
fn id(u: &mut Unstructured<'_>, pool: &[String]) -> Result<String> {
    if pool.is_empty() || u.ratio(1, 4)? {
        return String::arbitrary(u);
    }
    let base = u.choose(pool)?.clone();
    Ok(match u.int_in_range(0..=7)? {
        0 => base.to_uppercase(),
        1 => base.to_lowercase(),
        2 => format!("{base}/"),
        3 => base.rsplit_once('/').map(|(a, _)| a.to_owned()).unwrap_or_default(),
        4 => format!("{base}{}", String::arbitrary(u)?),
        5 => base.replacen("vault.azure.net", &String::arbitrary(u)?, 1),
        _ => base,
    })
}

fn input_ids(input: &PolicyInput) -> Vec<String> {
    let mut ids = vec![input.event.subject.clone()];
    if let Some(k) = &input.key {
        ids.push(k.key_id.clone());
        ids.push(k.vault_uri.clone());
    }
    for r in &input.registries {
        ids.push(r.id.clone());
        ids.extend(r.key_identifier.clone());
        ids.extend(r.versioned_key_identifier.clone());
    }
    ids.push("/subscriptions/00000000-0000-0000-0000-000000000009/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/victim".into());
    ids.push("https://evil.vault.azure.net/keys/acr-cmk".into());
    ids
}

fn decision(u: &mut Unstructured<'_>, pool: &[String]) -> Result<Decision> {
    let severity = |u: &mut Unstructured<'_>| u.choose(&Severity::ALL).copied();
    let mut findings = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        findings.push(Finding {
            rule_id: String::arbitrary(u)?,
            severity: severity(u)?,
            resource: id(u, pool)?,
            message: String::arbitrary(u)?,
        });
    }
    let mut actions = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        actions.push(match u.int_in_range(0..=3)? {
            0 => Action::Audit,
            1 => Action::RotateRegistryKey {
                registry: id(u, pool)?,
                target: match u.int_in_range(0..=2)? {
                    0 => RotateTarget::Versionless,
                    1 => RotateTarget::LatestVersion,
                    _ => RotateTarget::KeyId(id(u, pool)?),
                },
            },
            2 => Action::RotateVaultKey { key: id(u, pool)? },
            _ => Action::Notify {
                channel: String::arbitrary(u)?,
                severity: severity(u)?,
                title: String::arbitrary(u)?,
                text: String::arbitrary(u)?,
            },
        });
    }
    Ok(Decision { findings, actions })
}

/// Every key id the input names, parsed.
fn input_keys(input: &PolicyInput) -> Vec<KeyId> {
    let mut raw: Vec<&String> = input.key.iter().map(|k| &k.key_id).collect();
    for r in &input.registries {
        raw.extend(r.key_identifier.iter().chain(r.versioned_key_identifier.iter()));
    }
    raw.into_iter().filter_map(|k| KeyId::parse(k).ok()).collect()
}

/// What the contract-2 conversion hands `validate_resolved`: every finding resource, rotated
/// registry and rotated key is one of the input's ids verbatim, and those ids parse.
fn resolved_like(decision: &Decision, input: &PolicyInput) -> bool {
    let registry = |id: &str| input.registries.iter().any(|r| r.id == id) && ResourceId::is_valid(id);
    let key = |id: &str| input.key.as_ref().is_some_and(|k| k.key_id == id) && KeyId::parse(id).is_ok();
    let vault = |id: &str| input.key.as_ref().is_some_and(|k| k.vault_uri == id);
    decision.findings.iter().all(|f| registry(&f.resource) || key(&f.resource) || vault(&f.resource))
        && decision.actions.iter().all(|a| match a {
            Action::RotateRegistryKey { registry: r, .. } => registry(r),
            Action::RotateVaultKey { key: k } => key(k),
            Action::Audit | Action::Notify { .. } => true,
        })
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let fixtures = cmkguard_fuzz::fixture_inputs();
    let mut input = u.choose(fixtures)?.clone();
    if u.ratio(1, 4)? {
        // Hostile facts too: ids the host would never produce.
        let pool = input_ids(&input);
        for r in &mut input.registries {
            if u.arbitrary()? {
                r.id = id(u, &pool)?;
            }
        }
        if let Some(k) = &mut input.key
            && u.arbitrary()?
        {
            k.key_id = id(u, &pool)?;
        }
    }
    let pool = input_ids(&input);
    let decision = decision(u, &pool)?;
    let limits = DecisionLimits::default();
    let accepted = validate(&decision, &input, &limits).is_ok();
    if resolved_like(&decision, &input) {
        assert_eq!(
            validate_resolved(&decision, &input, &limits).is_ok(),
            accepted,
            "validate and validate_resolved disagree on {decision:?}"
        );
    }
    if !accepted {
        return Ok(());
    }
    let registries: Vec<ResourceId> = input.registries.iter().filter_map(|r| ResourceId::parse(&r.id).ok()).collect();
    let keys = input_keys(&input);
    let the_key = input.key.as_ref().and_then(|k| KeyId::parse(&k.key_id).ok());
    for a in &decision.actions {
        match a {
            Action::Audit => {}
            Action::RotateRegistryKey { registry, target } => {
                let parsed = ResourceId::parse(registry).expect("an accepted registry id parses");
                assert!(registries.contains(&parsed), "accepted a registry not in the input: {registry:?}");
                if let RotateTarget::KeyId(k) = target {
                    let k = KeyId::parse(k).expect("an accepted key id parses");
                    assert!(
                        keys.iter().any(|x| *x == k || (k.is_versionless() && x.same_key(&k))),
                        "accepted a key not in the input: {k:?}"
                    );
                }
            }
            Action::RotateVaultKey { key } => {
                let k = KeyId::parse(key).expect("an accepted vault key parses");
                assert!(
                    the_key.as_ref().is_some_and(|x| x.same_key(&k)),
                    "accepted a vault key not the input's: {key:?}"
                );
            }
            Action::Notify { channel, title, text, .. } => {
                assert!(!channel.is_empty() && channel.len() <= 64, "channel {channel:?}");
                assert!(channel.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                assert!(title.len() <= limits.max_short && text.len() <= limits.max_text);
            }
        }
    }
    for f in &decision.findings {
        assert!(!f.rule_id.trim().is_empty() && f.message.len() <= limits.max_text);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

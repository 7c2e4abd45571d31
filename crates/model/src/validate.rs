//! Checks a policy's decision before anyone acts on it: every action must target a
//! resource the host put in the input, and counts and string sizes are bounded.
//! Anything else is a policy error (fail safe).

use std::cell::OnceCell;

use crate::{Action, Decision, KeyId, PolicyInput, ResourceId, RotateTarget};

/// Bounds on a decision.
#[derive(Debug, Clone, Copy)]
pub struct DecisionLimits {
    pub max_findings: usize,
    pub max_actions: usize,
    /// Rule ids, channels, titles.
    pub max_short: usize,
    /// Resource ids and key ids.
    pub max_id: usize,
    /// Messages and notification texts.
    pub max_text: usize,
}

impl Default for DecisionLimits {
    fn default() -> Self {
        Self { max_findings: 1000, max_actions: 200, max_short: 256, max_id: 2048, max_text: 8192 }
    }
}

/// `what` names the field; it is only formatted when the check fails (the happy path
/// allocates nothing).
fn check_len(what: impl FnOnce() -> String, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("{} is {} bytes (at most {max})", what(), value.len()));
    }
    Ok(())
}

fn valid_channel(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the input names, in the forms Azure compares. Each input id is parsed at most
/// once per validation and only when needed: a decision usually repeats the input's ids
/// verbatim, which is recognised by comparing strings before anything is parsed (an id
/// only counts when it parses, exactly as on the parsing path).
struct InScope<'a> {
    input: &'a PolicyInput,
    registries: Vec<InputRegistry<'a>>,
    key: OnceCell<Option<KeyId>>,
    /// Every key id the input mentions (the key, the registries' configured and in-use keys).
    keys: Vec<(&'a str, OnceCell<Option<KeyId>>)>,
    vault_uri: Option<&'a str>,
    subject: &'a str,
}

/// A registry id of the input, whether it parses, and (only when needed) the parsed id.
struct InputRegistry<'a> {
    id: &'a str,
    valid: OnceCell<bool>,
    parsed: OnceCell<Option<ResourceId>>,
}

impl<'a> InScope<'a> {
    fn new(input: &'a PolicyInput) -> Self {
        let mut keys: Vec<(&str, OnceCell<Option<KeyId>>)> = Vec::with_capacity(1 + 2 * input.registries.len());
        let mut add = |k: &'a str| {
            if !keys.iter().any(|(x, _)| *x == k) {
                keys.push((k, OnceCell::new()));
            }
        };
        if let Some(k) = &input.key {
            add(&k.key_id);
        }
        for r in &input.registries {
            for k in [&r.key_identifier, &r.versioned_key_identifier].into_iter().flatten() {
                add(k);
            }
        }
        Self {
            input,
            registries: input
                .registries
                .iter()
                .map(|r| InputRegistry { id: &r.id, valid: OnceCell::new(), parsed: OnceCell::new() })
                .collect(),
            key: OnceCell::new(),
            keys,
            vault_uri: input.key.as_ref().map(|k| k.vault_uri.as_str()),
            subject: &input.event.subject,
        }
    }

    /// The input's key, parsed.
    fn key(&self) -> Option<&KeyId> {
        self.key.get_or_init(|| self.input.key.as_ref().and_then(|k| KeyId::parse(&k.key_id).ok())).as_ref()
    }

    fn registry_exact(&self, id: &str) -> bool {
        // Validity without building the id: most decisions name several registries.
        self.registries.iter().any(|r| r.id == id && *r.valid.get_or_init(|| ResourceId::is_valid(r.id)))
    }

    fn has_registry(&self, id: &str) -> bool {
        self.registry_exact(id)
            || ResourceId::parse(id).is_ok_and(|id| {
                self.registries
                    .iter()
                    .any(|r| r.parsed.get_or_init(|| ResourceId::parse(r.id).ok()).as_ref() == Some(&id))
            })
    }

    fn key_exact(&self, id: &str) -> bool {
        self.keys.iter().any(|(raw, parsed)| *raw == id && parsed.get_or_init(|| KeyId::parse(raw).ok()).is_some())
    }

    /// A key id from the input, or the versionless form of one.
    fn has_key(&self, id: &str) -> bool {
        self.key_exact(id)
            || KeyId::parse(id).is_ok_and(|k| {
                self.keys.iter().any(|(raw, p)| {
                    p.get_or_init(|| KeyId::parse(raw).ok())
                        .as_ref()
                        .is_some_and(|x| *x == k || (k.is_versionless() && x.same_key(&k)))
                })
            })
    }

    fn has_vault(&self, id: &str) -> bool {
        self.vault_uri.is_some_and(|v| v.trim_end_matches('/').eq_ignore_ascii_case(id.trim_end_matches('/')))
    }

    fn has_resource(&self, id: &str) -> bool {
        // The string comparisons first; parsing only when none of them matches.
        self.registry_exact(id)
            || self.key_exact(id)
            || self.has_vault(id)
            || (!self.subject.is_empty() && id == self.subject)
            || self.has_registry(id)
            || self.has_key(id)
    }
}

/// Checks `decision` against `input`; the error says which item was refused and why.
pub fn validate(decision: &Decision, input: &PolicyInput, limits: &DecisionLimits) -> Result<(), String> {
    check_counts(decision, limits)?;
    if decision.findings.is_empty() && decision.actions.iter().all(|a| matches!(a, Action::Audit)) {
        return Ok(());
    }
    let scope = InScope::new(input);
    for (i, f) in decision.findings.iter().enumerate() {
        check_finding(i, f, limits)?;
        if !scope.has_resource(&f.resource) {
            return Err(format!("finding {i} ({}) is about {:?}, which is not in the input", f.rule_id, f.resource));
        }
    }
    let key = || scope.key();
    for (i, a) in decision.actions.iter().enumerate() {
        check_action(i, a, input, limits, &key, || &scope, Some(&scope))?;
    }
    Ok(())
}

/// Checks a decision whose resources the host itself copied from `input`: contract 2
/// names a finding's resource, a rotated registry and a rotated key by their position in
/// the input, and the host resolved those positions into the input's ids
/// (`cmkguard_policy`'s contract-2 conversion, which also checks that the ids it hands
/// out parse). Membership holds by construction, so this skips the id comparisons of
/// [`validate`] (which cost more than the rest of the host's work on a decision) and
/// checks everything else as `validate` does: counts, sizes, rule ids, channel names, an
/// explicit `key-id` rotate target (a string the policy wrote) and that a rotation has a
/// key to rotate to. Calling it on any other decision skips a check that matters.
pub fn validate_resolved(decision: &Decision, input: &PolicyInput, limits: &DecisionLimits) -> Result<(), String> {
    check_counts(decision, limits)?;
    for (i, f) in decision.findings.iter().enumerate() {
        check_finding(i, f, limits)?;
    }
    // Built only for what needs it: a `key-id` target, or a rotation without a usable key.
    let scope = OnceCell::new();
    let scope = || scope.get_or_init(|| InScope::new(input));
    let key = OnceCell::new();
    let key = || key.get_or_init(|| input.key.as_ref().and_then(|k| KeyId::parse(&k.key_id).ok())).as_ref();
    for (i, a) in decision.actions.iter().enumerate() {
        check_action(i, a, input, limits, &key, scope, None)?;
    }
    Ok(())
}

fn check_counts(decision: &Decision, limits: &DecisionLimits) -> Result<(), String> {
    if decision.findings.len() > limits.max_findings {
        return Err(format!("{} findings (at most {})", decision.findings.len(), limits.max_findings));
    }
    if decision.actions.len() > limits.max_actions {
        return Err(format!("{} actions (at most {})", decision.actions.len(), limits.max_actions));
    }
    Ok(())
}

/// A finding's fields (not its resource).
fn check_finding(i: usize, f: &crate::Finding, limits: &DecisionLimits) -> Result<(), String> {
    let at = |field: &str| format!("finding {i} {field}");
    if f.rule_id.trim().is_empty() {
        return Err(format!("finding {i} has an empty rule id"));
    }
    check_len(|| at("rule id"), &f.rule_id, limits.max_short)?;
    check_len(|| at("resource"), &f.resource, limits.max_id)?;
    check_len(|| at("message"), &f.message, limits.max_text)
}

/// An action; `membership` (the scope of [`validate`]) also checks that a rotated
/// registry or key is in the input, `None` when the host resolved them from the input
/// ([`validate_resolved`]). `key`: the input's key, parsed.
fn check_action<'s, 'a: 's>(
    i: usize,
    a: &Action,
    input: &PolicyInput,
    limits: &DecisionLimits,
    key: &dyn Fn() -> Option<&'s KeyId>,
    scope: impl Fn() -> &'s InScope<'a>,
    membership: Option<&InScope<'_>>,
) -> Result<(), String> {
    match a {
        Action::Audit => {}
        Action::RotateRegistryKey { registry, target } => {
            check_len(|| format!("action {i} registry"), registry, limits.max_id)?;
            if membership.is_some_and(|m| !m.has_registry(registry)) {
                return Err(format!(
                    "action {i} (rotate-registry-key) targets registry {registry:?}, which is not in the input"
                ));
            }
            if let RotateTarget::KeyId(k) = target {
                check_len(|| format!("action {i} key id"), k, limits.max_id)?;
                if !scope().has_key(k) {
                    return Err(format!(
                        "action {i} (rotate-registry-key) points {registry:?} at key {k:?}, which is not in the input"
                    ));
                }
            }
            if matches!(target, RotateTarget::LatestVersion | RotateTarget::Versionless) && key().is_none() {
                let registry_has_key = input.registries.iter().any(|r| {
                    ResourceId::parse(&r.id).ok() == ResourceId::parse(registry).ok() && r.key_identifier.is_some()
                });
                if !registry_has_key {
                    return Err(format!(
                        "action {i} (rotate-registry-key) for {registry:?}: no key in the input to rotate to"
                    ));
                }
            }
        }
        Action::RotateVaultKey { key: k } => {
            check_len(|| format!("action {i} key"), k, limits.max_id)?;
            let exact = input.key.as_ref().is_some_and(|x| x.key_id == *k) && key().is_some();
            let ok =
                exact || (membership.is_some() && KeyId::parse(k).is_ok_and(|k| key().is_some_and(|x| x.same_key(&k))));
            if !ok {
                return Err(format!("action {i} (rotate-vault-key) targets key {k:?}, which is not the input's key"));
            }
        }
        Action::Notify { channel, title, text, .. } => {
            if !valid_channel(channel) {
                return Err(format!(
                    "action {i} (notify) names channel {channel:?}: letters, digits, - and _ only, at most 64"
                ));
            }
            check_len(|| format!("action {i} title"), title, limits.max_short)?;
            check_len(|| format!("action {i} text"), text, limits.max_text)?;
        }
    }
    Ok(())
}

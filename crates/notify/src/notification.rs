//! The message model: what one notification says, independent of the channel that
//! carries it. The act stage fills a [`Notification`] from the event, the facts, the
//! policy's `notify` action and the outcomes of the other actions; the payload
//! builders ([`crate::teams`], [`crate::slack`], [`crate::webhook`]) only render it.

use chrono::{DateTime, Utc};
use cmkguard_model::outcome::{ActionOutcome, ActionStatus};
use cmkguard_model::{KeyId, PolicyInput, RegistryFacts, ResourceId, Severity};
use serde::{Deserialize, Serialize};

use crate::dedupe::DedupeKey;

/// One notification. Its JSON form is the `data` of the webhook CloudEvent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub severity: Severity,
    /// One line, e.g. "Key cmk-prod expires in 10 days".
    pub title: String,
    /// A few sentences (plain text; renderers escape it for their markup).
    pub text: String,
    /// The policy rule that asked for it (e.g. `CMK003`), part of the dedupe key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyRef>,
    /// The key's expiry, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// Whole days from [`Notification::time`] to `expires` (negative: expired that long ago).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    /// What cmkguard did (or, in monitor mode, would do) about it.
    #[serde(default)]
    pub actions: Vec<ActionOutcome>,
    /// `monitor` or `enforce`: the host's mode when this was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// When it was decided (the evaluation's "now").
    pub time: DateTime<Utc>,
    /// Which portal the links point to.
    #[serde(default, skip_serializing_if = "Portal::is_public")]
    pub portal: Portal,
}

/// The event that led to the notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    pub id: String,
    /// The Event Grid type, e.g. `Microsoft.KeyVault.KeyNearExpiry`, or `cmkguard.sweep`.
    pub event_type: String,
}

/// The registry concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryRef {
    pub name: String,
    pub id: ResourceId,
}

/// The key concerned. `id` may be versioned or versionless, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    pub name: String,
    pub id: KeyId,
    /// The key version the notification is about (the current or the new version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl RegistryRef {
    pub fn new(id: ResourceId) -> Self {
        Self { name: id.name().to_owned(), id }
    }
}

impl KeyRef {
    /// Name and version taken from the id.
    pub fn new(id: KeyId) -> Self {
        Self { name: id.name().to_owned(), version: id.version().map(str::to_owned), id }
    }
}

/// The Azure portal the links point to (public cloud by default; sovereign clouds
/// have their own, e.g. `https://portal.azure.us`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Portal(String);

impl Portal {
    pub const PUBLIC: &'static str = "https://portal.azure.com";

    pub fn new(base: &str) -> Self {
        Self(base.trim().trim_end_matches('/').to_owned())
    }

    pub fn base(&self) -> &str {
        &self.0
    }

    fn is_public(&self) -> bool {
        self.0 == Self::PUBLIC
    }

    /// The resource blade of an ARM resource: `{base}/#@/resource{id}`.
    pub fn resource(&self, id: &ResourceId) -> String {
        format!("{}/#@/resource{}", self.0, id.as_str())
    }

    /// The Key Vault key blade: `{base}/#@/asset/Microsoft_Azure_KeyVault/Key/{key id}`.
    pub fn key(&self, id: &KeyId) -> String {
        format!("{}/#@/asset/Microsoft_Azure_KeyVault/Key/{id}", self.0)
    }
}

impl Default for Portal {
    fn default() -> Self {
        Self(Self::PUBLIC.to_owned())
    }
}

/// A labelled link (rendered as a button).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub label: String,
    pub url: String,
}

/// Whole days from `now` to `expires`, rounded towards the past: 9 days 23 hours left is
/// 9 days; expired 2 hours ago is -1.
pub fn days_left(expires: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (expires - now).num_seconds().div_euclid(86_400)
}

impl Notification {
    /// A notification with only the essentials; fill the rest with the `with_*` methods
    /// or by setting fields.
    pub fn new(severity: Severity, title: impl Into<String>, text: impl Into<String>, time: DateTime<Utc>) -> Self {
        Self {
            severity,
            title: title.into(),
            text: text.into(),
            rule_id: None,
            event: None,
            registry: None,
            key: None,
            expires: None,
            days_left: None,
            actions: Vec::new(),
            mode: None,
            time,
            portal: Portal::default(),
        }
    }

    /// A notification about one policy input: the event (id and kind), the key (id,
    /// version, expiry and days left from the input's `now`) and, when the input names
    /// exactly one registry, that registry. Ids that do not parse are left out (they are
    /// data from Azure; a message without a link beats no message).
    pub fn from_input(
        input: &PolicyInput,
        severity: Severity,
        title: impl Into<String>,
        text: impl Into<String>,
    ) -> Self {
        let mut n = Self::new(severity, title, text, input.now).with_event(&input.event.id, &input.event.kind);
        if let Some(k) = &input.key {
            if let Ok(id) = KeyId::parse(&k.key_id) {
                n.key = Some(KeyRef {
                    name: k.name.clone(),
                    id,
                    version: Some(k.version.clone()).filter(|v| !v.is_empty()),
                });
            }
            if let Some(exp) = k.expires {
                n = n.with_expiry(exp);
            }
        }
        if let [r] = input.registries.as_slice() {
            n = n.with_registry_facts(r);
        }
        n
    }

    /// Sets the registry from its facts (skipped if its id does not parse).
    pub fn with_registry_facts(mut self, r: &RegistryFacts) -> Self {
        if let Ok(id) = ResourceId::parse(&r.id) {
            self.registry = Some(RegistryRef { name: r.name.clone(), id });
        }
        self
    }

    pub fn with_rule(mut self, rule_id: impl Into<String>) -> Self {
        self.rule_id = Some(rule_id.into());
        self
    }

    pub fn with_event(mut self, id: impl Into<String>, event_type: impl Into<String>) -> Self {
        self.event = Some(EventRef { id: id.into(), event_type: event_type.into() });
        self
    }

    pub fn with_registry(mut self, id: ResourceId) -> Self {
        self.registry = Some(RegistryRef::new(id));
        self
    }

    pub fn with_key(mut self, id: KeyId) -> Self {
        self.key = Some(KeyRef::new(id));
        self
    }

    /// Sets the expiry and computes [`Notification::days_left`] from [`Notification::time`].
    pub fn with_expiry(mut self, expires: DateTime<Utc>) -> Self {
        self.days_left = Some(days_left(expires, self.time));
        self.expires = Some(expires);
        self
    }

    pub fn with_actions(mut self, actions: Vec<ActionOutcome>) -> Self {
        self.actions = actions;
        self
    }

    pub fn with_mode(mut self, mode: impl Into<String>) -> Self {
        self.mode = Some(mode.into());
        self
    }

    pub fn with_portal(mut self, portal: Portal) -> Self {
        self.portal = portal;
        self
    }

    /// Portal links: the registry's blade and the key's blade, when known.
    pub fn links(&self) -> Vec<Link> {
        let mut out = Vec::new();
        if let Some(r) = &self.registry {
            out.push(Link { label: "Open registry".into(), url: self.portal.resource(&r.id) });
        }
        if let Some(k) = &self.key {
            out.push(Link { label: "Open key".into(), url: self.portal.key(&k.id) });
        }
        out
    }

    /// The resource the notification is about: the registry, else the key (versionless), else "".
    pub fn resource(&self) -> String {
        match (&self.registry, &self.key) {
            (Some(r), _) => r.id.as_str().to_owned(),
            (None, Some(k)) => k.id.versionless().to_string(),
            (None, None) => String::new(),
        }
    }

    /// The dedupe key `(rule, resource, key version)`. Without a rule id it falls back
    /// to the event type (stable across daily and redelivered events), then the title.
    pub fn dedupe_key(&self) -> DedupeKey {
        let rule =
            self.rule_id.as_deref().or(self.event.as_ref().map(|e| e.event_type.as_str())).unwrap_or(&self.title);
        let version = self.key.as_ref().and_then(|k| k.version.as_deref());
        DedupeKey::new(rule, &self.resource(), version)
    }

    /// "expires 2026-12-03 (in 10 days)" / "expired 2026-11-20 (3 days ago)".
    pub fn expiry_line(&self) -> Option<String> {
        let exp = self.expires?;
        let date = exp.format("%Y-%m-%d %H:%M UTC");
        Some(match self.days_left {
            Some(d) if d > 1 => format!("{date} (in {d} days)"),
            Some(1) => format!("{date} (in 1 day)"),
            Some(0) => format!("{date} (today)"),
            Some(-1) => format!("{date} (expired yesterday)"),
            Some(d) => format!("{date} (expired {} days ago)", -d),
            None => date.to_string(),
        })
    }

    /// The labelled facts every renderer shows (actions are rendered separately):
    /// registry, key (name and version), expiry with days left, mode, rule, event.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(r) = &self.registry {
            out.push(("Registry", r.name.clone()));
        }
        if let Some(k) = &self.key {
            let shown = match &k.version {
                Some(v) => format!("{} (version {})", k.name, short_version(v)),
                None => format!("{} (versionless)", k.name),
            };
            out.push(("Key", shown));
        }
        if let Some(e) = self.expiry_line() {
            out.push(("Expires", e));
        }
        if let Some(m) = &self.mode {
            out.push(("Mode", m.clone()));
        }
        if let Some(r) = &self.rule_id {
            out.push(("Rule", r.clone()));
        }
        if let Some(e) = &self.event {
            out.push(("Event", e.event_type.clone()));
        }
        out
    }

    /// One line per action, e.g. "rotate-registry-key: would do (monitor mode): rotate to versionless key".
    pub fn action_lines(&self) -> Vec<String> {
        self.actions.iter().map(action_line).collect()
    }
}

/// How an action's status reads in a message.
pub fn status_label(s: ActionStatus) -> &'static str {
    match s {
        ActionStatus::Done => "done",
        ActionStatus::WouldDo => "would do (monitor mode)",
        ActionStatus::Skipped => "skipped",
        ActionStatus::Pending => "in progress",
        ActionStatus::Failed => "FAILED",
    }
}

fn action_line(a: &ActionOutcome) -> String {
    if a.detail.is_empty() {
        format!("{}: {}", a.action, status_label(a.status))
    } else {
        format!("{}: {} — {}", a.action, status_label(a.status), a.detail)
    }
}

/// A key version shortened for display (Key Vault versions are 32 hex digits).
pub fn short_version(v: &str) -> String {
    if v.chars().count() > 12 { format!("{}…", v.chars().take(8).collect::<String>()) } else { v.to_owned() }
}

/// Cuts `s` to at most `max` characters, ending in "…" when cut (payload size limits).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A sample near-expiry notification (used by the examples, docs and tests).
pub fn sample(now: DateTime<Utc>) -> Notification {
    let registry = ResourceId::parse(
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-platform/providers/Microsoft.ContainerRegistry/registries/contosoprod",
    )
    .expect("sample registry id");
    let key = KeyId::parse("https://kv-platform-prod.vault.azure.net/keys/acr-cmk/4f6c0e7a2b9d4e1f8a3c5b7d9e0f1a2b")
        .expect("sample key id");
    Notification::new(
        Severity::High,
        "Key acr-cmk expires in 10 days",
        "The registry contosoprod is encrypted with a key version that expires soon. It was pinned to that version, so it would not pick up a new one by itself.",
        now,
    )
    .with_rule("CMK-EXPIRY")
    .with_event("1d3c1f54-7b1e-4a8e-9a53-6f0d7c2b9e11", "Microsoft.KeyVault.KeyNearExpiry")
    .with_registry(registry.clone())
    .with_key(key)
    .with_expiry(now + chrono::Duration::days(10) + chrono::Duration::hours(2))
    .with_mode("monitor")
    .with_actions(vec![
        ActionOutcome {
            action: "rotate-registry-key".into(),
            target: registry.as_str().to_owned(),
            status: ActionStatus::WouldDo,
            detail: "rotate to the versionless key".into(),
        },
        ActionOutcome { action: "audit".into(), target: registry.as_str().to_owned(), status: ActionStatus::Done, detail: "recorded".into() },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
    }

    #[test]
    fn days_left_rounds_towards_the_past() {
        let n = now();
        assert_eq!(days_left(n + chrono::Duration::hours(24 * 10 - 1), n), 9);
        assert_eq!(days_left(n + chrono::Duration::days(10), n), 10);
        assert_eq!(days_left(n - chrono::Duration::hours(2), n), -1);
        assert_eq!(days_left(n, n), 0);
    }

    #[test]
    fn links_point_to_the_portal_blades() {
        let s = sample(now());
        let links = s.links();
        assert_eq!(links.len(), 2);
        assert_eq!(
            links[0].url,
            "https://portal.azure.com/#@/resource/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-platform/providers/Microsoft.ContainerRegistry/registries/contosoprod"
        );
        assert_eq!(
            links[1].url,
            "https://portal.azure.com/#@/asset/Microsoft_Azure_KeyVault/Key/https://kv-platform-prod.vault.azure.net/keys/acr-cmk/4f6c0e7a2b9d4e1f8a3c5b7d9e0f1a2b"
        );
        let us = s.with_portal(Portal::new("https://portal.azure.us/"));
        assert!(us.links()[0].url.starts_with("https://portal.azure.us/#@/resource/subscriptions/"));
    }

    #[test]
    fn expiry_and_actions_read_well() {
        let s = sample(now());
        assert_eq!(s.days_left, Some(10));
        assert_eq!(s.expiry_line().unwrap(), "2026-12-03 12:00 UTC (in 10 days)");
        assert_eq!(s.action_lines()[0], "rotate-registry-key: would do (monitor mode) — rotate to the versionless key");
        let expired =
            Notification::new(Severity::Critical, "t", "x", now()).with_expiry(now() - chrono::Duration::days(3));
        assert_eq!(expired.expiry_line().unwrap(), "2026-11-20 10:00 UTC (expired 3 days ago)");
    }

    #[test]
    fn json_round_trips() {
        let s = sample(now());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["severity"], "high");
        assert_eq!(v["registry"]["name"], "contosoprod");
        assert!(v.get("portal").is_none(), "public portal is the default and not repeated");
        assert_eq!(serde_json::from_value::<Notification>(v).unwrap(), s);
    }

    #[test]
    fn from_input_takes_event_key_expiry_and_the_single_registry() {
        let input: PolicyInput = serde_json::from_value(serde_json::json!({
            "event": { "kind": "key-near-expiry", "id": "e-1", "time": "2026-11-23T10:00:00Z", "subject": "k" },
            "now": "2026-11-23T10:00:00Z",
            "key": {
                "key_id": "https://kv1.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef",
                "vault_uri": "https://kv1.vault.azure.net", "name": "cmk", "version": "0123456789abcdef0123456789abcdef",
                "key_type": "RSA", "enabled": true, "expires": "2026-12-03T10:00:00Z", "vault": {}
            },
            "registries": [{
                "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/r1",
                "name": "r1", "sku": "Premium", "location": "westeurope", "encryption_enabled": true
            }]
        }))
        .unwrap();
        let n = Notification::from_input(&input, Severity::Medium, "t", "x");
        assert_eq!(n.event.as_ref().unwrap().event_type, "key-near-expiry");
        assert_eq!(n.key.as_ref().unwrap().name, "cmk");
        assert_eq!(n.days_left, Some(10));
        assert_eq!(n.registry.as_ref().unwrap().name, "r1");
        // No rule id: dedupe on the event type, not on a title that changes daily.
        let mut later = n.clone();
        later.title = "other".into();
        assert_eq!(n.dedupe_key(), later.dedupe_key());
        let mut two = input.clone();
        let first = two.registries[0].clone();
        two.registries.push(first);
        assert!(Notification::from_input(&two, Severity::Medium, "t", "x").registry.is_none());
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("héllo", 5), "héllo");
        assert_eq!(truncate("héllo wörld", 6), "héllo…");
    }
}

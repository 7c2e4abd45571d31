//! The Teams payload: a `message` carrying one Adaptive Card (schema 1.4), as both
//! Teams Workflows ("When a Teams webhook request is received") and the legacy
//! incoming webhooks accept it. The card has a severity-coloured header, the facts
//! (registry, key, expiry and days left, each action), the message text and buttons
//! that open the registry and key in the Azure portal.

use cmkguard_model::Severity;
use cmkguard_model::outcome::ActionStatus;
use serde_json::{Value, json};

use crate::notification::{Notification, status_label, truncate};

/// The Adaptive Card schema version produced (Teams supports up to 1.5 on desktop,
/// 1.4 everywhere, including mobile).
pub const CARD_VERSION: &str = "1.4";
/// The attachment content type Teams requires.
pub const CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";

/// The whole webhook body: `{"type":"message","attachments":[{contentType, content: card}]}`.
pub fn payload(n: &Notification) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": CONTENT_TYPE,
            "contentUrl": null,
            "content": card(n),
        }],
    })
}

/// The Adaptive Card alone (what the renderer in `docs/adaptive-card` draws).
pub fn card(n: &Notification) -> Value {
    let (style, color) = severity_style(n.severity);
    let mut header_items = vec![
        json!({
            "type": "TextBlock",
            "text": format!("{} · cmkguard", n.severity.as_str().to_ascii_uppercase()),
            "size": "Small",
            "weight": "Bolder",
            "color": color,
            "spacing": "None",
        }),
        json!({
            "type": "TextBlock",
            "text": plain(&truncate(&n.title, 200)),
            "size": "Large",
            "weight": "Bolder",
            "wrap": true,
            "spacing": "Small",
        }),
    ];
    if let Some(r) = &n.registry {
        header_items.push(json!({
            "type": "TextBlock",
            // As written: ARM ids cannot contain markdown link or bold syntax, and a reader may copy it.
            "text": r.id.as_str(),
            "size": "Small",
            "isSubtle": true,
            "wrap": true,
            "spacing": "None",
        }));
    }
    let mut body = vec![json!({
        "type": "Container",
        "style": style,
        "bleed": true,
        "items": header_items,
    })];
    if !n.text.trim().is_empty() {
        body.push(json!({ "type": "TextBlock", "text": plain(&truncate(&n.text, 2000)), "wrap": true }));
    }
    // What it is about first (registry, key, expiry), then what was done, then context.
    let fact = |t: &str, v: &str| json!({ "title": t, "value": plain(&truncate(v, 300)) });
    let (about, context): (Vec<_>, Vec<_>) =
        n.facts().into_iter().partition(|(t, _)| matches!(*t, "Registry" | "Key" | "Expires"));
    let mut facts: Vec<Value> = about.iter().map(|(t, v)| fact(t, v)).collect();
    for (i, a) in n.actions.iter().enumerate() {
        let label = status_label(a.status);
        let value = if a.detail.is_empty() {
            format!("{label} ({})", a.action)
        } else {
            format!("{label}: {} ({})", a.detail, a.action)
        };
        facts.push(fact(if i == 0 { "Action" } else { "" }, &value));
    }
    facts.extend(context.iter().map(|(t, v)| fact(t, v)));
    if !facts.is_empty() {
        body.push(json!({ "type": "FactSet", "facts": facts, "spacing": "Medium" }));
    }
    if n.actions.iter().any(|a| a.status == ActionStatus::Failed) {
        body.push(json!({
            "type": "TextBlock",
            "text": "An action failed: see the audit record for the reason.",
            "color": "attention",
            "wrap": true,
        }));
    }
    if let Some(e) = &n.event {
        body.push(json!({
            "type": "TextBlock",
            "text": plain(&format!("Event {} · {}", e.id, n.time.format("%Y-%m-%d %H:%M UTC"))),
            "size": "Small",
            "isSubtle": true,
            "wrap": true,
        }));
    }
    let actions: Vec<Value> =
        n.links().into_iter().map(|l| json!({ "type": "Action.OpenUrl", "title": l.label, "url": l.url })).collect();
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "msteams": { "width": "Full" },
        "fallbackText": plain(&truncate(&n.title, 200)),
        "body": body,
    });
    if !actions.is_empty() {
        card["actions"] = Value::Array(actions);
    }
    card
}

/// Container style and text colour per severity (Adaptive Card named colours, so the
/// host's theme, light or dark, picks the shade).
pub fn severity_style(s: Severity) -> (&'static str, &'static str) {
    match s {
        Severity::Critical | Severity::High => ("attention", "attention"),
        Severity::Medium => ("warning", "warning"),
        Severity::Low => ("accent", "accent"),
        Severity::Info => ("emphasis", "default"),
    }
}

/// Text from a policy or from Azure is shown as written, not as markdown: a zero-width
/// space after `[`, `*` and `_` stops link, bold and italic syntax (a policy cannot
/// smuggle a disguised link into a card).
pub fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        out.push(c);
        if matches!(c, '[' | '*' | '_' | '`') {
            out.push('\u{200B}');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::sample;
    use chrono::TimeZone;

    fn card_of(n: &Notification) -> Value {
        let p = payload(n);
        assert_eq!(p["type"], "message");
        assert_eq!(p["attachments"].as_array().unwrap().len(), 1);
        assert_eq!(p["attachments"][0]["contentType"], CONTENT_TYPE);
        p["attachments"][0]["content"].clone()
    }

    #[test]
    fn plain_neutralises_markdown() {
        assert_eq!(plain("a[b](c)"), "a[\u{200B}b](c)");
        assert!(!plain("**bold**").contains("**"));
    }

    #[test]
    fn the_registry_id_can_be_copied_verbatim() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        let id = "/subscriptions/s/resourceGroups/rg_a_b/providers/Microsoft.ContainerRegistry/registries/r1";
        let n = sample(now).with_registry(cmkguard_model::ResourceId::parse(id).unwrap());
        assert_eq!(card_of(&n)["body"][0]["items"][2]["text"], id);
    }

    #[test]
    fn severity_colours_the_header() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        for (sev, style) in
            [(Severity::Critical, "attention"), (Severity::Medium, "warning"), (Severity::Info, "emphasis")]
        {
            let mut n = sample(now);
            n.severity = sev;
            let c = card_of(&n);
            assert_eq!(c["body"][0]["style"], style);
            assert!(c["body"][0]["items"][0]["text"].as_str().unwrap().starts_with(&sev.as_str().to_ascii_uppercase()));
        }
    }
}

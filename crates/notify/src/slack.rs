//! The Slack payload for an incoming webhook: Block Kit `blocks` plus a plain `text`
//! fallback (shown in notifications and by clients without blocks). Text from a policy
//! or from Azure is escaped for `mrkdwn` (`&`, `<`, `>`), so it cannot form links or
//! `<!channel>` mentions. Block Kit's size limits are respected by truncation.

use cmkguard_model::Severity;
use serde_json::{Value, json};

use crate::notification::{Notification, status_label, truncate};

/// Block Kit limits (characters) that matter here.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const BUTTON_TEXT_MAX: usize = 75;
const BUTTON_URL_MAX: usize = 3000;
const FIELDS_MAX: usize = 10;

/// The whole webhook body: `{"text": fallback, "blocks": [...]}`.
pub fn payload(n: &Notification) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": { "type": "plain_text", "text": truncate(&format!("{} {}", severity_mark(n.severity), n.title), HEADER_MAX), "emoji": true },
    })];
    let mut context = vec![format!("*{}*", n.severity.as_str().to_ascii_uppercase())];
    if let Some(r) = &n.rule_id {
        context.push(format!("rule `{}`", escape(r)));
    }
    if let Some(e) = &n.event {
        context.push(escape(&e.event_type));
    }
    if let Some(m) = &n.mode {
        context.push(format!("{} mode", escape(m)));
    }
    blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": truncate(&context.join(" · "), SECTION_MAX) }] }));
    if !n.text.trim().is_empty() {
        blocks.push(
            json!({ "type": "section", "text": { "type": "mrkdwn", "text": truncate(&escape(&n.text), SECTION_MAX) } }),
        );
    }
    let fields: Vec<Value> = n
        .facts()
        .into_iter()
        .filter(|(label, _)| !matches!(*label, "Mode" | "Rule" | "Event"))
        .take(FIELDS_MAX)
        .map(|(label, value)| json!({ "type": "mrkdwn", "text": truncate(&format!("*{label}*\n{}", escape(&value)), FIELD_MAX) }))
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({ "type": "section", "fields": fields }));
    }
    if !n.actions.is_empty() {
        let lines: Vec<String> = n
            .actions
            .iter()
            .map(|a| {
                let detail = if a.detail.is_empty() { String::new() } else { format!(" — {}", escape(&a.detail)) };
                format!("• *{}* `{}`{detail}", status_label(a.status), escape(&a.action))
            })
            .collect();
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": truncate(&format!("*What was done*\n{}", lines.join("\n")), SECTION_MAX) },
        }));
    }
    let buttons: Vec<Value> = n
        .links()
        .into_iter()
        .filter(|l| l.url.len() <= BUTTON_URL_MAX)
        .enumerate()
        .map(|(i, l)| {
            json!({
                "type": "button",
                "action_id": format!("open-{i}"),
                "text": { "type": "plain_text", "text": truncate(&l.label, BUTTON_TEXT_MAX) },
                "url": l.url,
            })
        })
        .collect();
    if !buttons.is_empty() {
        blocks.push(json!({ "type": "actions", "elements": buttons }));
    }
    json!({ "text": fallback(n), "blocks": blocks })
}

/// The plain-text fallback: `[HIGH] title — registry`.
pub fn fallback(n: &Notification) -> String {
    let mut s = format!("[{}] {}", n.severity.as_str().to_ascii_uppercase(), n.title);
    if let Some(r) = &n.registry {
        s.push_str(" — ");
        s.push_str(&r.name);
    }
    escape(&truncate(&s, SECTION_MAX))
}

/// Slack's required escaping for text it parses: `&`, `<`, `>`.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn severity_mark(s: Severity) -> &'static str {
    match s {
        Severity::Critical => ":red_circle:",
        Severity::High => ":large_orange_circle:",
        Severity::Medium => ":large_yellow_circle:",
        Severity::Low => ":large_blue_circle:",
        Severity::Info => ":white_circle:",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_prevents_links_and_mentions() {
        assert_eq!(escape("<!channel> & <https://evil|click>"), "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;");
    }
}

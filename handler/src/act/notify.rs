//! `notify`: a policy's message to a named channel, deduplicated per (rule, resource, key
//! version, channel) within the configured window. A channel the configuration does not
//! name is refused and recorded; a failed delivery is recorded (and its dedupe entry
//! forgotten so a redelivery may try again) and never blocks anything else.

use cmkguard_model::{Decision, Event, PolicyInput, ResourceId, Severity};
use cmkguard_notify::Notification;

use super::{ActStage, outcome};
use crate::pipeline::{ActionOutcome, ActionStatus, PolicyRef};

const NOTIFY: &str = "notify";

/// The notification for one `notify` action: the input's event, key and registry, the
/// rule of the finding it reports (same severity and message), and what was done.
pub fn build(
    stage: &ActStage,
    input: &PolicyInput,
    decision: &Decision,
    changes: &[ActionOutcome],
    severity: Severity,
    title: &str,
    text: &str,
) -> Notification {
    let mut n = Notification::from_input(input, severity, title, text).with_mode(stage.mode.as_str());
    let finding = decision.findings.iter().find(|f| f.severity == severity && f.message == text);
    if let Some(f) = finding {
        n = n.with_rule(&f.rule_id);
        if n.registry.is_none()
            && let Ok(id) = ResourceId::parse(&f.resource)
        {
            match input.registries.iter().find(|r| r.id.eq_ignore_ascii_case(&f.resource)) {
                Some(r) => n = n.with_registry_facts(r),
                None => n = n.with_registry(id),
            }
        }
    }
    n.with_actions(changes.to_vec())
}

/// Dedupes and sends one notification; always ends in an outcome.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    stage: &ActStage,
    _event: &Event,
    input: &PolicyInput,
    decision: &Decision,
    changes: &[ActionOutcome],
    channel: &str,
    severity: Severity,
    title: &str,
    text: &str,
) -> ActionOutcome {
    let n = build(stage, input, decision, changes, severity, title, text);
    deliver(stage, channel, &n).await
}

/// The dedupe triple of a notification on a channel.
pub fn dedupe_parts(n: &Notification, channel: &str) -> (String, String, String) {
    let rule =
        n.rule_id.clone().or_else(|| n.event.as_ref().map(|e| e.event_type.clone())).unwrap_or_else(|| n.title.clone());
    let version = n.key.as_ref().and_then(|k| k.version.clone()).unwrap_or_default();
    (format!("{rule}@{channel}"), n.resource(), version)
}

async fn deliver(stage: &ActStage, channel: &str, n: &Notification) -> ActionOutcome {
    let Some(notifier) = &stage.notifier else {
        return outcome(
            NOTIFY,
            channel,
            ActionStatus::Failed,
            format!("refused: no chat channels are configured (the policy asked for {channel:?})"),
        );
    };
    let ch = match notifier.channels().get(channel) {
        Ok(c) => c.clone(),
        Err(e) => return outcome(NOTIFY, channel, ActionStatus::Failed, format!("refused: {e}")),
    };
    let (rule, resource, version) = dedupe_parts(n, channel);
    match stage.ledger.should_send(&rule, &resource, &version, stage.dedupe_window).await {
        Ok(true) => {}
        Ok(false) => {
            return outcome(
                NOTIFY,
                channel,
                ActionStatus::Skipped,
                format!("already sent within the dedupe window ({rule}, {resource})"),
            );
        }
        // The ledger is down: better a duplicate message than a lost one.
        Err(e) => tracing::warn!(error = %e, "notification dedupe unavailable; sending anyway"),
    }
    let delivery = notifier.send(&ch, n).await;
    if !delivery.is_sent()
        && let Err(e) = stage.ledger.forget_send(&rule, &resource, &version).await
    {
        tracing::warn!(error = %e, "could not forget a failed send; the next attempt waits for the window");
    }
    delivery.outcome(channel)
}

/// A policy failure: an alert to every configured channel (deduplicated per policy
/// digest and event kind), and no remediation.
pub async fn policy_alert(
    stage: &ActStage,
    event: &Event,
    input: &PolicyInput,
    policy: Option<&PolicyRef>,
    error: &str,
) -> Vec<ActionOutcome> {
    let Some(notifier) = &stage.notifier else {
        return vec![outcome(
            NOTIFY,
            "",
            ActionStatus::Skipped,
            "policy failure not alerted: no chat channels are configured",
        )];
    };
    let name = policy.map(|p| format!("{} {}", p.name, p.version)).unwrap_or_else(|| "the policy".into());
    let text = format!(
        "{name} failed on {} event {}: {error}. Nothing was remediated (fail safe); fix or roll back the policy.",
        event.kind.name(),
        event.id
    );
    let mut n =
        Notification::from_input(input, Severity::High, format!("[high] cmkguard: policy failed ({name})"), text)
            .with_mode(stage.mode.as_str())
            .with_rule(format!("policy-error:{}", policy.map(|p| p.digest.as_str()).unwrap_or("unknown")));
    n.registry = None;
    let mut out = Vec::new();
    let names: Vec<String> = notifier.channels().iter().map(|c| c.name.clone()).collect();
    for channel in names {
        out.push(deliver(stage, &channel, &n).await);
    }
    out
}

//! End-to-end tests of the notify crate over loopback HTTP: payload shapes each service
//! accepts, delivery and retries against the local chat sink, signature checks, and
//! that webhook URLs never reach logs, reasons or `Debug` output.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use cmkguard_model::Severity;
use cmkguard_model::outcome::{ActionOutcome, ActionStatus};
use cmkguard_notify::notification::sample;
use cmkguard_notify::sink::{ChatSink, Failure};
use cmkguard_notify::{
    ChannelConfig, ChannelError, ChannelKind, Channels, Delivery, Notification, Notifier, RetryPolicy, slack, teams,
    webhook,
};
use proptest::prelude::*;
use serde_json::Value;

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()
}

/// Fast retries so the tests stay short; the budget still bounds everything.
fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(2),
        total_budget: Duration::from_secs(5),
    }
}

const HOOK_SECRET: &str = "hook-signing-secret-0123456789";

// ---------------------------------------------------------------- payload shapes

/// The Adaptive Card structure Teams checks before showing a card (schema 1.4 subset
/// that we use): typed elements, required properties, OpenUrl actions with https URLs.
fn assert_adaptive_card(card: &Value) {
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    assert_eq!(card["$schema"], "http://adaptivecards.io/schemas/adaptive-card.json");
    let body = card["body"].as_array().expect("body is an array");
    assert!(!body.is_empty());
    fn element(e: &Value) {
        match e["type"].as_str().expect("element has a type") {
            "TextBlock" => assert!(e["text"].is_string(), "TextBlock without text: {e}"),
            "Container" => e["items"].as_array().expect("Container.items").iter().for_each(element),
            "FactSet" => {
                for f in e["facts"].as_array().expect("FactSet.facts") {
                    assert!(f["title"].is_string() && f["value"].is_string(), "bad fact {f}");
                }
            }
            other => panic!("unexpected element type {other}"),
        }
        if let Some(style) = e.get("style") {
            let ok = ["default", "emphasis", "good", "attention", "warning", "accent"];
            assert!(ok.contains(&style.as_str().unwrap()), "bad style {style}");
        }
        if let Some(c) = e.get("color") {
            let ok = ["default", "dark", "light", "accent", "good", "warning", "attention"];
            assert!(ok.contains(&c.as_str().unwrap()), "bad color {c}");
        }
    }
    body.iter().for_each(element);
    for a in card["actions"].as_array().map(Vec::as_slice).unwrap_or_default() {
        assert_eq!(a["type"], "Action.OpenUrl");
        assert!(a["title"].is_string());
        assert!(a["url"].as_str().unwrap().starts_with("https://portal.azure.com/#@/"), "{a}");
    }
}

fn all_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn teams_payload_is_a_message_with_a_valid_adaptive_card() {
    let n = sample(now());
    let p = teams::payload(&n);
    assert_eq!(p["type"], "message");
    assert_eq!(p["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
    let card = &p["attachments"][0]["content"];
    assert_adaptive_card(card);
    // Header: severity-coloured container with the severity and the title.
    assert_eq!(card["body"][0]["type"], "Container");
    assert_eq!(card["body"][0]["style"], "attention");
    assert_eq!(card["body"][0]["items"][0]["text"], "HIGH · cmkguard");
    assert_eq!(card["body"][0]["items"][1]["text"], "Key acr-cmk expires in 10 days");
    // Facts: registry, key, expiry with days left, and what was done.
    let facts: Vec<(String, String)> =
        card["body"].as_array().unwrap().iter().find(|e| e["type"] == "FactSet").unwrap()["facts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["title"].as_str().unwrap().to_owned(), f["value"].as_str().unwrap().to_owned()))
            .collect();
    let fact = |t: &str| facts.iter().find(|(k, _)| k == t).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(fact("Registry"), "contosoprod");
    assert_eq!(fact("Key"), "acr-cmk (version 4f6c0e7a…)");
    assert_eq!(fact("Expires"), "2026-12-03 12:00 UTC (in 10 days)");
    assert_eq!(fact("Action"), "would do (monitor mode): rotate to the versionless key (rotate-registry-key)");
    // Buttons: registry and key blades.
    let actions = card["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2);
    assert!(
        actions[0]["url"].as_str().unwrap().ends_with("/providers/Microsoft.ContainerRegistry/registries/contosoprod")
    );
    assert!(
        actions[1]["url"].as_str().unwrap().contains("/asset/Microsoft_Azure_KeyVault/Key/https://kv-platform-prod")
    );
}

#[test]
fn slack_payload_is_block_kit_with_a_fallback() {
    let p = slack::payload(&sample(now()));
    assert_eq!(p["text"], "[HIGH] Key acr-cmk expires in 10 days — contosoprod");
    let blocks = p["blocks"].as_array().unwrap();
    let types: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["header", "context", "section", "section", "section", "actions"]);
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"].as_str().unwrap().ends_with("Key acr-cmk expires in 10 days"));
    let fields: Vec<&str> =
        blocks[3]["fields"].as_array().unwrap().iter().map(|f| f["text"].as_str().unwrap()).collect();
    assert_eq!(
        fields,
        [
            "*Registry*\ncontosoprod",
            "*Key*\nacr-cmk (version 4f6c0e7a…)",
            "*Expires*\n2026-12-03 12:00 UTC (in 10 days)"
        ]
    );
    assert!(blocks[4]["text"]["text"].as_str().unwrap().contains("*would do (monitor mode)* `rotate-registry-key`"));
    for b in blocks[5]["elements"].as_array().unwrap() {
        assert_eq!(b["type"], "button");
        assert!(b["action_id"].is_string() && b["url"].as_str().unwrap().starts_with("https://portal.azure.com/"));
    }
}

#[test]
fn webhook_payload_is_a_cloudevent() {
    let n = sample(now());
    let body = webhook::body(&n, "id-1").unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    for (k, want) in
        [("specversion", "1.0"), ("type", "com.cmkguard.notification"), ("source", "/cmkguard"), ("id", "id-1")]
    {
        assert_eq!(v[k], want, "{k}");
    }
    assert_eq!(v["time"], "2026-11-23T10:00:00Z");
    assert_eq!(v["data"]["title"], n.title);
    assert_eq!(v["data"]["days_left"], 10);
}

fn hostile(title: String, text: String, actions: usize) -> Notification {
    let mut n = sample(now());
    n.title = title;
    n.text = text;
    n.actions = (0..actions)
        .map(|i| ActionOutcome {
            action: "notify".into(),
            target: format!("t{i}"),
            status: ActionStatus::Failed,
            detail: "<!channel> *x* [y](https://evil.example)".into(),
        })
        .collect();
    n
}

#[test]
fn policy_text_cannot_inject_links_or_mentions() {
    let n = hostile("[click](https://evil.example) <!here>".into(), "<https://evil.example|docs> **now**".into(), 2);
    // Everything Slack parses as mrkdwn (the header is plain_text, shown verbatim).
    let mut p = slack::payload(&n);
    assert_eq!(p["blocks"][0]["text"]["type"], "plain_text");
    p["blocks"].as_array_mut().unwrap().remove(0);
    let s = all_text(&p);
    assert!(!s.contains("<!here>") && !s.contains("<!channel>") && !s.contains("<https://evil"), "{s}");
    let card = teams::card(&n);
    let t = all_text(&card);
    assert!(!t.contains("[click](") && !t.contains("**now**"), "{t}");
    assert_adaptive_card(&card);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a policy writes, the payloads stay within the services' limits and shapes.
    #[test]
    fn payloads_stay_within_limits(title in ".{0,400}", text in ".{0,5000}", actions in 0usize..12, sev in 0usize..5) {
        let mut n = hostile(title, text, actions);
        n.severity = Severity::ALL[sev];
        let s = slack::payload(&n);
        let blocks = s["blocks"].as_array().unwrap();
        prop_assert!(blocks.len() <= 50);
        prop_assert!(blocks[0]["text"]["text"].as_str().unwrap().chars().count() <= 150);
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() { prop_assert!(t.chars().count() <= 3000); }
            if let Some(f) = b["fields"].as_array() { prop_assert!(f.len() <= 10); }
        }
        let card = teams::card(&n);
        assert_adaptive_card(&card);
        prop_assert!(serde_json::to_vec(&teams::payload(&n)).unwrap().len() < 28 * 1024);
    }
}

// ---------------------------------------------------------------- delivery

async fn sink_with_channels() -> (ChatSink, Notifier) {
    let sink = ChatSink::start().await.unwrap();
    let chans = Channels::new(vec![
        sink.channel("ops", ChannelKind::Teams, None).unwrap(),
        sink.channel("dev", ChannelKind::Slack, None).unwrap(),
        sink.channel("hook", ChannelKind::Webhook, Some(HOOK_SECRET)).unwrap(),
    ])
    .unwrap();
    (sink, Notifier::new(chans, quick()).unwrap())
}

#[tokio::test]
async fn every_kind_is_delivered_and_webhooks_verify() {
    let (sink, notifier) = sink_with_channels().await;
    let n = sample(now());
    for ch in ["ops", "dev", "HOOK"] {
        assert_eq!(notifier.notify(ch, &n).await.unwrap(), Delivery::Sent { attempts: 1 }, "{ch}");
    }
    let got = sink.received();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.title().as_deref(), Some("Key acr-cmk expires in 10 days"), "{:?}", r.kind);
    }
    assert_eq!(got[2].kind, ChannelKind::Webhook);
    assert_eq!(got[2].signature_valid, Some(true));
    assert!(got[0].adaptive_card().is_some());
    assert!(sink.rejected().is_empty(), "{:?}", sink.rejected());
}

#[tokio::test]
async fn unknown_channel_is_an_error_for_the_caller() {
    let (sink, notifier) = sink_with_channels().await;
    let e = notifier.notify("pager", &sample(now())).await.unwrap_err();
    assert_eq!(e, ChannelError::Unknown("pager".into()));
    assert_eq!(sink.requests(), 0);
}

#[tokio::test]
async fn server_errors_are_retried_until_the_sink_recovers() {
    let (sink, notifier) = sink_with_channels().await;
    sink.fail_next(2, Failure::ServerError);
    let d = notifier.notify("ops", &sample(now())).await.unwrap();
    assert_eq!(d, Delivery::Sent { attempts: 3 });
    assert_eq!(sink.requests(), 3);
    assert_eq!(sink.received().len(), 1, "one message despite the retries");
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let (sink, notifier) = sink_with_channels().await;
    sink.fail_next(1, Failure::Throttle { retry_after_secs: 1 });
    assert_eq!(notifier.notify("dev", &sample(now())).await.unwrap(), Delivery::Sent { attempts: 2 });
    // Re-signed on retry: the webhook's second attempt verifies too.
    sink.fail_next(1, Failure::ServerError);
    assert_eq!(notifier.notify("hook", &sample(now())).await.unwrap(), Delivery::Sent { attempts: 2 });
    assert_eq!(sink.received_on("hook")[0].signature_valid, Some(true));
}

#[tokio::test]
async fn a_retry_after_beyond_the_budget_gives_up_at_once() {
    let (sink, notifier) = sink_with_channels().await;
    sink.fail_next(5, Failure::Throttle { retry_after_secs: 3600 });
    match notifier.notify("ops", &sample(now())).await.unwrap() {
        Delivery::Failed { reason, attempts } => {
            assert_eq!(attempts, 1);
            assert!(reason.contains("429") && reason.contains("time budget"), "{reason}");
        }
        d => panic!("expected a failure, got {d:?}"),
    }
}

#[tokio::test]
async fn a_channel_that_stays_down_fails_after_max_attempts() {
    let (sink, notifier) = sink_with_channels().await;
    sink.fail_for(Duration::from_secs(60), Failure::ServerError);
    let d = notifier.notify("dev", &sample(now())).await.unwrap();
    match &d {
        Delivery::Failed { reason, attempts } => {
            assert_eq!(*attempts, 4);
            assert!(reason.contains("HTTP 500"), "{reason}");
        }
        d => panic!("expected a failure, got {d:?}"),
    }
    assert_eq!(sink.requests(), 4);
    assert_eq!(d.outcome("dev").status, ActionStatus::Failed);
    sink.recover();
    assert!(notifier.notify("dev", &sample(now())).await.unwrap().is_sent());
}

#[tokio::test]
async fn a_bad_signature_is_refused_and_not_retried() {
    let sink = ChatSink::start().await.unwrap();
    // The sink knows one secret, the sender signs with another.
    let mut ch = sink.channel("hook", ChannelKind::Webhook, Some(HOOK_SECRET)).unwrap();
    ch.secret = Some(cmkguard_notify::SigningKey::new("a-different-secret-0123").unwrap());
    let notifier = Notifier::new(Channels::new(vec![ch]).unwrap(), quick()).unwrap();
    match notifier.notify("hook", &sample(now())).await.unwrap() {
        Delivery::Failed { reason, attempts } => {
            assert_eq!(attempts, 1, "a 401 is not retried");
            assert!(reason.contains("401"), "{reason}");
        }
        d => panic!("expected a failure, got {d:?}"),
    }
    assert!(sink.received().is_empty());
    let rej = sink.rejected();
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].status, 401);
    assert!(rej[0].reason.contains("signature does not match"), "{:?}", rej[0]);
}

#[tokio::test]
async fn a_silent_receiver_times_out_within_the_budget() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let ch = ChannelConfig::new("slow", ChannelKind::Slack, &format!("http://{addr}/services/T/B/SLOWSECRET"), None)
        .unwrap();
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_millis(200),
        // Generous, so a loaded CI machine still gets all three attempts in.
        total_budget: Duration::from_secs(10),
    };
    let notifier = Notifier::new(Channels::new(vec![ch]).unwrap(), policy).unwrap();
    match notifier.notify("slow", &sample(now())).await.unwrap() {
        Delivery::Failed { reason, attempts } => {
            assert_eq!(attempts, 3);
            assert!(reason.contains("timed out"), "{reason}");
            assert!(!reason.contains("SLOWSECRET"), "{reason}");
        }
        d => panic!("expected a failure, got {d:?}"),
    }
    hold.abort();
}

// ---------------------------------------------------------------- redaction

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn webhook_urls_never_reach_logs_reasons_or_debug() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sink = ChatSink::start().await.unwrap();
    sink.channel("ops", ChannelKind::Slack, None).unwrap();
    // A URL whose path and query carry the credential, as Slack's and Teams' do.
    let secret_url = format!("{}?sig=QUERYSECRET", sink.url(ChannelKind::Slack, "ops"));
    let good = ChannelConfig::new("ops", ChannelKind::Slack, &secret_url, None).unwrap();
    let refused = ChannelConfig::new(
        "gone",
        ChannelKind::Teams,
        "http://127.0.0.1:1/workflows/PATHSECRET/invoke?sig=QUERYSECRET",
        None,
    )
    .unwrap();
    let notifier = Notifier::new(Channels::new(vec![good.clone(), refused.clone()]).unwrap(), quick()).unwrap();

    sink.fail_next(1, Failure::ServerError);
    let sent = notifier.notify("ops", &sample(now())).await.unwrap();
    assert_eq!(sent, Delivery::Sent { attempts: 2 });
    let failed = notifier.notify("gone", &sample(now())).await.unwrap();
    assert!(!failed.is_sent());

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("notification sent") && text.contains("retrying"), "logs were captured: {text}");
    assert!(text.contains("http://127.0.0.1:1/…"), "the host is shown: {text}");
    let shown = [
        text,
        format!("{failed:?}"),
        format!("{:?}", failed.outcome("gone")),
        format!("{good:?} {refused:?} {notifier:?}"),
    ];
    for s in shown {
        for secret in ["QUERYSECRET", "PATHSECRET", "/slack/ops", "/workflows/"] {
            assert!(!s.contains(secret), "{secret} leaked into: {s}");
        }
    }
}

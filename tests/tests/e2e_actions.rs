//! The real `cmkguard serve` process against the real `azsim` process and a chat sink,
//! issue 6's "Show" list: each test asserts on Azure (azsim's ARM state and call counts),
//! the ledger (`cmkguard audit … --output json`) and the chat messages received.

use cmkguard_e2e::{ChatSink, Guard, GuardOptions, Sim, chat_messages, registry_id, registry_write_event, scenario};
use serde_json::Value;

const PINNED_V0: &str = "482c3c34119042a9b7c998c0f70ea0a1";

fn actions(report: &Value) -> Vec<Value> {
    report["actions"].as_array().cloned().unwrap_or_default()
}

fn has(report: &Value, action: &str, status: &str) -> bool {
    actions(report).iter().any(|a| a["action"] == action && a["status"] == status)
}

async fn setup(mode: &str) -> (Sim, ChatSink, Guard) {
    let sim = Sim::start(&scenario("demo.json"), &[]);
    let sink = ChatSink::start().await.expect("chat sink");
    let guard = Guard::start(&sim, GuardOptions::new(mode).teams_channel(&sink, "ops"));
    (sim, sink, guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_without_cmk_is_reported_and_notified_and_nothing_changes() {
    let (sim, sink, guard) = setup("enforce").await;
    let id = registry_id("rg-registries", "acrnocmk");
    let before = sim.registry(&id).await;
    let event = registry_write_event("e2e-nocmk-1", &id);
    let report = guard.deliver(&event).await;
    assert_eq!(report["decided"]["decision"]["findings"][0]["rule_id"], "CMK001", "{report}");
    assert!(has(&report, "notify", "done"), "{report}");
    assert!(actions(&report).iter().all(|a| a["action"] != "rotate-registry-key"), "{report}");
    // The redelivery repeats nothing.
    let again = guard.deliver(&event).await;
    assert_eq!(actions(&again).len(), 1, "{again}");
    assert_eq!(again["actions"][0]["action"], "redelivery", "{again}");
    // Azure: unchanged, never written.
    assert_eq!(sim.registry(&id).await, before);
    assert_eq!(sim.calls("arm.registry.patch").await + sim.calls("arm.registry.put").await, 0);
    // Chat: one message, about that registry.
    let got = chat_messages(&sink, "ops", 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].body.to_string().contains("acrnocmk"), "{}", got[0].body);
    // Ledger: the record, readable by the CLI.
    let rec = guard.audit_show("e2e-nocmk-1");
    assert_eq!(rec["eventId"], "e2e-nocmk-1", "{rec}");
    assert_eq!(rec["mode"], "enforce", "{rec}");
    assert!(rec.to_string().contains("CMK001"), "{rec}");
}

fn notified(report: &Value) -> usize {
    actions(report).iter().filter(|a| a["action"] == "notify" && a["status"] == "done").count()
}

fn record_actions(rec: &Value) -> Vec<Value> {
    rec["actions"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_key_version_rotates_pinned_registries_leaves_versionless_alone_and_own_write_is_a_no_op() {
    let (sim, sink, guard) = setup("enforce").await;
    let pinned = registry_id("rg-registries", "acrpinned");
    let auto = registry_id("rg-registries", "acrauto");
    assert!(sim.registry_key(&pinned).await.ends_with(PINNED_V0));
    let auto_before = sim.registry(&auto).await;
    let version = sim.rotate_key("kv-demo", "cmk-pinned").await;
    let event = sim.last_event("Microsoft.KeyVault.KeyNewVersionCreated", "cmk-pinned").await.expect("azsim event");
    let report = guard.deliver(&event).await;
    assert!(has(&report, "rotate-registry-key", "done"), "{report}\n{}", guard.server.logs());
    // Azure: the pinned registry moved off the old version (to the new one, or versionless
    // when the policy prefers that); the versionless registry was not touched.
    let now = sim.registry_key(&pinned).await;
    assert!(!now.contains(PINNED_V0), "{now}");
    assert!(now.ends_with(&version) || now.ends_with("/keys/cmk-pinned"), "{now}");
    assert_eq!(sim.registry(&auto).await, auto_before);
    assert_eq!(sim.calls("arm.registry.patch").await, 1);
    // Ledger: the rotation is recorded under the event id.
    let rec = guard.audit_show(event["id"].as_str().unwrap());
    assert!(
        record_actions(&rec).iter().any(|a| a["action"] == "rotate-registry-key" && a["status"] == "done"),
        "{rec}"
    );
    // Chat: exactly what the policy asked for and the report says was sent.
    let sent = notified(&report);
    assert_eq!(chat_messages(&sink, "ops", sent).await.len(), sent);

    // No loop: the rotation's own ResourceWriteSuccess comes back through serve, is
    // evaluated, finds the registry as desired, and changes nothing.
    let own = sim.last_event("Microsoft.Resources.ResourceWriteSuccess", "acrpinned").await.expect("own write event");
    let key_after = sim.registry_key(&pinned).await;
    let again = guard.deliver(&own).await;
    assert_eq!(again["decided"]["outcome"], "decision", "{again}");
    assert!(
        actions(&again).iter().all(|a| a["action"] != "rotate-registry-key" || a["status"] == "skipped"),
        "{again}"
    );
    assert_eq!(sim.calls("arm.registry.patch").await, 1, "no second PATCH: no loop");
    assert_eq!(sim.registry_key(&pinned).await, key_after);
    assert_eq!(guard.audit_show(own["id"].as_str().unwrap())["eventId"], own["id"]);
    let total = sent + notified(&again);
    assert_eq!(chat_messages(&sink, "ops", total).await.len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_three_times_and_a_redelivery_notify_once() {
    let (sim, sink, guard) = setup("enforce").await;
    let mut ids = Vec::new();
    let mut reports = Vec::new();
    for _ in 0..3 {
        let ev = sim.emit_key_event("kv-demo", "cmk-expiring", "Microsoft.KeyVault.KeyNearExpiry").await;
        assert_eq!(ev["eventType"], "Microsoft.KeyVault.KeyNearExpiry", "{ev}");
        ids.push(ev["id"].as_str().unwrap().to_owned());
        reports.push(guard.deliver(&ev).await);
        if reports.len() == 1 {
            // Event Grid redelivers the first one (same id).
            let again = guard.deliver(&ev).await;
            assert_eq!(actions(&again).len(), 1, "{again}");
            assert_eq!(again["actions"][0]["action"], "redelivery", "{again}");
        }
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct event ids");
    assert_eq!(notified(&reports[0]), 1, "{}", reports[0]);
    for r in &reports[1..] {
        assert!(has(r, "notify", "skipped"), "deduplicated: {r}");
        assert_eq!(notified(r), 0, "{r}");
    }
    // Chat: one message, about the expiring key.
    let got = chat_messages(&sink, "ops", 2).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].body.to_string().contains("cmk-expiring"), "{}", got[0].body);
    // Ledger: one record per event id, each readable.
    let list = guard.audit_list();
    for id in &ids {
        assert_eq!(list.iter().filter(|r| r["eventId"] == id.as_str()).count(), 1, "{id}: {list:?}");
    }
    // Azure: whatever the first event changed (the policy may move the registry pinned to
    // this key to its versionless id) happened once; the later events find it as desired.
    let rotations = |r: &Value| {
        actions(r).iter().filter(|a| a["action"] == "rotate-registry-key" && a["status"] == "done").count() as u64
    };
    assert_eq!(sim.calls("arm.registry.patch").await, rotations(&reports[0]));
    for r in &reports[1..] {
        assert_eq!(rotations(r), 0, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_failure_changes_nothing_and_records_why() {
    // e2e-preflight.json: demo + acrpinnedweak, pinned to a key in a vault without purge
    // protection. A new version makes the policy ask for a rotation; preflight refuses it.
    let sim = Sim::start(&scenario("e2e-preflight.json"), &[]);
    let sink = ChatSink::start().await.expect("chat sink");
    let guard = Guard::start(&sim, GuardOptions::new("enforce").teams_channel(&sink, "ops"));
    let id = registry_id("rg-registries", "acrpinnedweak");
    let before = sim.registry(&id).await;
    sim.rotate_key("kv-nopurge", "cmk-weak").await;
    let event = sim.last_event("Microsoft.KeyVault.KeyNewVersionCreated", "cmk-weak").await.expect("azsim event");
    let report = guard.deliver(&event).await;
    let rotation = actions(&report)
        .into_iter()
        .find(|a| a["action"] == "rotate-registry-key")
        .unwrap_or_else(|| panic!("the policy asked for a rotation: {report}"));
    assert_eq!(rotation["status"], "failed", "{report}");
    assert!(rotation["detail"].as_str().unwrap().contains("purge protection"), "{rotation}");
    // Azure: unchanged, never written.
    assert_eq!(sim.registry(&id).await, before);
    assert_eq!(sim.calls("arm.registry.patch").await, 0);
    // Ledger: the refusal and its reason.
    let rec = guard.audit_show(event["id"].as_str().unwrap());
    let refused = record_actions(&rec).into_iter().find(|a| a["action"] == "rotate-registry-key").expect("recorded");
    assert_eq!(refused["status"], "failed", "{rec}");
    assert!(refused["detail"].as_str().unwrap().contains("preflight failed"), "{rec}");
    // Chat: what the report says was sent (the vault finding), nothing else.
    let sent = notified(&report);
    assert_eq!(chat_messages(&sink, "ops", sent).await.len(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_trap_changes_nothing_alerts_chat_and_records_the_error() {
    let sim = Sim::start(&scenario("demo.json"), &[]);
    let sink = ChatSink::start().await.expect("chat sink");
    let hostile = cmkguard_e2e::hostile_policy("deep-recursion");
    let guard = Guard::start(&sim, GuardOptions::new("enforce").teams_channel(&sink, "ops").policy(hostile));
    let pinned = registry_id("rg-registries", "acrpinned");
    let before = sim.registry(&pinned).await;
    sim.rotate_key("kv-demo", "cmk-pinned").await;
    let event = sim.last_event("Microsoft.KeyVault.KeyNewVersionCreated", "cmk-pinned").await.expect("azsim event");
    // A policy error is not something a redelivery fixes: answered 200, recorded.
    let report = guard.deliver(&event).await;
    assert_eq!(report["decided"]["outcome"], "policy-error", "{report}");
    assert!(has(&report, "remediation", "skipped"), "{report}");
    assert!(actions(&report).iter().all(|a| a["action"] != "rotate-registry-key"), "{report}");
    // Azure: untouched.
    assert_eq!(sim.registry(&pinned).await, before);
    assert_eq!(sim.calls("arm.registry.patch").await, 0);
    // Chat: the alert.
    let got = chat_messages(&sink, "ops", 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].title().unwrap_or_default().contains("policy failed"), "{:?}", got[0].title());
    // Ledger: the record carries the policy error.
    let rec = guard.audit_show(event["id"].as_str().unwrap());
    assert_eq!(rec["decided"]["outcome"], "policy-error", "{rec}");
    assert!(!rec["decided"]["error"].as_str().unwrap_or_default().is_empty(), "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_changes_nothing_and_records_would_do() {
    let (sim, sink, guard) = setup("monitor").await;
    let pinned = registry_id("rg-registries", "acrpinned");
    let before = sim.registry(&pinned).await;
    sim.rotate_key("kv-demo", "cmk-pinned").await;
    let event = sim.last_event("Microsoft.KeyVault.KeyNewVersionCreated", "cmk-pinned").await.expect("azsim event");
    let report = guard.deliver(&event).await;
    assert!(has(&report, "rotate-registry-key", "would-do"), "{report}");
    // Azure: untouched.
    assert_eq!(sim.registry(&pinned).await, before);
    assert_eq!(sim.calls("arm.registry.patch").await, 0);
    // Ledger: mode monitor, the rotation as "would do".
    let rec = guard.audit_show(event["id"].as_str().unwrap());
    assert_eq!(rec["mode"], "monitor", "{rec}");
    assert!(
        record_actions(&rec).iter().any(|a| a["action"] == "rotate-registry-key" && a["status"] == "would-do"),
        "{rec}"
    );
    let sent = notified(&report);
    assert_eq!(chat_messages(&sink, "ops", sent).await.len(), sent);
}

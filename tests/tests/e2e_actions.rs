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
    let _ = PINNED_V0;
}

//! The act stage against azsim in-process (real ARM / Key Vault / Resource Graph
//! protocols), a SQLite ledger in a temp dir and the local chat sink: remediation,
//! monitor mode, preflight refusals, redelivery, dedupe, policy failures, no loops.
#![cfg(feature = "demo")]

use std::sync::Arc;
use std::time::Duration;

use azsim::{Azsim, Options, Running};
use cmkguard::act::ActStage;
use cmkguard::cli::demo;
use cmkguard::config::Mode;
use cmkguard::pipeline::{Act, ActionStatus, Decided, Pipeline, PolicyRef};
use cmkguard_ledger::Ledger;
use cmkguard_model::{Action, Decision, Event, EventKind, RegistryWrite, ResourceId, RotateTarget};
use cmkguard_notify::sink::ChatSink;
use serde_json::Value;

struct Env {
    sim: Running,
    sink: ChatSink,
    ledger: Arc<dyn Ledger>,
    pipeline: Pipeline,
    act: ActStage,
    _dir: tempfile::TempDir,
}

async fn env(mode: Mode) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = Azsim::start(demo::scenario().unwrap(), Options::default()).await.unwrap();
    let sink = ChatSink::start().await.unwrap();
    let db = dir.path().join("ledger.db");
    let mut config = demo::local_config(mode, &db).unwrap();
    config.channels = vec![demo::sink_channel(&sink, "ops")];
    let ledger = cmkguard_ledger::open(&format!("sqlite:{}", db.display()), None).await.unwrap();
    let clients = demo::azsim_clients(&sim, dir.path()).unwrap();
    let pipeline = demo::pipeline(&config, clients.clone(), ledger.clone()).await.unwrap();
    let act = ActStage::new(&config, ledger.clone(), Some(clients)).unwrap();
    Env { sim, sink, ledger, pipeline, act, _dir: dir }
}

/// The decoded domain event for an Event Grid event azsim produced.
fn decode(ev: &Value) -> Event {
    let body = serde_json::to_vec(&serde_json::json!([ev])).unwrap();
    match cmkguard::events::decode_events_json(&body).expect("decodes").into_iter().next() {
        Some(cmkguard::events::Decoded::Event(e)) => *e,
        other => panic!("not an event cmkguard acts on: {other:?}"),
    }
}

fn key_of(sim: &Running, name: &str) -> String {
    sim.registry(name).unwrap()["properties"]["encryption"]["keyVaultProperties"]["keyIdentifier"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn last_event(sim: &Running) -> Value {
    sim.events().last().cloned().expect("an event")
}

fn write_event(sim: &Running, name: &str) -> Event {
    let id = ResourceId::parse(&sim.registry_id(name).unwrap()).unwrap();
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        time: sim.now(),
        subject: id.as_str().to_owned(),
        event_type: "Microsoft.Resources.ResourceWriteSuccess".into(),
        kind: EventKind::RegistryWritten(RegistryWrite { registry: id, correlation_id: None, caller: None }),
    }
}

fn policy() -> PolicyRef {
    PolicyRef { name: "test".into(), version: "1".into(), digest: "00".repeat(32) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_rotates_pinned_registries_and_leaves_versionless_alone() {
    let e = env(Mode::Enforce).await;
    let auto_before = key_of(&e.sim, "acrauto");
    e.sim.rotate_key("kv-demo", "cmk-pinned");
    let report = e.pipeline.handle(&decode(&last_event(&e.sim))).await.unwrap();
    let rot: Vec<_> = report.actions.iter().filter(|a| a.action == "rotate-registry-key").collect();
    assert_eq!(rot.len(), 1, "{:?}", report.actions);
    assert_eq!(rot[0].status, ActionStatus::Done, "{:?}", rot[0]);
    assert!(!key_of(&e.sim, "acrpinned").contains("482c3c34119042a9b7c998c0f70ea0a1"));
    assert_eq!(key_of(&e.sim, "acrauto"), auto_before);
    // The record is durable and names the policy.
    let rec = e.ledger.get(&report.event_id).await.unwrap().expect("audit record");
    assert_eq!(rec.mode, "enforce");
    assert_eq!(rec.policy().unwrap().name, "cmkguard-default");

    // cmkguard's own PATCH comes back: evaluated, nothing to do.
    let own = e
        .sim
        .events()
        .into_iter()
        .rev()
        .find(|v| v["eventType"] == "Microsoft.Resources.ResourceWriteSuccess")
        .unwrap();
    let patches = e.sim.calls(azsim::Route::ArmRegistryPatch);
    let again = e.pipeline.handle(&decode(&own)).await.unwrap();
    assert!(
        again.actions.iter().all(|a| a.action != "rotate-registry-key" || a.status == ActionStatus::Skipped),
        "{:?}",
        again.actions
    );
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), patches, "no second PATCH: no loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_expiry_delivered_three_times_notifies_once_and_acts_once() {
    let e = env(Mode::Enforce).await;
    e.sim.emit_key_event("Microsoft.KeyVault.KeyNearExpiry", "kv-demo", "cmk-expiring");
    let ev = decode(&last_event(&e.sim));
    let first = e.pipeline.handle(&ev).await.unwrap();
    assert!(
        first.actions.iter().any(|a| a.action == "notify" && a.status == ActionStatus::Done),
        "{:?}",
        first.actions
    );
    let patches = e.sim.calls(azsim::Route::ArmRegistryPatch);
    for _ in 0..2 {
        let r = e.pipeline.handle(&ev).await.unwrap();
        assert_eq!(r.actions.len(), 1);
        assert_eq!(r.actions[0].action, "redelivery");
    }
    // A new event id about the same key version (the next day's event) is deduplicated.
    e.sim.emit_key_event("Microsoft.KeyVault.KeyNearExpiry", "kv-demo", "cmk-expiring");
    let next = e.pipeline.handle(&decode(&last_event(&e.sim))).await.unwrap();
    assert!(
        next.actions.iter().any(|a| a.action == "notify" && a.status == ActionStatus::Skipped),
        "{:?}",
        next.actions
    );
    assert_eq!(e.sink.received_on("ops").len(), 1);
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), patches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_changes_nothing_and_records_would_do() {
    let e = env(Mode::Monitor).await;
    e.sim.rotate_key("kv-demo", "cmk-pinned");
    let before = key_of(&e.sim, "acrpinned");
    let report = e.pipeline.handle(&decode(&last_event(&e.sim))).await.unwrap();
    assert!(report.actions.iter().any(|a| a.status == ActionStatus::WouldDo), "{:?}", report.actions);
    assert_eq!(key_of(&e.sim, "acrpinned"), before);
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 0);
    let rec = e.ledger.get(&report.event_id).await.unwrap().unwrap();
    assert_eq!(rec.mode, "monitor");
    assert!(rec.actions.iter().any(|a| a.status == ActionStatus::WouldDo));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_failure_changes_nothing_and_records_why() {
    let e = env(Mode::Enforce).await;
    // acrweakvault's vault has no purge protection: a rotation must be refused.
    let ev = write_event(&e.sim, "acrweakvault");
    let input = e.pipeline.enrich.enrich(&ev, e.sim.now()).await.unwrap();
    let key = input.key.as_ref().unwrap().key_id.clone();
    let decided = Decided::Decision {
        policy: policy(),
        decision: Decision {
            findings: vec![],
            actions: vec![Action::RotateRegistryKey {
                registry: input.registries[0].id.clone(),
                target: RotateTarget::KeyId(key),
            }],
        },
    };
    let before = key_of(&e.sim, "acrweakvault");
    let out = e.act.act(&ev, &input, &decided).await.unwrap();
    assert_eq!(out[0].status, ActionStatus::Failed, "{out:?}");
    assert!(out[0].detail.contains("purge protection"), "{}", out[0].detail);
    assert_eq!(key_of(&e.sim, "acrweakvault"), before);
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 0);
    let rec = e.ledger.get(&ev.id).await.unwrap().unwrap();
    assert!(rec.actions[0].detail.contains("preflight failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_error_alerts_and_changes_nothing() {
    let e = env(Mode::Enforce).await;
    let ev = write_event(&e.sim, "acrpinned");
    let input = e.pipeline.enrich.enrich(&ev, e.sim.now()).await.unwrap();
    let decided = Decided::PolicyError { policy: Some(policy()), error: "trap: unreachable".into() };
    let out = e.act.act(&ev, &input, &decided).await.unwrap();
    assert!(out.iter().any(|a| a.action == "notify" && a.status == ActionStatus::Done), "{out:?}");
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 0);
    let got = e.sink.wait_for(1, Duration::from_secs(5)).await;
    assert!(got[0].title().unwrap_or_default().contains("policy failed"), "{:?}", got[0].title());
    assert!(e.ledger.get(&ev.id).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_channel_and_unlisted_registry_are_refused_and_recorded() {
    let e = env(Mode::Enforce).await;
    let ev = write_event(&e.sim, "acrpinned");
    let input = e.pipeline.enrich.enrich(&ev, e.sim.now()).await.unwrap();
    let decided = Decided::Decision {
        policy: policy(),
        decision: Decision {
            findings: vec![],
            actions: vec![
                Action::RotateRegistryKey {
                    registry: e.sim.registry_id("acrauto").unwrap(),
                    target: RotateTarget::Versionless,
                },
                Action::Notify {
                    channel: "nowhere".into(),
                    severity: cmkguard_model::Severity::High,
                    title: "t".into(),
                    text: "x".into(),
                },
            ],
        },
    };
    let out = e.act.act(&ev, &input, &decided).await.unwrap();
    assert_eq!(out[0].status, ActionStatus::Failed);
    assert!(out[0].detail.contains("not in the policy's input"), "{}", out[0].detail);
    assert_eq!(out[1].status, ActionStatus::Failed);
    assert!(out[1].detail.contains("nowhere"), "{}", out[1].detail);
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 0);
}

/// Found by the fault-injection soak: facts read before another event moved the registry
/// onto a newer version must not move it back to the version they called current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_facts_never_move_a_registry_back_to_an_older_version() {
    let e = env(Mode::Enforce).await;
    e.sim.rotate_key("kv-demo", "cmk-pinned");
    let ev = decode(&last_event(&e.sim));
    let stale = e.pipeline.enrich.enrich(&ev, e.sim.now()).await.unwrap();
    // A newer version appears before this event gets to act.
    e.sim.rotate_key("kv-demo", "cmk-pinned");
    let decided = Decided::Decision {
        policy: policy(),
        decision: Decision {
            findings: vec![],
            actions: vec![Action::RotateRegistryKey {
                registry: e.sim.registry_id("acrpinned").unwrap(),
                target: RotateTarget::LatestVersion,
            }],
        },
    };
    let out = e.act.act(&ev, &stale, &decided).await.unwrap();
    assert_eq!(out[0].status, ActionStatus::Skipped, "{out:?}");
    assert!(out[0].detail.contains("newer version"), "{}", out[0].detail);
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_rotation_is_retryable_and_resumes_on_redelivery() {
    let e = env(Mode::Enforce).await;
    e.sim.rotate_key("kv-demo", "cmk-pinned");
    let ev = decode(&last_event(&e.sim));
    e.sim.fail_next(azsim::Route::ArmRegistryPatch, 50, 503, None);
    let err = e.pipeline.handle(&ev).await.unwrap_err();
    assert_eq!(err.class, cmkguard::pipeline::ErrorClass::Retryable, "{err}");
    e.sim.clear_faults();
    let report = e.pipeline.handle(&ev).await.unwrap();
    assert!(
        report.actions.iter().any(|a| a.action == "rotate-registry-key" && a.status == ActionStatus::Done),
        "{:?}",
        report.actions
    );
}

/// Found by the fault-injection soak: a redelivery decides afresh, and a change an earlier
/// attempt made may no longer be asked for (the registry is already as desired). It still
/// belongs in the event's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_by_an_earlier_attempt_stays_in_the_record() {
    let e = env(Mode::Enforce).await;
    e.sim.rotate_key("kv-demo", "cmk-pinned");
    let ev = decode(&last_event(&e.sim));
    // An earlier attempt rotated another registry, checkpointed it, and was interrupted.
    let earlier = cmkguard_ledger::ActionOutcome {
        action: "rotate-registry-key".into(),
        target: "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/acrearlier".into(),
        status: ActionStatus::Done,
        detail: "rotated acrearlier from v1 to v2".into(),
    };
    let cmkguard_ledger::Claim::New(ticket) = e.ledger.claim(&ev.id, Duration::from_secs(60)).await.unwrap() else {
        panic!("a new event id")
    };
    let ticket = e.ledger.checkpoint(&ticket, std::slice::from_ref(&earlier), Duration::from_secs(60)).await.unwrap();
    e.ledger.abandon(&ticket).await.unwrap();

    let report = e.pipeline.handle(&ev).await.unwrap();
    let record = e.ledger.get(&ev.id).await.unwrap().expect("recorded");
    for actions in [&report.actions, &record.actions] {
        let kept = actions.iter().find(|a| a.target == earlier.target).unwrap_or_else(|| panic!("{actions:?}"));
        assert_eq!(kept.status, ActionStatus::Done);
        assert!(kept.detail.contains("earlier attempt"), "{}", kept.detail);
        assert!(
            actions.iter().any(|a| a.target.ends_with("/acrpinned") && a.status == ActionStatus::Done),
            "{actions:?}"
        );
    }
}

/// Found by the fault-injection soak: a handler killed (SIGKILL) while it polled an
/// accepted rotation lost the operation, and the registry stayed `Updating` with no record
/// of the change. Now the operation is parked before it is polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_interrupted_while_polling_stays_parked_and_is_finished_later() {
    let e = env(Mode::Enforce).await;
    let before = key_of(&e.sim, "acrpinned");
    e.sim.rotate_key("kv-demo", "cmk-pinned");
    let ev = decode(&last_event(&e.sim));
    // ARM accepts the PATCH; the status poll hangs, and the invocation dies mid-poll (its
    // future is dropped, as its process would be killed).
    e.sim.set_latency(azsim::Route::ArmOperationStatus, Duration::from_secs(60));
    let interrupted = tokio::time::timeout(Duration::from_secs(3), e.pipeline.handle(&ev)).await;
    assert!(interrupted.is_err(), "the invocation should still be polling: {interrupted:?}");
    e.sim.clear_faults();
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 1);
    let parked = e.ledger.list_pending(None).await.unwrap();
    assert_eq!(parked.len(), 1, "the accepted rotation is in the ledger: {parked:?}");
    assert_eq!(parked[0].event_id, ev.id);
    // The sweep (or the next event on the registry) finishes it; nothing is PATCHed again.
    // (azsim answers InProgress to the first poll, as ARM may.)
    let mut stats = Vec::new();
    for _ in 0..5 {
        stats.push(cmkguard::act::rotate::finish_pending(&e.act).await);
        if stats.last().is_some_and(|s| s.finished == 1) {
            break;
        }
    }
    assert_eq!(stats.last().map(|s| s.finished), Some(1), "{stats:?}");
    assert!(e.ledger.list_pending(None).await.unwrap().is_empty());
    assert_ne!(key_of(&e.sim, "acrpinned"), before);
    assert_eq!(e.sim.registry("acrpinned").unwrap()["properties"]["provisioningState"], "Succeeded");
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 1, "no second rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_evaluates_every_registry_in_monitor_mode_and_changes_nothing() {
    let e = env(Mode::Monitor).await;
    let clients = demo::azsim_clients(&e.sim, e._dir.path()).unwrap();
    let sweeper =
        cmkguard::sweep::Sweeper { clients, act: e.act.clone(), subscriptions: vec![], settings: "{}".into() };
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let gets = e.sim.calls(azsim::Route::ArmRegistryGet);
    let summary = sweeper
        .run(&e.pipeline, |_, _| {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!(summary.registries, e.sim.registry_count());
    assert_eq!(seen.into_inner(), summary.registries);
    // acrnocmk (no CMK) and acrweakvault (no purge protection) have findings at least.
    assert!(summary.findings.values().sum::<usize>() >= 2, "{summary:?}");
    assert!(summary.compliant < summary.registries, "{summary:?}");
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 0);
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryGet), gets, "facts come from the Resource Graph rows");
    assert!(summary.table().contains("compliant"));
    // Every registry has its own audit record for this run.
    let id = format!("sweep:{}:{}", summary.run_id, e.sim.registry_id("acrnocmk").unwrap().to_ascii_lowercase());
    assert_eq!(e.ledger.get(&id).await.unwrap().unwrap().mode, "monitor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_on_one_registry_never_both_rotate_it() {
    let e = env(Mode::Enforce).await;
    let before = key_of(&e.sim, "acrpinned");
    e.sim.rotate_key("kv-demo", "cmk-pinned");
    let first = decode(&last_event(&e.sim));
    // Two deliveries with different ids (e.g. the key event and a sweep's), at once, with
    // a slow PATCH so they overlap while the registry is being changed.
    let mut second = first.clone();
    second.id = format!("{}-other", first.id);
    e.sim.set_latency(azsim::Route::ArmRegistryPatch, Duration::from_millis(500));
    let (a, b) = tokio::join!(e.pipeline.handle(&first), e.pipeline.handle(&second));
    e.sim.clear_faults();
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 1, "exactly one of them changed the registry");
    let acted = [&a, &b]
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flat_map(|r| r.actions.iter())
        .filter(|o| o.action == "rotate-registry-key" && matches!(o.status, ActionStatus::Done | ActionStatus::Pending))
        .count();
    assert_eq!(acted, 1, "{a:?}\n{b:?}");
    // The other one was told to come back later (lease held) or found nothing to do.
    for r in [&a, &b] {
        match r {
            Err(err) => assert_eq!(err.class, cmkguard::pipeline::ErrorClass::Retryable, "{err}"),
            Ok(report) => assert!(
                report.actions.iter().all(|o| o.action != "rotate-registry-key"
                    || matches!(o.status, ActionStatus::Done | ActionStatus::Pending | ActionStatus::Skipped)),
                "{report:?}"
            ),
        }
    }
    assert_ne!(key_of(&e.sim, "acrpinned"), before);
    // A redelivery of the loser after the winner finished changes nothing either.
    let retry = e.pipeline.handle(&second).await.unwrap();
    assert!(
        retry.actions.iter().all(|o| o.action != "rotate-registry-key" || o.status != ActionStatus::Done),
        "{retry:?}"
    );
    assert_eq!(e.sim.calls(azsim::Route::ArmRegistryPatch), 1);
}

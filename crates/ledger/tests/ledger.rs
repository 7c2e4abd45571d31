//! One behavioural suite, run against both backends: SQLite on a temp file and Blob
//! Storage on an Azurite the harness starts. Each case is a plain async fn taking a
//! [`Fixture`]; the macro at the bottom turns it into a test per backend.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cmkguard_ledger::{ActionOutcome, ActionStatus, Claim, LedgerError, ListQuery, PendingOperation, PollKind};
use common::{Fixture, record};

const TTL: Duration = Duration::from_secs(60);

/// Many tasks claim the same event id at once: exactly one gets it; once it is
/// completed every later claim sees the record, and nothing runs twice.
async fn concurrent_claims_of_one_event_have_one_winner(f: Fixture) {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let l = f.ledger.clone();
            tokio::spawn(async move { l.claim("evt-race", TTL).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Claim::New(ticket) => winners.push(ticket),
            Claim::InProgress { attempt, .. } => assert_eq!(attempt, 1),
            Claim::AlreadyDone(r) => panic!("nothing completed yet, got {r:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claimant may act");
    let ticket = winners.pop().unwrap();
    assert_eq!((ticket.attempt, ticket.progress.len()), (1, 0));

    let rec = record("evt-race", f.clock.now_for_test());
    f.ledger.complete(&ticket, &rec).await.unwrap();
    let again: Vec<_> = (0..8)
        .map(|_| {
            let l = f.ledger.clone();
            tokio::spawn(async move { l.claim("evt-race", TTL).await.unwrap() })
        })
        .collect();
    for t in again {
        assert_eq!(t.await.unwrap(), Claim::AlreadyDone(Box::new(rec.clone())));
    }
    assert_eq!(f.ledger.get("evt-race").await.unwrap(), Some(rec));
}

/// A claim whose holder crashed is taken over after it expires, with the progress the
/// holder checkpointed; the old holder can no longer complete. Abandoning frees at once.
async fn expired_claims_are_resumed_with_their_progress(f: Fixture) {
    let Claim::New(first) = f.ledger.claim("evt-crash", TTL).await.unwrap() else { panic!("first claim") };
    let started = vec![ActionOutcome {
        action: "rotate-registry-key".into(),
        target: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/r1".into(),
        status: ActionStatus::Pending,
        detail: "ARM accepted; polling".into(),
    }];
    let first = f.ledger.checkpoint(&first, &started, TTL).await.unwrap();
    assert!(matches!(f.ledger.claim("evt-crash", TTL).await.unwrap(), Claim::InProgress { attempt: 1, .. }));

    f.clock.advance(TTL * 2);
    let Claim::New(second) = f.ledger.claim("evt-crash", TTL).await.unwrap() else { panic!("takeover") };
    assert_eq!(second.attempt, 2);
    assert_eq!(second.progress, started, "the takeover sees what the crashed attempt had started");
    assert_ne!(second.token, first.token);

    let stale = f.ledger.complete(&first, &record("evt-crash", f.clock.now_for_test())).await;
    assert!(matches!(stale, Err(LedgerError::ClaimLost { .. })), "{stale:?}");
    assert!(matches!(f.ledger.checkpoint(&first, &[], TTL).await, Err(LedgerError::ClaimLost { .. })));

    // Abandon (a retryable failure): the next claim gets it at once, progress kept.
    f.ledger.abandon(&second).await.unwrap();
    let Claim::New(third) = f.ledger.claim("evt-crash", TTL).await.unwrap() else { panic!("after abandon") };
    assert_eq!((third.attempt, third.progress.clone()), (3, started));
    f.ledger.complete(&third, &record("evt-crash", f.clock.now_for_test())).await.unwrap();
    assert!(matches!(f.ledger.claim("evt-crash", TTL).await.unwrap(), Claim::AlreadyDone(_)));
}

/// Records come back exactly as written; `list` is newest first, honours since and limit.
async fn records_round_trip_and_list_newest_first(f: Fixture) {
    let base = f.clock.now_for_test();
    let mut written = Vec::new();
    for i in 0..6 {
        let mut r = record(&format!("evt-list-{i}"), base + chrono::Duration::minutes(i));
        r.subject = format!("key-{i} with spaces/and slashes");
        f.ledger.record(&r).await.unwrap();
        written.push(r);
    }
    for r in &written {
        assert_eq!(f.ledger.get(&r.event_id).await.unwrap().as_ref(), Some(r));
    }
    assert_eq!(f.ledger.get("evt-missing").await.unwrap(), None);

    let all = f.ledger.list(&ListQuery::default()).await.unwrap();
    let ids: Vec<_> = all.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, ["evt-list-5", "evt-list-4", "evt-list-3", "evt-list-2", "evt-list-1", "evt-list-0"]);
    let top = f.ledger.list(&ListQuery { since: None, limit: Some(2) }).await.unwrap();
    assert_eq!(top, vec![written[5].clone(), written[4].clone()]);
    let recent =
        f.ledger.list(&ListQuery { since: Some(base + chrono::Duration::minutes(4)), limit: None }).await.unwrap();
    assert_eq!(recent.len(), 2);

    // A recorded (unclaimed) event also counts as done for later claims.
    assert!(matches!(f.ledger.claim("evt-list-0", TTL).await.unwrap(), Claim::AlreadyDone(r) if *r == written[0]));
}

/// One holder per registry at a time, among many concurrent tries; renew and release work.
async fn registry_leases_are_exclusive(f: Fixture) {
    let reg = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/Lease1";
    let tries: Vec<_> = (0..16)
        .map(|_| {
            let l = f.ledger.clone();
            tokio::spawn(async move { l.acquire_lease(reg, Duration::from_secs(30)).await.unwrap() })
        })
        .collect();
    let mut held = Vec::new();
    for t in tries {
        held.extend(t.await.unwrap());
    }
    assert_eq!(held.len(), 1, "exactly one concurrent acquirer holds the lease");
    let lease = held.pop().unwrap();
    // Same registry, other casing: still the same lock.
    assert_eq!(f.ledger.acquire_lease(&reg.to_uppercase(), Duration::from_secs(30)).await.unwrap(), None);
    let other = f.ledger.acquire_lease(&format!("{reg}-other"), Duration::from_secs(30)).await.unwrap();
    assert!(other.is_some(), "another registry is independent");

    let lease = f.ledger.renew_lease(&lease, Duration::from_secs(30)).await.unwrap();
    f.ledger.release_lease(&lease).await.unwrap();
    let next = f.ledger.acquire_lease(reg, Duration::from_secs(30)).await.unwrap().expect("free after release");
    assert!(matches!(f.ledger.renew_lease(&lease, Duration::from_secs(30)).await, Err(LedgerError::LeaseLost { .. })));
    f.ledger.release_lease(&lease).await.unwrap(); // releasing a lost lease is not an error…
    assert_eq!(f.ledger.acquire_lease(reg, Duration::from_secs(30)).await.unwrap(), None); // …and frees nothing

    if f.lease_expiry_follows_clock {
        f.clock.advance(Duration::from_secs(31));
        let taken = f.ledger.acquire_lease(reg, Duration::from_secs(30)).await.unwrap();
        assert!(taken.is_some(), "an expired lease can be taken");
        assert!(matches!(
            f.ledger.renew_lease(&next, Duration::from_secs(30)).await,
            Err(LedgerError::LeaseLost { .. })
        ));
    }
}

/// The same (rule, resource, key version) is sent once per window, even when asked
/// concurrently; another version is separate; forgetting allows a resend.
async fn notifications_are_deduplicated_per_window(f: Fixture) {
    let day = Duration::from_secs(86_400);
    let key = ("CMK010", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v", "v1");
    let tries: Vec<_> = (0..16)
        .map(|_| {
            let l = f.ledger.clone();
            tokio::spawn(async move { l.should_send(key.0, key.1, key.2, day).await.unwrap() })
        })
        .collect();
    let mut sent = 0;
    for t in tries {
        sent += usize::from(t.await.unwrap());
    }
    assert_eq!(sent, 1, "one of the concurrent askers sends");
    assert!(
        !f.ledger.should_send(key.0, &key.1.to_uppercase(), key.2, day).await.unwrap(),
        "resource ids compare case-insensitively"
    );
    assert!(f.ledger.should_send(key.0, key.1, "v2", day).await.unwrap(), "a new key version is news");
    assert!(f.ledger.should_send("CMK011", key.1, key.2, day).await.unwrap(), "another rule is separate");

    f.clock.advance(day / 2);
    assert!(!f.ledger.should_send(key.0, key.1, key.2, day).await.unwrap());
    f.clock.advance(day);
    assert!(f.ledger.should_send(key.0, key.1, key.2, day).await.unwrap(), "a new window sends again");
    assert!(!f.ledger.should_send(key.0, key.1, key.2, day).await.unwrap());
    f.ledger.forget_send(key.0, key.1, key.2).await.unwrap();
    assert!(f.ledger.should_send(key.0, key.1, key.2, day).await.unwrap(), "a forgotten (failed) send may be retried");
}

/// Parked operations are listed oldest first, per registry, and completed once.
async fn pending_operations_are_listed_and_completed(f: Fixture) {
    let now = f.clock.now_for_test();
    let reg =
        |n: &str| format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/{n}");
    let op = |id: &str, r: &str, mins: i64| PendingOperation {
        id: id.into(),
        registry: reg(r),
        action: "rotate-registry-key".into(),
        operation_url: format!(
            "https://management.azure.com/subscriptions/s/providers/Microsoft.ContainerRegistry/locations/westeurope/operationResults/{id}?api-version=2025-04-01"
        ),
        poll_kind: if mins == 0 { PollKind::Location } else { PollKind::AsyncOperation },
        started_at: now + chrono::Duration::minutes(mins),
        target_key: "https://v.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef".into(),
        event_id: format!("evt-{id}"),
    };
    let (a, b, c) = (op("op-a", "r1", 2), op("op-b", "r2", 0), op("op-c", "r1", 1));
    for o in [&a, &b, &c] {
        f.ledger.add_pending(o).await.unwrap();
    }
    assert_eq!(f.ledger.list_pending(None).await.unwrap(), vec![b.clone(), c.clone(), a.clone()]);
    assert_eq!(f.ledger.list_pending(Some(&reg("R1"))).await.unwrap(), vec![c.clone(), a.clone()]);

    let a2 = PendingOperation { operation_url: format!("{}&retry=1", a.operation_url), ..a.clone() };
    f.ledger.add_pending(&a2).await.unwrap();
    assert_eq!(f.ledger.list_pending(Some(&reg("r1"))).await.unwrap(), vec![c.clone(), a2], "same id replaces");

    assert!(f.ledger.complete_pending("op-c").await.unwrap());
    assert!(!f.ledger.complete_pending("op-c").await.unwrap(), "completing twice finds nothing");
    let left: HashSet<_> = f.ledger.list_pending(None).await.unwrap().into_iter().map(|o| o.id).collect();
    assert_eq!(left, HashSet::from(["op-a".to_owned(), "op-b".to_owned()]));
}

/// Records older than the retention age go, with their claims and old dedupe entries;
/// younger ones stay.
async fn retention_prunes_old_records_only(f: Fixture) {
    let day = chrono::Duration::days(1);
    let t0 = f.clock.now_for_test();
    for i in 0..3 {
        f.ledger.record(&record(&format!("evt-old-{i}"), t0 - day * 10)).await.unwrap();
    }
    let Claim::New(ticket) = f.ledger.claim("evt-young", TTL).await.unwrap() else { panic!() };
    f.ledger.complete(&ticket, &record("evt-young", t0 + day * 2)).await.unwrap();
    assert!(f.ledger.should_send("CMK001", "r", "v", Duration::from_secs(3600)).await.unwrap());
    f.clock.advance(Duration::from_secs(6 * 86_400));

    let stats = f.ledger.prune(Duration::from_secs(5 * 86_400)).await.unwrap();
    assert_eq!(stats.records, 3, "{stats:?}");
    assert!(stats.claims >= 3, "{stats:?}");
    assert_eq!(stats.notifications, 1, "{stats:?}");
    let left: Vec<_> = f.ledger.list(&ListQuery::default()).await.unwrap().into_iter().map(|r| r.event_id).collect();
    assert_eq!(left, ["evt-young"]);
    assert_eq!(f.ledger.get("evt-old-0").await.unwrap(), None);
    assert!(matches!(f.ledger.claim("evt-young", TTL).await.unwrap(), Claim::AlreadyDone(_)));
    assert_eq!(f.ledger.prune(Duration::from_secs(5 * 86_400)).await.unwrap().records, 0, "pruning is idempotent");
}

/// The clock as the ledger sees it (the fixture's manual clock).
trait NowForTest {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc>;
}
impl NowForTest for Arc<common::ManualClock> {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc> {
        cmkguard_ledger::Clock::now(&**self)
    }
}

/// The one-write path: a new id is claimed and recorded at once; a known id is never
/// recorded over, and the caller learns what `claim` would have said.
async fn claim_or_record_writes_once_and_only_for_new_ids(f: Fixture) {
    let now = f.clock.now_for_test();
    let first = record("evt-one", now);
    assert_eq!(f.ledger.claim_or_record(&first, TTL).await.unwrap(), None);
    assert_eq!(f.ledger.get("evt-one").await.unwrap(), Some(first.clone()));
    // A redelivery: the first record stays, the caller is told it is done.
    let again = record("evt-one", now + chrono::Duration::seconds(5));
    assert_eq!(f.ledger.claim_or_record(&again, TTL).await.unwrap(), Some(Claim::AlreadyDone(Box::new(first.clone()))));
    assert_eq!(f.ledger.claim(&again.event_id, TTL).await.unwrap(), Claim::AlreadyDone(Box::new(first.clone())));
    // Another invocation holds the id: nothing is recorded, it is in progress.
    let Claim::New(held) = f.ledger.claim("evt-held", TTL).await.unwrap() else { panic!("claim") };
    let r = f.ledger.claim_or_record(&record("evt-held", now), TTL).await.unwrap();
    assert!(matches!(r, Some(Claim::InProgress { attempt: 1, .. })), "{r:?}");
    assert_eq!(f.ledger.get("evt-held").await.unwrap(), None);
    // An interrupted attempt with checkpointed progress is handed over, not recorded over.
    let started = vec![ActionOutcome {
        action: "rotate-registry-key".into(),
        target: "r1".into(),
        status: ActionStatus::Pending,
        detail: "started".into(),
    }];
    f.ledger.checkpoint(&held, &started, TTL).await.unwrap();
    f.clock.advance(TTL * 2);
    match f.ledger.claim_or_record(&record("evt-held", now), TTL).await.unwrap() {
        Some(Claim::New(t)) => assert_eq!((t.attempt, t.progress), (2, started)),
        other => panic!("expected a takeover, got {other:?}"),
    }
    assert_eq!(f.ledger.get("evt-held").await.unwrap(), None);
    // Of many concurrent one-write callers on one id, exactly one records.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let l = f.ledger.clone();
            let mut r = record("evt-race-1w", now);
            r.mode = format!("writer-{i}");
            tokio::spawn(async move { (l.claim_or_record(&r, TTL).await.unwrap(), r) })
        })
        .collect();
    let mut written = Vec::new();
    for t in tasks {
        let (answer, r) = t.await.unwrap();
        match answer {
            None => written.push(r),
            Some(Claim::AlreadyDone(_) | Claim::InProgress { .. }) => {}
            Some(Claim::New(t)) => panic!("nothing to take over, got {t:?}"),
        }
    }
    assert_eq!(written.len(), 1, "exactly one writer records");
    assert_eq!(f.ledger.get("evt-race-1w").await.unwrap().as_ref(), written.first());
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() { super::$case(super::common::sqlite_fixture().await).await })*
        }
        mod blob {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() { super::$case(super::common::blob_fixture().await).await })*
        }
    };
}

on_both_backends!(
    concurrent_claims_of_one_event_have_one_winner,
    expired_claims_are_resumed_with_their_progress,
    records_round_trip_and_list_newest_first,
    registry_leases_are_exclusive,
    notifications_are_deduplicated_per_window,
    pending_operations_are_listed_and_completed,
    retention_prunes_old_records_only,
    claim_or_record_writes_once_and_only_for_new_ids,
);

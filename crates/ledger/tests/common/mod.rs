//! Shared helpers for the ledger tests: a clock the test moves, record builders, and
//! opening either backend the same way.

#![allow(dead_code)]

pub mod azurite;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cmkguard_ledger::{
    ActionOutcome, ActionStatus, AuditRecord, Clock, Decided, Decision, Ledger, LedgerOptions, PolicyRef,
};

/// A clock that only moves when the test says so.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Utc::now())))
    }
    pub fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += chrono::Duration::from_std(d).unwrap();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// One backend under test, with whatever keeps it alive.
pub struct Fixture {
    pub ledger: Arc<dyn Ledger>,
    pub clock: Arc<ManualClock>,
    /// Blob leases expire by the server's clock, not ours.
    pub lease_expiry_follows_clock: bool,
    _keep: Box<dyn std::any::Any + Send>,
}

pub async fn sqlite_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let url = format!("sqlite:{}", dir.path().join("ledger.db").display());
    let options = LedgerOptions { clock: clock.clone(), ..Default::default() };
    let ledger = cmkguard_ledger::open_with(&url, None, options).await.unwrap();
    Fixture { ledger, clock, lease_expiry_follows_clock: true, _keep: Box::new(dir) }
}

pub async fn blob_fixture() -> Fixture {
    let azurite = azurite::Azurite::start().await.unwrap_or_else(|e| panic!("{e}"));
    let clock = ManualClock::new();
    let options =
        LedgerOptions { clock: clock.clone(), blob_http_client: Some(azurite.http_client()), ..Default::default() };
    let ledger = cmkguard_ledger::open_with(&azurite.container_url("ledger"), Some(azurite.credential()), options)
        .await
        .unwrap_or_else(|e| panic!("open blob ledger on Azurite: {e}"));
    Fixture { ledger, clock, lease_expiry_follows_clock: false, _keep: Box::new(azurite) }
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A realistic record: a near-expiry event, one finding, a rotation and a notification.
pub fn record(event_id: &str, recorded_at: DateTime<Utc>) -> AuditRecord {
    AuditRecord {
        event_id: event_id.to_owned(),
        event_type: "Microsoft.KeyVault.KeyNearExpiry".into(),
        subject: "cmk-key".into(),
        event_time: Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap(),
        recorded_at,
        mode: "enforce".into(),
        decided: Decided::Decision {
            policy: PolicyRef { name: "default".into(), version: "1.0.0".into(), digest: "ab".repeat(32) },
            decision: Decision::default(),
        },
        actions: vec![
            ActionOutcome {
                action: "rotate-registry-key".into(),
                target: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/r1".into(),
                status: ActionStatus::Done,
                detail: "now on version 2".into(),
            },
            ActionOutcome {
                action: "notify".into(),
                target: "ops".into(),
                status: ActionStatus::Skipped,
                detail: "deduplicated".into(),
            },
        ],
    }
}

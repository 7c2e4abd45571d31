//! The SQLite ledger's WAL stays bounded under continuous writes: without a reset the
//! passive checkpoints never catch up with a busy writer and SQLite never starts the WAL
//! over, so it grew for as long as the load lasted (727 MB after 30 s of the benchmark).

mod common;

use std::sync::Arc;
use std::time::Duration;

use cmkguard_ledger::sqlite::SqliteLedger;
use cmkguard_ledger::{Ledger, LedgerOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_emptied_once_it_passes_the_reset_size_even_under_continuous_writes() {
    const RESET: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let wal = dir.path().join("ledger.db-wal");
    let options = LedgerOptions { sqlite_wal_reset_bytes: RESET, ..Default::default() };
    let ledger = Arc::new(SqliteLedger::open(&path, options).await.unwrap());

    // 32 writers without pause: every group commit finds the next one queued.
    let now = common::t("2026-11-23T12:00:00Z");
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move {
                for i in 0..400 {
                    let record = common::record(&format!("evt-{w}-{i}"), now);
                    let claim = ledger.claim_or_record(&record, Duration::from_secs(60)).await.unwrap();
                    assert!(claim.is_none(), "a fresh id is recorded at once");
                }
            })
        })
        .collect();
    let mut peak = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        peak = peak.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    // A few checkpointer rounds (200 ms each) after the load.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let db = std::fs::metadata(&path).unwrap().len();
    assert!(peak > RESET, "the load must push the WAL past the reset size to test anything (peak {peak} bytes)");
    assert!(after <= RESET, "the WAL is {after} bytes after the load (peak {peak}, database {db}); reset at {RESET}");
    assert!(!ledger.list(&Default::default()).await.unwrap().is_empty(), "records readable");
    assert!(ledger.get("evt-31-399").await.unwrap().is_some(), "the last record is in the database");
}

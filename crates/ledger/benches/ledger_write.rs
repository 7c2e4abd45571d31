//! The ledger's write rate: events per second through the act stage's ledger path
//! (`claim` + `complete` with a full audit record: two durable writes per event), for
//! SQLite with 1, 16, 64 and 256 concurrent writers and for Blob Storage on Azurite.
//!
//! Run: `cargo bench -p cmkguard-ledger --bench ledger_write` (add `-- sqlite` or
//! `-- blob` for one backend). Each configuration runs RUNS times on a fresh ledger;
//! the median and the range are printed as Markdown rows for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmkguard_ledger::sqlite::SqliteLedger;
use cmkguard_ledger::{Claim, Ledger, LedgerOptions};

const RUNS: usize = 5;
const TTL: Duration = Duration::from_secs(300);

/// Events per second for `writers` tasks sharing `total` events.
async fn rate(ledger: Arc<dyn Ledger>, writers: usize, total: usize, run: usize) -> f64 {
    let per = total / writers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    let id = format!("bench-{run}-{w}-{i}");
                    let Claim::New(ticket) = ledger.claim(&id, TTL).await.unwrap() else { panic!("{id} not new") };
                    ledger.complete(&ticket, &common::record(&id, chrono::Utc::now())).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per * writers) as f64 / start.elapsed().as_secs_f64()
}

fn summary(mut rates: Vec<f64>) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

async fn sqlite() {
    println!(
        "| backend | writers | events/run | median events/s | min | max | median µs/event | writes/commit | writer busy | of which COMMIT |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (writers, total) in [(1, 2_000), (16, 20_000), (64, 40_000), (256, 80_000), (1024, 120_000)] {
        let mut rates = Vec::new();
        let (mut commits, mut requests, mut busy, mut commit, mut wall) = (0, 0, 0, 0, 0.0);
        for run in 0..RUNS {
            let dir = tempfile::tempdir().unwrap();
            let ledger =
                Arc::new(SqliteLedger::open(&dir.path().join("bench.db"), LedgerOptions::default()).await.unwrap());
            let t = Instant::now();
            rates.push(rate(ledger.clone(), writers, total, run).await);
            wall += t.elapsed().as_secs_f64();
            let (c, r) = ledger.writer_stats().snapshot();
            let (b, cm) = ledger.writer_stats().busy();
            (commits, requests, busy, commit) = (commits + c, requests + r, busy + b, commit + cm);
        }
        let (med, min, max) = summary(rates);
        let per_commit = requests as f64 / commits.max(1) as f64;
        let busy_share = busy as f64 / 1e6 / wall * 100.0;
        let commit_share = commit as f64 / busy.max(1) as f64 * 100.0;
        println!(
            "| sqlite | {writers} | {total} | {med:.0} | {min:.0} | {max:.0} | {:.1} | {per_commit:.1} | {busy_share:.0}% | {commit_share:.0}% |",
            1e6 / med
        );
    }
}

async fn blob() {
    let azurite = common::azurite::Azurite::start().await.unwrap_or_else(|e| panic!("{e}"));
    for (writers, total) in [(1, 200), (16, 2_000), (64, 4_000)] {
        let mut rates = Vec::new();
        for run in 0..RUNS {
            let options = LedgerOptions { blob_http_client: Some(azurite.http_client()), ..Default::default() };
            let url = azurite.container_url(&format!("bench-{writers}-{run}"));
            let ledger = cmkguard_ledger::open_with(&url, Some(azurite.credential()), options).await.unwrap();
            rates.push(rate(ledger, writers, total, run).await);
        }
        let (med, min, max) = summary(rates);
        println!(
            "| blob (Azurite) | {writers} | {total} | {med:.0} | {min:.0} | {max:.0} | {:.1} | – | – | – |",
            1e6 / med
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |b: &str| args.is_empty() || args.iter().any(|a| a == b);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if want("sqlite") {
            sqlite().await;
        }
        if want("blob") {
            blob().await;
        }
    });
}

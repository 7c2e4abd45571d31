//! The ledger's write rate: events per second through the act stage's ledger path, with
//! N concurrent writer tasks. Two paths:
//!
//! - `two-write`: `claim` then `complete` with a full audit record (an event with side
//!   effects: the claim must be durable before acting);
//! - `one-write`: `claim_or_record` (an event whose outcome has no side effect, e.g. a
//!   monitor-mode decision without notifications: claim and record in one write).
//!
//! SQLite runs with the old 4 KiB and the current 1 KiB page size, Blob against Azurite.
//!
//! Run: `cargo bench -p cmkguard-ledger --bench ledger_write` (add `-- sqlite` or
//! `-- blob` for one backend). `LEDGER_BENCH_RUNS` (default 5) runs per row, each on a
//! fresh ledger; `LEDGER_BENCH_WRITERS` (e.g. `64,1024`) picks the writer counts. Prints
//! Markdown rows for BENCHMARKS.md (median with min–max) and, last, one line
//! `ledger-write sqlite-best: N events/s` for harnesses to parse.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmkguard_ledger::sqlite::SqliteLedger;
use cmkguard_ledger::{Claim, Ledger, LedgerOptions};

const TTL: Duration = Duration::from_secs(300);

/// Which ledger calls one event makes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    TwoWrite,
    OneWrite,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::TwoWrite => "two-write",
            Path::OneWrite => "one-write",
        }
    }
}

/// Events per second for `writers` tasks sharing `total` events.
async fn rate(ledger: Arc<dyn Ledger>, path: Path, writers: usize, total: usize, run: usize) -> f64 {
    let per = total / writers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    let id = format!("bench-{run}-{w}-{i}");
                    let record = common::record(&id, chrono::Utc::now());
                    match path {
                        Path::TwoWrite => {
                            let Claim::New(ticket) = ledger.claim(&id, TTL).await.unwrap() else {
                                panic!("{id} not new")
                            };
                            ledger.complete(&ticket, &record).await.unwrap();
                        }
                        Path::OneWrite => {
                            assert!(ledger.claim_or_record(&record, TTL).await.unwrap().is_none(), "{id} not new");
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per * writers) as f64 / start.elapsed().as_secs_f64()
}

fn runs() -> usize {
    std::env::var("LEDGER_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(5)
}

fn writers(default: &[usize]) -> Vec<usize> {
    std::env::var("LEDGER_BENCH_WRITERS")
        .ok()
        .map(|v| v.split(',').filter_map(|w| w.trim().parse().ok()).filter(|w| *w > 0).collect::<Vec<usize>>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Events per run for a writer count (enough that the run is not dominated by start-up).
fn events_for(writers: usize) -> usize {
    let events: usize = match writers {
        0..=1 => 2_000,
        2..=16 => 20_000,
        17..=64 => 40_000,
        65..=256 => 80_000,
        _ => 120_000,
    };
    events.div_ceil(writers) * writers
}

fn summary(mut rates: Vec<f64>) -> (f64, f64, f64) {
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

/// Returns the best median (events/s) over all rows.
async fn sqlite() -> f64 {
    println!(
        "| backend | page | path | writers | events/run | median events/s | min | max | median µs/event | writes/commit | writer busy | of which COMMIT |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut best: f64 = 0.0;
    for writers in writers(&[1, 64, 256, 1024]) {
        let total = events_for(writers);
        for (page, path) in
            [(4096, Path::TwoWrite), (1024, Path::TwoWrite), (4096, Path::OneWrite), (1024, Path::OneWrite)]
        {
            let mut rates = Vec::new();
            let (mut commits, mut requests, mut busy, mut commit, mut wall) = (0, 0, 0, 0, 0.0);
            for run in 0..runs() {
                let dir = tempfile::tempdir().unwrap();
                let options = LedgerOptions { sqlite_page_size: page, ..Default::default() };
                let ledger = Arc::new(SqliteLedger::open(&dir.path().join("bench.db"), options).await.unwrap());
                let t = Instant::now();
                rates.push(rate(ledger.clone(), path, writers, total, run).await);
                wall += t.elapsed().as_secs_f64();
                let (c, r) = ledger.writer_stats().snapshot();
                let (b, cm) = ledger.writer_stats().busy();
                (commits, requests, busy, commit) = (commits + c, requests + r, busy + b, commit + cm);
            }
            let (med, min, max) = summary(rates);
            best = best.max(med);
            let per_commit = requests as f64 / commits.max(1) as f64;
            let busy_share = busy as f64 / 1e6 / wall * 100.0;
            let commit_share = commit as f64 / busy.max(1) as f64 * 100.0;
            println!(
                "| sqlite | {page} | {} | {writers} | {total} | {med:.0} | {min:.0} | {max:.0} | {:.1} | {per_commit:.1} | {busy_share:.0}% | {commit_share:.0}% |",
                path.name(),
                1e6 / med
            );
        }
    }
    best
}

async fn blob() {
    let azurite = common::azurite::Azurite::start().await.unwrap_or_else(|e| panic!("{e}"));
    for writers in writers(&[1, 16, 64]) {
        let total = (events_for(writers) / 10).div_ceil(writers) * writers;
        for path in [Path::TwoWrite, Path::OneWrite] {
            let mut rates = Vec::new();
            for run in 0..runs() {
                let options = LedgerOptions { blob_http_client: Some(azurite.http_client()), ..Default::default() };
                let url = azurite.container_url(&format!("bench-{}-{writers}-{run}", path.name()));
                let ledger = cmkguard_ledger::open_with(&url, Some(azurite.credential()), options).await.unwrap();
                rates.push(rate(ledger, path, writers, total, run).await);
            }
            let (med, min, max) = summary(rates);
            println!(
                "| blob (Azurite) | – | {} | {writers} | {total} | {med:.0} | {min:.0} | {max:.0} | {:.1} | – | – | – |",
                path.name(),
                1e6 / med
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |b: &str| args.is_empty() || args.iter().any(|a| a == b);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if want("sqlite") {
            let best = sqlite().await;
            println!("ledger-write sqlite-best: {best:.0} events/s");
        }
        if want("blob") {
            blob().await;
        }
    });
}

//! Hostile policy modules under load (issue 8): does a module that loops until the
//! deadline, bombs memory, recurses to the stack cap or floods its output slow down the
//! evaluations of a well-behaved policy running beside it in the same engine (one pool,
//! one epoch ticker, as in the handler while a reload validates a new module or two
//! policies are loaded)? A benchmark, not a test: it prints a table and judges each
//! scenario against "within 2× of normal", it asserts nothing.
//!
//! Method: one thread evaluates the default policy (10 registries, fresh sandbox each, the
//! production `Limits`) back to back for `HOSTILE_BENCH_SECS` (default 3) seconds and
//! records every latency; in each scenario `neighbours` other threads evaluate a hostile
//! module back to back meanwhile (each evaluation ends in its trap, timeout or refusal).
//! Every scenario is preceded by a baseline of the same length without neighbours, and is
//! compared with that adjacent baseline, so that drift of a shared machine hits both.
//! With one neighbour on a 2-core machine each thread can have a core: what remains is
//! the cost of sharing the engine. The last row puts one neighbour of each kind on the
//! 2 cores at once (oversubscribed: the scheduler shares the cores, not the sandbox).
//!
//! `cargo bench -p cmkguard-policy --bench hostile_neighbors` (results: BENCHMARKS.md,
//! "Hostile policies under load").

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cmkguard_policy::sample::sample_input;
use cmkguard_policy::{Limits, Policy, PolicyEngine};

const HOSTILE: [&str; 5] = ["infinite-loop", "memory-bomb", "deep-recursion", "huge-output", "huge-string"];

struct Run {
    p50: Duration,
    p99: Duration,
    count: usize,
    /// Evaluations of the default policy that failed (a deadline missed while the
    /// scheduler had the thread off the CPU): the handler would answer them fail-safe.
    failed: usize,
    neighbour_evals: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Times the default policy on this thread for `secs` while `neighbours` evaluate.
fn run(good: &Policy, neighbours: &[Arc<Policy>], secs: Duration) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let evals = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = neighbours
        .iter()
        .map(|p| {
            let (p, stop, evals) = (Arc::clone(p), Arc::clone(&stop), Arc::clone(&evals));
            std::thread::spawn(move || {
                let input = sample_input(3);
                while !stop.load(Ordering::Relaxed) {
                    // Every hostile evaluation must fail; one that succeeds is a broken bench.
                    assert!(p.evaluate(&input).is_err(), "a hostile module evaluated successfully");
                    evals.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Let the neighbours get going before timing.
    std::thread::sleep(Duration::from_millis(100));
    let input = sample_input(10);
    let mut lat = Vec::with_capacity(100_000);
    let mut failed = 0;
    let start = Instant::now();
    while start.elapsed() < secs {
        let t = Instant::now();
        let d = good.evaluate(&input);
        lat.push(t.elapsed());
        failed += usize::from(d.is_err());
        std::hint::black_box(d.ok());
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a neighbour thread panicked");
    }
    lat.sort_unstable();
    Run {
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        count: lat.len(),
        failed,
        neighbour_evals: evals.load(Ordering::Relaxed),
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let secs = Duration::from_secs_f64(
        std::env::var("HOSTILE_BENCH_SECS").ok().and_then(|s| s.parse().ok()).filter(|s: &f64| *s > 0.0).unwrap_or(3.0),
    );
    let limits = Limits::default();
    let engine = PolicyEngine::new(limits.clone(), None).expect("engine");
    let good = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").expect("default policy");
    let dir = Path::new(env!("CMKGUARD_TEST_COMPONENTS"));
    let load = |name: &str| -> Arc<Policy> {
        let bytes = std::fs::read(dir.join(format!("{name}.wasm"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        Arc::new(engine.load(&bytes, name, "{}").unwrap_or_else(|e| panic!("{name} should load: {e}")))
    };
    let hostile: Vec<(&str, Arc<Policy>)> = HOSTILE.iter().map(|n| (*n, load(n))).collect();

    println!(
        "default policy, 10 registries, fresh sandbox; limits: deadline {} ms, memory {} MiB; {:.1} s per run; {} cores",
        limits.timeout.as_millis(),
        limits.memory_bytes >> 20,
        secs.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "| neighbours | baseline p50 / p99 (µs) | with neighbours p50 / p99 (µs) | p50 × | p99 × | evaluations: default (failed) / hostile | within 2× |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut scenarios: Vec<(String, Vec<Arc<Policy>>)> =
        hostile.iter().map(|(n, p)| (format!("1 × {n}"), vec![Arc::clone(p)])).collect();
    scenarios.push((
        format!("{} at once (one of each, oversubscribed)", hostile.len()),
        hostile.iter().map(|(_, p)| Arc::clone(p)).collect(),
    ));
    // Warm-up: pool slots, caches, the ticker.
    run(&good, &[], Duration::from_millis(300));
    for (name, neighbours) in &scenarios {
        let base = run(&good, &[], secs);
        let with = run(&good, neighbours, secs);
        let r50 = with.p50.as_secs_f64() / base.p50.as_secs_f64();
        let r99 = with.p99.as_secs_f64() / base.p99.as_secs_f64();
        println!(
            "| {name} | {} / {} | {} / {} | {r50:.2} | {r99:.2} | {} ({}) / {} | {} |",
            us(base.p50),
            us(base.p99),
            us(with.p50),
            us(with.p99),
            with.count,
            with.failed + base.failed,
            with.neighbour_evals,
            if r50 <= 2.0 && r99 <= 2.0 && with.failed == 0 { "yes" } else { "**no**" },
        );
    }
}

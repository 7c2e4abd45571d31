//! Policy evaluation latency: a fresh sandbox (store + instance) per evaluation, the
//! default policy and the Python policy on the sample input with 10 registries; and
//! loading a policy precompiled from the cache vs compiling it.
//!
//! `cargo bench --release -p cmkguard-policy` (results: BENCHMARKS.md, "Policy").

use std::hint::black_box;
use std::time::Duration;

use cmkguard_policy::sample::sample_input;
use cmkguard_policy::{Limits, PolicyEngine};
use criterion::{Criterion, criterion_group, criterion_main};

fn evaluate(c: &mut Criterion) {
    let engine = PolicyEngine::new(Limits::default(), None).unwrap();
    let input = sample_input(10);
    let default = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").unwrap();
    let mut g = c.benchmark_group("evaluate");
    g.bench_function("default-policy/10-registries/fresh-sandbox", |b| {
        b.iter(|| black_box(default.evaluate(black_box(&input)).unwrap()))
    });
    let one = sample_input(1);
    g.bench_function("default-policy/1-registry/fresh-sandbox", |b| {
        b.iter(|| black_box(default.evaluate(black_box(&one)).unwrap()))
    });

    let python = std::path::Path::new(cmkguard_policy::COMPONENTS_DIR).join("python-notify.wasm");
    match std::fs::read(&python) {
        Ok(bytes) => {
            let cache = std::env::temp_dir().join("cmkguard-policy-bench-cache");
            let engine = PolicyEngine::new(Limits::default(), Some(cache)).unwrap();
            let py = engine.load(&bytes, "python", "{}").unwrap();
            g.sample_size(30).measurement_time(Duration::from_secs(5));
            g.bench_function("python-notify/10-registries/fresh-sandbox", |b| {
                b.iter(|| black_box(py.evaluate(black_box(&input)).unwrap()))
            });
        }
        Err(e) => eprintln!("skipping the Python policy ({}: {e}; run scripts/setup.d/20-policy.sh)", python.display()),
    }
    g.finish();
}

fn load(c: &mut Criterion) {
    let mut g = c.benchmark_group("load");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let cold = PolicyEngine::new(Limits::default(), None).unwrap();
    g.bench_function("default-policy/compile", |b| {
        b.iter(|| black_box(cold.load(cmkguard_policy::DEFAULT_POLICY, "d", "{}").unwrap()))
    });
    let dir = std::env::temp_dir().join(format!("cmkguard-policy-bench-load-{}", std::process::id()));
    let warm = PolicyEngine::new(Limits::default(), Some(dir.clone())).unwrap();
    warm.load(cmkguard_policy::DEFAULT_POLICY, "d", "{}").unwrap();
    g.bench_function("default-policy/precompiled", |b| {
        b.iter(|| black_box(warm.load(cmkguard_policy::DEFAULT_POLICY, "d", "{}").unwrap()))
    });
    g.finish();
    std::fs::remove_dir_all(dir).ok();
}

criterion_group!(benches, evaluate, load);
criterion_main!(benches);

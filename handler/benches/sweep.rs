//! Sweep of a generated azsim estate (10,000 registries by default; `SWEEP_REGISTRIES`
//! overrides) in monitor mode, in-process: Resource Graph listing, per-registry ARM GET,
//! key facts (cached per key), the default policy and a SQLite audit record each.
//! Prints every run's wall time and the median. `cargo bench -p cmkguard --bench sweep`.

use std::time::Instant;

use cmkguard::cli::demo;
use cmkguard::config::Mode;

fn main() {
    let n: usize = std::env::var("SWEEP_REGISTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let runs: usize = std::env::var("SWEEP_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let spec = azsim::estate::EstateSpec { registries: n, ..Default::default() };
        let sim = azsim::Azsim::start(azsim::estate::generate(&spec), azsim::Options::default()).await.expect("azsim");
        let mut times = Vec::new();
        for run in 0..runs {
            let dir = tempfile::tempdir().expect("temp dir");
            let db = dir.path().join("ledger.db");
            let config = demo::local_config(Mode::Monitor, &db).expect("config");
            let ledger = cmkguard_ledger::open(&format!("sqlite:{}", db.display()), None).await.expect("ledger");
            let clients = demo::azsim_clients(&sim, dir.path()).expect("clients");
            let pipeline = demo::pipeline(&config, clients.clone(), ledger.clone()).await.expect("pipeline");
            let act = cmkguard::act::ActStage::new(&config, ledger, Some(clients.clone())).expect("act");
            let sweeper = cmkguard::sweep::Sweeper { clients, act, subscriptions: vec![] };
            let t = Instant::now();
            let summary = sweeper.run(&pipeline, |_, _| {}).await.expect("sweep");
            let took = t.elapsed();
            assert_eq!(summary.registries, n);
            println!(
                "run {run}: {n} registries in {:.2} s ({} compliant, {} would remediate, {} failed)",
                took.as_secs_f64(),
                summary.compliant,
                summary.remediated,
                summary.failed
            );
            times.push(took.as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!("median: {:.2} s over {runs} runs", times[times.len() / 2]);
    });
}

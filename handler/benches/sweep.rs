//! Sweep of a generated azsim estate (10,000 registries by default; `SWEEP_REGISTRIES`
//! overrides) in monitor mode, in-process: Resource Graph listing, key facts (each key
//! once), the default policy and a SQLite audit record per registry.
//!
//! Each run times two ways of sweeping the same estate, alternately, on fresh ledgers:
//! - `sweep`: `Sweeper::run` as shipped (registry facts from the Resource Graph rows);
//! - `arm-get`: the earlier way, every registry through `Pipeline::handle` (one ARM GET
//!   per registry, 32 in flight), kept here as the baseline. `SWEEP_BASELINE=0` skips it.
//!
//! `cargo bench -p cmkguard --bench sweep`; `SWEEP_RUNS` (default 3) runs. Prints every
//! run and, last, `sweep median: X.XX s over N runs (arm-get baseline median: Y.YY s)`.

use std::sync::Arc;
use std::time::Instant;

use cmkguard::cli::demo;
use cmkguard::config::Mode;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The pre-Resource-Graph-facts sweep: one `Pipeline::handle` (ARM GET) per registry.
async fn arm_get_sweep(sweeper: &cmkguard::sweep::Sweeper, pipeline: &cmkguard::pipeline::Pipeline) -> usize {
    let budget = cmkguard_azure::Budget::new(std::time::Duration::from_secs(300));
    let rows = sweeper.clients.graph.all_registries(&[], &budget).await.expect("listing");
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for r in rows {
        let event = cmkguard::sweep::sweep_event(&run_id, cmkguard_model::ResourceId::parse(&r.id).expect("id"));
        let (pipeline, sem) = (pipeline.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            pipeline.handle(&event).await.is_ok()
        });
    }
    let mut ok = 0;
    while let Some(j) = tasks.join_next().await {
        ok += usize::from(j.unwrap_or(false));
    }
    ok
}

fn main() {
    let n: usize = std::env::var("SWEEP_REGISTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let runs: usize = std::env::var("SWEEP_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let baseline = std::env::var("SWEEP_BASELINE").map(|v| v != "0").unwrap_or(true);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let spec = azsim::estate::EstateSpec { registries: n, ..Default::default() };
        let sim = azsim::Azsim::start(azsim::estate::generate(&spec), azsim::Options::default()).await.expect("azsim");
        let (mut times, mut base) = (Vec::new(), Vec::new());
        for run in 0..runs {
            for arm_get in [false, true] {
                if arm_get && !baseline {
                    continue;
                }
                let dir = tempfile::tempdir().expect("temp dir");
                let db = dir.path().join("ledger.db");
                let config = demo::local_config(Mode::Monitor, &db).expect("config");
                let ledger = cmkguard_ledger::open(&format!("sqlite:{}", db.display()), None).await.expect("ledger");
                let clients = demo::azsim_clients(&sim, dir.path()).expect("clients");
                let pipeline = demo::pipeline(&config, clients.clone(), ledger.clone()).await.expect("pipeline");
                let act = cmkguard::act::ActStage::new(&config, ledger, Some(clients.clone())).expect("act");
                let sweeper = cmkguard::sweep::Sweeper {
                    clients,
                    act,
                    subscriptions: vec![],
                    settings: config.policy.settings.clone(),
                };
                let gets = sim.calls(azsim::Route::ArmRegistryGet);
                let t = Instant::now();
                if arm_get {
                    let ok = arm_get_sweep(&sweeper, &pipeline).await;
                    let took = t.elapsed().as_secs_f64();
                    assert_eq!(ok, n);
                    println!("run {run}: arm-get: {n} registries in {took:.2} s");
                    base.push(took);
                } else {
                    let summary = sweeper.run(&pipeline, |_, _| {}).await.expect("sweep");
                    let took = t.elapsed().as_secs_f64();
                    assert_eq!(summary.registries, n);
                    println!(
                        "run {run}: sweep: {n} registries in {took:.2} s ({} compliant, {} would remediate, {} failed, {} registry GETs)",
                        summary.compliant,
                        summary.remediated,
                        summary.failed,
                        sim.calls(azsim::Route::ArmRegistryGet) - gets
                    );
                    times.push(took);
                }
            }
        }
        let base = if base.is_empty() { "not run".to_owned() } else { format!("{:.2} s", median(base)) };
        println!("sweep median: {:.2} s over {runs} runs (arm-get baseline median: {base})", median(times));
    });
}

//! A server for HTTP load tests (`cargo xtask bench`, `cargo xtask load`): the real router,
//! decoder and stages, with the facts served from an in-memory cache instead of Azure.
//!
//! `--pipeline real` (the default): monitor mode, the default WASM policy (fresh sandbox
//! per event, precompiled artifact cache), the act stage with its SQLite ledger, no chat
//! channel; every event is a cache hit for the facts of a key near expiry used by 10
//! registries (the policy bench's input). Its decision (5 rotations, 2 notifications) has
//! no side effect here (monitor mode: "would do"; no channel: the notifications are
//! refused and recorded), so each event is one durable ledger write, the claim and the
//! audit record together (`Ledger::claim_or_record`).
//! `--pipeline noop`: the logging-only pipeline (no policy, no ledger), the HTTP path alone.
//! Logs as under Azure Functions: JSON lines at `info` on stderr.
//!
//! `cargo run --release -p cmkguard --example bench_serve -- --port 18090`

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use clap::Parser;
use cmkguard::pipeline::{Enrich, Pipeline, StageError};
use cmkguard_model::facts::EventInfo;
use cmkguard_model::{Event, PolicyInput};

#[derive(Debug, Parser)]
struct Args {
    /// Port on 127.0.0.1 (0: any; the bound address is printed on stdout).
    #[arg(long, default_value_t = 18090)]
    port: u16,
    /// `real` (policy, ledger, cached facts) or `noop` (HTTP and decoding only).
    #[arg(long, default_value = "real")]
    pipeline: String,
    /// SQLite ledger file [default: a fresh file in the temp dir].
    #[arg(long)]
    ledger: Option<std::path::PathBuf>,
    /// Precompiled policy cache [default: the temp dir's, as `serve`].
    #[arg(long)]
    policy_cache_dir: Option<std::path::PathBuf>,
    /// Tokio worker threads [default: one per core, as `serve`].
    #[arg(long)]
    workers: Option<usize>,
    /// Tokio blocking-pool threads at most [default: as `serve`, `cmkguard::blocking_threads`].
    #[arg(long)]
    max_blocking: Option<usize>,
    /// Log filter (`info`, as `serve` defaults to).
    #[arg(long, default_value = "info")]
    log: String,
    /// Log as JSON lines (as under Azure Functions) rather than text.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    json_logs: bool,
}

/// Facts from a cache: every event gets the cached key and registries (a cache hit).
struct CachedFacts {
    facts: PolicyInput,
}

#[async_trait]
impl Enrich for CachedFacts {
    async fn enrich(&self, event: &Event, now: DateTime<Utc>) -> Result<PolicyInput, StageError> {
        Ok(PolicyInput {
            event: EventInfo::from(event),
            now,
            key: self.facts.key.clone(),
            registries: self.facts.registries.clone(),
            settings: self.facts.settings.clone(),
        })
    }
}

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = args.workers {
        rt.worker_threads(w.max(1));
    }
    rt.max_blocking_threads(args.max_blocking.unwrap_or_else(cmkguard::blocking_threads).max(1));
    let rt = rt.enable_all().build().expect("runtime");
    rt.block_on(serve(args));
}

async fn serve(args: Args) {
    let format = if args.json_logs { cmkguard::config::LogFormat::Json } else { cmkguard::config::LogFormat::Text };
    cmkguard::logging::init(format, &args.log);
    let ledger = args.ledger.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cmkguard-bench-{}-{}.db", std::process::id(), args.port))
    });
    let mut flags = vec![
        "--port".to_owned(),
        args.port.max(1).to_string(),
        "--webhook-key".into(),
        "bench-key-0123456789".into(),
        "--mode".into(),
        "monitor".into(),
        "--ledger".into(),
        format!("sqlite:{}", ledger.display()),
        "--policy-reload-secs".into(),
        "0".into(),
        "--log".into(),
        args.log.clone(),
    ];
    if let Some(dir) = &args.policy_cache_dir {
        flags.push("--policy-cache-dir".into());
        flags.push(dir.display().to_string());
    }
    let mut config = cmkguard::config::Config::from_args(flags).expect("config");
    config.listen.set_port(args.port);
    let listener = tokio::net::TcpListener::bind(config.listen).await.expect("bind");
    let pipeline = match args.pipeline.as_str() {
        "noop" => Pipeline::logging_only(),
        "real" => {
            let mut p = Pipeline::logging_only();
            p.enrich = Arc::new(CachedFacts { facts: cmkguard_policy::sample::sample_input(10) });
            p.decide = Arc::new(cmkguard::decide::PolicyDecide::from_config(&config.policy).await.expect("policy"));
            p.act = Arc::new(cmkguard::act::ActStage::from_config(&config, None).await.expect("act stage"));
            p
        }
        other => panic!("--pipeline {other:?}: expected real or noop"),
    };
    let state = cmkguard::AppState::with_pipeline(config, pipeline);
    // The harness reads this line to learn the port.
    println!("bench_serve listening on {}", listener.local_addr().expect("local addr"));
    cmkguard::api::serve(listener, Arc::clone(&state)).await.expect("serve");
}

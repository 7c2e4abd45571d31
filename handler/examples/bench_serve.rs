//! A server for HTTP load tests of the spine alone: the real router and decoder with the
//! logging-only pipeline (no Azure, no policy), logs at `warn`. Used by BENCHMARKS.md's
//! wrk runs: `cargo run --release -p cmkguard --example bench_serve -- PORT`.

use std::sync::Arc;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(18090);
    cmkguard::logging::init(cmkguard::config::LogFormat::Text, "warn");
    let config =
        cmkguard::config::Config::from_args(["--port", &port.to_string(), "--webhook-key", "bench-key-0123456789"])
            .expect("config");
    let listener = tokio::net::TcpListener::bind(config.listen).await.expect("bind");
    let state = cmkguard::AppState::with_pipeline(config, cmkguard::pipeline::Pipeline::logging_only());
    eprintln!("bench_serve on {}", listener.local_addr().unwrap());
    cmkguard::api::serve(listener, Arc::clone(&state)).await.expect("serve");
}

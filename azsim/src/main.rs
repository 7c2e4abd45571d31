//! The azsim binary: start azsim from a scenario file and print its endpoints as JSON.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A local Azure stand-in (ARM, Key Vault, Resource Graph, managed identity).
#[derive(Debug, Parser)]
#[command(name = "azsim", version)]
struct Args {
    /// Scenario file (JSON, see azsim/SCENARIO.md).
    #[arg(long, required_unless_present = "estate")]
    scenario: Option<PathBuf>,
    /// Generate an estate of N registries instead of reading a scenario.
    #[arg(long)]
    estate: Option<usize>,
    /// HTTPS port for all Azure hosts (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Plain-HTTP port of the managed-identity endpoint (0 = any free port).
    #[arg(long, default_value_t = 0)]
    identity_port: u16,
    /// Write the CA certificate (PEM) here.
    #[arg(long)]
    write_ca: Option<PathBuf>,
    /// POST the Event Grid events azsim's changes cause to this URL.
    #[arg(long)]
    emit_events_to: Option<String>,
    /// Lifetime of issued tokens in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_secs: u64,
    /// InProgress answers before an LRO succeeds.
    #[arg(long, default_value_t = 1)]
    lro_polls: u32,
    /// Retry-After seconds on LRO responses.
    #[arg(long, default_value_t = 0)]
    lro_retry_after: u64,
    /// Fixed X-IDENTITY-HEADER value (random when absent).
    #[arg(long, env = "AZSIM_IDENTITY_HEADER")]
    identity_header: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AZSIM_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let scenario = match (&args.scenario, args.estate) {
        (Some(path), _) => match azsim::Scenario::from_file(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("azsim: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        (None, Some(n)) => azsim::estate::generate(&azsim::estate::EstateSpec { registries: n, ..Default::default() }),
        (None, None) => {
            eprintln!("azsim: --scenario or --estate is required");
            return std::process::ExitCode::from(2);
        }
    };
    let opts = azsim::Options {
        https_port: args.port,
        identity_port: args.identity_port,
        token_lifetime: Duration::from_secs(args.token_lifetime_secs.max(1)),
        identity_header: args.identity_header,
        lro_polls: args.lro_polls,
        lro_retry_after: args.lro_retry_after,
        emit_events_to: args.emit_events_to,
        ..Default::default()
    };
    let sim = match azsim::Azsim::start(scenario, opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("azsim: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if let Some(path) = &args.write_ca
        && let Err(e) = std::fs::write(path, sim.ca_pem())
    {
        eprintln!("azsim: cannot write CA to {}: {e}", path.display());
        return std::process::ExitCode::from(1);
    }
    println!("{}", sim.endpoints_json());
    let _ = tokio::signal::ctrl_c().await;
    sim.shutdown().await;
    std::process::ExitCode::SUCCESS
}

//! Repository tasks (`cargo xtask ...`): build the Azure Functions zip-deploy package
//! from the release binary, verify a package the way the Functions host will use it, and
//! rerun the performance targets (`bench`) with the HTTP load generator (`load`).

mod bench;
mod bench_load;
mod cargo;
mod elf;
mod package;
mod verify;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "cmkguard repository tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build `DIR/cmkguard.zip` for zip deploy: the production binary (release profile,
    /// `--no-default-features`: no demo emulator), host.json, the function folders and the
    /// default policy component.
    Package {
        /// Directory to write cmkguard.zip (and cmkguard-package.json) into.
        #[arg(long)]
        out: PathBuf,
        /// Rust target triple of the binary to ship, e.g. x86_64-unknown-linux-musl
        /// [default: the host target, i.e. target/release/cmkguard].
        #[arg(long)]
        target: Option<String>,
        /// Ship this binary instead of the one under target/.
        #[arg(long, conflicts_with = "target")]
        binary: Option<PathBuf>,
        /// Also ship this policy component as `policy/<file name>` (repeatable); point the
        /// CMKGUARD_POLICY app setting at `policy/<file name>` (relative to the app root) to use it.
        #[arg(long = "policy", value_name = "FILE")]
        policies: Vec<PathBuf>,
    },
    /// Unzip a package, check the layout the Functions host expects, start the binary as the
    /// host would (FUNCTIONS_CUSTOMHANDLER_PORT) and expect an answer to `GET /`.
    VerifyPackage {
        /// The zip to verify.
        zip: PathBuf,
        /// How long to wait for the binary to answer, in seconds.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
    /// Rerun every performance target (policy p50/p99, HTTP throughput in both shapes, peak
    /// RSS, cold start, 10,000-registry sweep) and print one table; also written as Markdown
    /// (target/bench/harness.md). Timings only: never part of the tests.
    Bench {
        /// Each row once and briefly (≈ 1 min) instead of repeated (≈ 3–5 min).
        #[arg(long)]
        quick: bool,
        /// Only these rows (repeatable): policy, http-functions, http-direct, cold-start, sweep.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Write the Markdown table here [default: target/bench/harness.md].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Connections for the Functions-envelope load.
        #[arg(long, default_value_t = 64)]
        functions_connections: u16,
        /// Connections for the direct-mode load.
        #[arg(long, default_value_t = 8)]
        direct_connections: u16,
        /// Events per direct-mode request.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Tokio workers of the server under load [default: one per core].
        #[arg(long)]
        server_workers: Option<usize>,
        /// Do not run cargo build first.
        #[arg(long)]
        no_build: bool,
    },
    /// HTTP load generator: keep-alive connections on one thread for a fixed time against a
    /// running server (e.g. the `bench_serve` example), distinct event ids per request.
    Load {
        /// Server address.
        #[arg(long, default_value = "127.0.0.1:18090")]
        addr: std::net::SocketAddr,
        /// `functions` (POST /KeyVaultEvents, 1 event) or `direct` (POST /api/events, --batch events).
        #[arg(long, default_value = "functions")]
        shape: String,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        connections: u16,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        warmup_secs: u64,
        /// Tells the event ids of runs against one ledger apart.
        #[arg(long, default_value_t = 0)]
        run: u32,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Package { out, target, binary, policies } => {
            package::run(&out, target.as_deref(), binary.as_deref(), &policies)
        }
        Command::VerifyPackage { zip, wait_secs } => verify::run(&zip, std::time::Duration::from_secs(wait_secs)),
        Command::Bench {
            quick,
            only,
            out,
            functions_connections,
            direct_connections,
            batch,
            server_workers,
            no_build,
        } => bench::run(&bench::Options {
            quick,
            only,
            out,
            functions_connections,
            direct_connections,
            batch,
            server_workers,
            no_build,
        }),
        Command::Load { addr, shape, batch, connections, seconds, warmup_secs, run } => {
            load(addr, &shape, batch, connections, seconds, warmup_secs, run)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn load(
    addr: std::net::SocketAddr,
    shape: &str,
    batch: usize,
    connections: u16,
    seconds: u64,
    warmup_secs: u64,
    run: u32,
) -> anyhow::Result<()> {
    let shape = match shape {
        "functions" => bench_load::Shape::Functions,
        "direct" => bench_load::Shape::Direct(batch.max(1)),
        other => anyhow::bail!("--shape {other:?}: expected functions or direct"),
    };
    let template = bench_load::Template::new(&repo_root(), shape)?;
    let spec = bench_load::LoadSpec {
        addr,
        shape,
        connections: connections.max(1),
        warmup: std::time::Duration::from_secs(warmup_secs),
        duration: std::time::Duration::from_secs(seconds.max(1)),
        run,
    };
    let r = bench_load::run(&spec, &template)?;
    println!("{}: {}", shape.label(), r.summary());
    Ok(())
}

/// The repository root (this crate lives in `xtask/`).
fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

//! Repository tasks (`cargo xtask ...`): build the Azure Functions zip-deploy package
//! from the release binary, and verify a package the way the Functions host will use it.

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
    /// Build `DIR/cmkguard.zip` for zip deploy: the release binary (built only if missing),
    /// host.json, the function folders and the default policy component.
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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Package { out, target, binary, policies } => {
            package::run(&out, target.as_deref(), binary.as_deref(), &policies)
        }
        Command::VerifyPackage { zip, wait_secs } => verify::run(&zip, std::time::Duration::from_secs(wait_secs)),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The repository root (this crate lives in `xtask/`).
fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

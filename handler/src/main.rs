//! The `cmkguard` binary: parses the command line and runs it (see `cli`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmkguard::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(cmkguard::blocking_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    std::process::ExitCode::from(runtime.block_on(cmkguard::cli::run(cli)))
}

//! The command line: one subcommand per job, each in its own module.
//!
//! Exit codes are shared by every command: 0 ok, 1 findings at or above `--fail-on`
//! or a failed test case, 2 bad input or configuration.

use clap::{Parser, Subcommand};

pub mod audit;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doctor;
pub mod eval;
pub mod policy;
pub mod serve;
pub mod sweep;

/// cmkguard keeps Azure Container Registry customer-managed-key encryption healthy.
///
/// It runs as an Azure Functions custom handler (`serve`), receives Event Grid events
/// about registries and Key Vault keys, asks a sandboxed WebAssembly policy what to do,
/// and records, remediates and notifies accordingly.
#[derive(Debug, Parser)]
#[command(name = "cmkguard", version, about, long_about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Azure Functions custom-handler protocol (and direct webhook mode).
    Serve(serve::Args),
    /// Read the audit trail (list records, show one event's record).
    Audit(audit::Args),
    /// Run a policy on an event file and print the decision as JSON.
    Eval(eval::Args),
    /// Inspect, test and benchmark policy components.
    Policy(policy::Args),
    /// Check a deployment: configuration, identity, Azure permissions, chat channels.
    Doctor(doctor::Args),
    /// Run cmkguard end to end against a local Azure emulator (no Azure account needed).
    #[cfg(feature = "demo")]
    Demo(demo::Args),
    /// Evaluate every registry now (Resource Graph), as the Sweep timer does.
    Sweep(sweep::Args),
}

/// Process exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    /// Findings at or above `--fail-on`, or a failed test case.
    pub const FINDINGS: u8 = 1;
    /// Bad input or configuration.
    pub const BAD_INPUT: u8 = 2;
}

/// An error that ends a command with an exit code and a message for the user.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn bad_input(message: impl std::fmt::Display) -> Self {
        Self { code: exit::BAD_INPUT, message: message.to_string() }
    }
}

impl<E: std::fmt::Display> From<E> for CliError
where
    E: std::error::Error,
{
    fn from(e: E) -> Self {
        Self::bad_input(e)
    }
}

/// Runs the parsed command and returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Eval(args) => eval::run(args).await,
        Command::Policy(args) => policy::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args).await,
        Command::Sweep(args) => sweep::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

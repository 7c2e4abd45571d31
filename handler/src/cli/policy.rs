//! `cmkguard policy check | test | bench`: inspect a policy component, run the shared
//! test cases against it, measure its per-evaluation latency.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmkguard_model::PolicyInput;
use cmkguard_policy::testcase::{CaseOutcome, run_dir};
use cmkguard_policy::{Limits, Policy, PolicyEngine};
use serde::Serialize;

use super::{CliError, exit};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Load a policy and report its metadata, contract version, imports, size and compile time.
    Check {
        /// Policy component file, or `builtin`.
        file: String,
        /// Settings file (JSON object) to validate with the policy.
        #[arg(long)]
        settings: Option<PathBuf>,
    },
    /// Run every test case in DIR (input + expected decision per policy) against the policy.
    Test {
        /// Policy component file, or `builtin`.
        file: String,
        /// Directory of test-case JSON files (e.g. policy-wasm/testcases).
        dir: PathBuf,
    },
    /// Measure evaluation latency with a fresh sandbox per evaluation (p50/p99).
    Bench {
        /// Policy component file, or `builtin`.
        file: String,
        /// Input to evaluate [default: a sample key near expiry with --registries registries].
        #[arg(long)]
        facts: Option<PathBuf>,
        /// Registries in the sample input.
        #[arg(long, default_value_t = 10)]
        registries: usize,
        /// Evaluations to time.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
        /// Settings file (JSON object).
        #[arg(long)]
        settings: Option<PathBuf>,
        /// Bytes of each sandbox memory reset in place rather than returned to the kernel.
        #[arg(long, default_value_t = Limits::default().keep_resident_bytes)]
        keep_resident: usize,
        /// Reset only the dirtied pages of each sandbox memory (Linux PAGEMAP_SCAN).
        #[arg(long, default_value_t = Limits::default().pagemap_scan, action = clap::ArgAction::Set)]
        pagemap_scan: bool,
        /// Fill function tables at instantiation instead of on first use.
        #[arg(long, default_value_t = Limits::default().eager_tables, action = clap::ArgAction::Set)]
        eager_tables: bool,
        /// Write /tmp/perf-PID.map so that `perf report` names the policy's functions.
        #[arg(long)]
        perf_map: bool,
    },
}

/// Reads a settings file: a JSON object, returned as its text.
pub fn read_settings(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::bad_input(format!("{}: {e}", path.display())))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => Ok(text),
        Ok(_) => Err(CliError::bad_input(format!("{}: settings must be a JSON object", path.display()))),
        Err(e) => Err(CliError::bad_input(format!("{}: not JSON: {e}", path.display()))),
    }
}

fn engine() -> Result<PolicyEngine, CliError> {
    PolicyEngine::new(Limits::default(), Some(std::env::temp_dir().join("cmkguard-policy-cache")))
        .map_err(CliError::bad_input)
}

fn read_module(file: &str) -> Result<Vec<u8>, CliError> {
    if file == "builtin" {
        return Ok(cmkguard_policy::DEFAULT_POLICY.to_vec());
    }
    std::fs::read(file).map_err(|e| CliError::bad_input(format!("{file}: {e}")))
}

/// Loads a policy file (or `builtin`) and validates `settings` with it.
pub fn load_policy(file: &str, settings: &str) -> Result<Policy, CliError> {
    let bytes = read_module(file)?;
    engine()?.load(&bytes, file, settings).map_err(|e| CliError::bad_input(format!("{file}: {e}")))
}

#[derive(Serialize)]
struct CheckReport<'a> {
    name: &'a str,
    version: &'a str,
    contract: &'a str,
    sha256: &'a str,
    size_bytes: usize,
    imports: &'a [String],
    exports: &'a [String],
    compile_ms: f64,
    precompiled_load_ms: f64,
}

pub async fn run(args: Args) -> Result<u8, CliError> {
    match args.command {
        Command::Check { file, settings } => check(&file, settings.as_deref()),
        Command::Test { file, dir } => test(&file, &dir),
        Command::Bench {
            file,
            facts,
            registries,
            iterations,
            settings,
            keep_resident,
            pagemap_scan,
            eager_tables,
            perf_map,
        } => {
            let sandbox = Limits {
                keep_resident_bytes: keep_resident,
                pagemap_scan,
                eager_tables,
                perf_map,
                ..Limits::default()
            };
            bench(&file, facts.as_deref(), registries, iterations, settings.as_deref(), sandbox)
        }
    }
}

fn check(file: &str, settings: Option<&Path>) -> Result<u8, CliError> {
    let settings = settings.map(read_settings).transpose()?.unwrap_or_else(|| "{}".to_owned());
    let bytes = read_module(file)?;
    // Compile without a cache to report the real compile time, then time a cached load.
    let fresh = PolicyEngine::new(Limits::default(), None).map_err(CliError::bad_input)?;
    let policy = fresh.load(&bytes, file, &settings).map_err(|e| CliError::bad_input(format!("{file}: {e}")))?;
    let cache = std::env::temp_dir().join("cmkguard-policy-cache");
    let cached = PolicyEngine::new(Limits::default(), Some(cache)).map_err(CliError::bad_input)?;
    cached.load(&bytes, file, &settings).map_err(CliError::bad_input)?;
    let warm = cached.load(&bytes, file, &settings).map_err(CliError::bad_input)?;
    let (r, info) = (policy.reference(), policy.info());
    let report = CheckReport {
        name: &r.name,
        version: &r.version,
        contract: &info.contract_version,
        sha256: &r.digest,
        size_bytes: info.size,
        imports: &info.imports,
        exports: &info.exports,
        compile_ms: ms(info.compile_time),
        precompiled_load_ms: ms(warm.info().compile_time),
    };
    println!("{}", serde_json::to_string_pretty(&report).map_err(CliError::bad_input)?);
    Ok(exit::OK)
}

fn test(file: &str, dir: &Path) -> Result<u8, CliError> {
    let policy = load_policy(file, "{}")?;
    let results = run_dir(&policy, dir).map_err(CliError::bad_input)?;
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for r in &results {
        let name = r.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match &r.outcome {
            CaseOutcome::Passed => {
                passed += 1;
                println!("PASS {name}");
            }
            CaseOutcome::Skipped => {
                skipped += 1;
                println!("SKIP {name} (no expectation for {})", policy.reference().name);
            }
            CaseOutcome::Failed(why) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
    }
    println!(
        "{} {}: {passed} passed, {failed} failed, {skipped} skipped",
        policy.reference().name,
        policy.reference().version
    );
    if failed > 0 || passed == 0 {
        if passed == 0 {
            eprintln!("error: no test case in {} has an expectation for {}", dir.display(), policy.reference().name);
        }
        return Ok(exit::FINDINGS);
    }
    Ok(exit::OK)
}

fn bench(
    file: &str,
    facts: Option<&Path>,
    registries: usize,
    iterations: usize,
    settings: Option<&Path>,
    limits: Limits,
) -> Result<u8, CliError> {
    let settings = settings.map(read_settings).transpose()?.unwrap_or_else(|| "{}".to_owned());
    let engine = PolicyEngine::new(limits, Some(std::env::temp_dir().join("cmkguard-policy-cache")))
        .map_err(CliError::bad_input)?;
    let policy =
        engine.load(&read_module(file)?, file, &settings).map_err(|e| CliError::bad_input(format!("{file}: {e}")))?;
    let input: PolicyInput = match facts {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| CliError::bad_input(format!("{}: {e}", path.display())))?;
            PolicyInput::from_json(&text).map_err(|e| CliError::bad_input(format!("{}: {e}", path.display())))?
        }
        None => cmkguard_policy::sample::sample_input(registries),
    };
    let iterations = iterations.max(10);
    for _ in 0..iterations.min(200) {
        policy.evaluate(&input).map_err(|e| CliError::bad_input(format!("the policy fails on this input: {e}")))?;
    }
    let mut times: Vec<Duration> = (0..iterations)
        .map(|_| {
            let t = Instant::now();
            let r = policy.evaluate(&input);
            let took = t.elapsed();
            drop(r);
            took
        })
        .collect();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{} {}: {iterations} evaluations, fresh sandbox each, {} registries: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        policy.reference().name,
        policy.reference().version,
        input.registries.len(),
        us(pct(0.50)),
        us(pct(0.99)),
        us(times[times.len() - 1]),
    );
    Ok(exit::OK)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

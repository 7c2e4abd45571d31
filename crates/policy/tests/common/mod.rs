//! Helpers shared by the policy engine's integration tests: hand-written core modules
//! wrapped into components, sample inputs, the built policy components.
#![allow(dead_code)]

pub mod https;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cmkguard_model::PolicyInput;
use cmkguard_policy::{Limits, PolicyEngine};

pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// An engine with test-friendly limits (the production defaults, a 64 MiB memory cap).
pub fn engine() -> PolicyEngine {
    PolicyEngine::new(Limits { memory_bytes: 64 << 20, timeout: Duration::from_millis(50), ..Limits::default() }, None)
        .unwrap()
}

/// An engine whose deadline outlasts a busy machine's scheduling hiccups (5 s): for tests
/// about something else than deadlines, whose worker threads may outnumber the cores.
pub fn patient_engine() -> PolicyEngine {
    PolicyEngine::new(Limits { memory_bytes: 64 << 20, timeout: Duration::from_secs(5), ..Limits::default() }, None)
        .unwrap()
}

/// The component built by build.rs from the core module `tests/data/<name>`.
pub fn component(name: &str) -> Vec<u8> {
    let file = Path::new(env!("CMKGUARD_TEST_COMPONENTS")).join(name.replace(".wat", ".wasm"));
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The policy components built by `build.rs` (`default-policy.wasm`, `template-policy.wasm`)
/// and by scripts/setup.d/20-policy.sh (`python-notify.wasm`).
pub fn built(name: &str) -> PathBuf {
    Path::new(cmkguard_policy::COMPONENTS_DIR).join(name)
}

pub fn sample_input(n: usize) -> PolicyInput {
    cmkguard_policy::sample::sample_input(n)
}

//! Errors of the policy engine: loading a module (refused, nothing changes) and
//! evaluating it (a policy error: the caller fails safe).

use std::path::PathBuf;

/// Why a policy module was refused. The previous module (if any) keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading policy {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("fetching policy from {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("policy manifest {url}: {message}")]
    Manifest { url: String, message: String },
    #[error("policy digest mismatch: expected sha256 {expected}, got {actual}; module refused")]
    DigestMismatch { expected: String, actual: String },
    #[error("policy module is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("policy does not compile: {0}")]
    Compile(String),
    #[error(
        "policy imports {0:?}; a policy may import only cmkguard:policy/log (no WASI files, sockets, clocks or environment)"
    )]
    ForbiddenImport(String),
    #[error(
        "policy exports {found}, not cmkguard:policy/evaluator@{expected}: built for a contract version this host does not speak"
    )]
    WrongContract { found: String, expected: &'static str },
    #[error(
        "policy reports contract version {0:?}, which does not match the evaluator it exports; this host speaks {1}"
    )]
    ContractVersion(String, &'static str),
    #[error("policy cannot be instantiated: {0}")]
    Instantiate(String),
    #[error("policy metadata: {0}")]
    Metadata(String),
    #[error("policy refused its settings: {0}")]
    Settings(String),
    #[error("policy cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("engine: {0}")]
    Engine(String),
}

/// Why one evaluation produced no decision. Every variant is a policy error: no
/// remediation happens, an audit record and an alert do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("input: {0}")]
    Input(String),
    #[error("policy exceeded its deadline of {0} ms")]
    Timeout(u64),
    #[error("policy exceeded its memory limit of {0} MiB")]
    MemoryLimit(usize),
    #[error("policy overflowed its stack")]
    StackOverflow,
    #[error("policy trapped: {0}")]
    Trap(String),
    #[error("policy could not be instantiated: {0}")]
    Instantiate(String),
    #[error("policy returned an error: {0}")]
    Policy(String),
    #[error("invalid decision: {0}")]
    InvalidDecision(String),
}

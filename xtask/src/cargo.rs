//! The nested `cargo` that the tasks run (the package's production build, the benchmark's
//! builds), with the environment `cargo run` gave xtask itself removed.
//!
//! `cargo xtask …` is `cargo run -p xtask`, which sets `CARGO_MANIFEST_DIR`,
//! `CARGO_PKG_NAME`, `CARGO_PKG_VERSION_*` and friends for the xtask process. Build
//! scripts declare some of these as inputs (`ring`'s does: `rerun-if-env-changed=
//! CARGO_PKG_NAME`), and cargo compares them with its own environment, so a nested build
//! that inherited xtask's values rebuilt `ring` and everything above it, and the next
//! plain `cargo run -- demo` rebuilt them back (≈ 1 min of CI).

use std::process::Command;

/// `$CARGO` (the cargo that runs xtask), without xtask's own package variables.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if is_run_variable(key) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A variable `cargo run` sets for the package it runs (not one a user or a cargo
/// configuration sets: `CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*` stay).
fn is_run_variable(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_MANIFEST_")
        || matches!(key, "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE")
}

#[cfg(test)]
mod tests {
    use super::is_run_variable;

    #[test]
    fn only_the_run_package_variables_are_removed() {
        for key in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
        ] {
            assert!(is_run_variable(key), "{key}");
        }
        for key in
            ["CARGO", "CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS", "AWS_LC_SYS_NO_JITTER_ENTROPY", "PATH"]
        {
            assert!(!is_run_variable(key), "{key}");
        }
    }
}

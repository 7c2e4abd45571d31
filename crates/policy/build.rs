//! Builds the policies in `policy-wasm/` (Rust → wasm32-unknown-unknown → component) so
//! that the default policy can be embedded and a plain `cargo build` needs no extra step.
//!
//! The nested cargo runs with its own target dir (`target/policy-wasm`) and an environment
//! scrubbed of the outer build's `CARGO_*`/`RUSTFLAGS` variables, which would otherwise
//! leak host settings into the wasm build. The wasm target is installed with rustup when
//! missing. Each module is wrapped into a component with `wit-component`: no WASI imports.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";
/// (cargo package, file name of the core module, name of the component written).
const POLICIES: &[(&str, &str, &str)] = &[
    ("cmkguard-default-policy", "cmkguard_default_policy.wasm", "default-policy.wasm"),
    ("cmkguard-policy-template", "cmkguard_policy_template.wasm", "template-policy.wasm"),
];

fn main() {
    if let Err(e) = run() {
        // A clear, single message instead of a panic backtrace.
        eprintln!("error: building the WebAssembly policies failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest.join("../..").canonicalize().map_err(|e| format!("workspace root: {e}"))?;
    let policies = root.join("policy-wasm");
    for p in [
        "wit",
        "policy-wasm/Cargo.toml",
        "policy-wasm/Cargo.lock",
        "policy-wasm/.cargo/config.toml",
        "policy-wasm/sdk",
        "policy-wasm/default",
        "policy-wasm/template",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target_root = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let wasm_target_dir = target_root.join("policy-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());

    ensure_wasm_target()?;

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&policies).args(["build", "--release", "--locked", "--target", TARGET]);
    // The policies only: the workspace also holds a native profiling harness.
    for (package, _, _) in POLICIES {
        cmd.args(["-p", package]);
    }
    cmd.arg("--target-dir").arg(&wasm_target_dir);
    scrub(&mut cmd);
    let status = cmd.status().map_err(|e| format!("running {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --release --target {TARGET}` in {} failed ({status}); see the output above",
            policies.display()
        ));
    }

    let components = wasm_target_dir.join("components");
    std::fs::create_dir_all(&components).map_err(|e| format!("{}: {e}", components.display()))?;
    for (package, module, component) in POLICIES {
        let module_path = wasm_target_dir.join(TARGET).join("release").join(module);
        let bytes = std::fs::read(&module_path).map_err(|e| format!("{}: {e}", module_path.display()))?;
        let wrapped = wit_component::ComponentEncoder::default()
            .module(&bytes)
            .and_then(|enc| enc.validate(true).encode())
            .map_err(|e| format!("wrapping {package} into a component: {e:#}"))?;
        write(&out_dir.join(component), &wrapped)?;
        // A stable path for the CLI and tests: target/policy-wasm/components/<name>.
        write(&components.join(component), &wrapped)?;
    }
    println!("cargo:rustc-env=CMKGUARD_POLICY_COMPONENTS={}", components.display());

    let hostile = out_dir.join("test-components");
    std::fs::create_dir_all(&hostile).map_err(|e| format!("{}: {e}", hostile.display()))?;
    test_components(&manifest.join("tests/data"), &root.join("wit"), &hostile)?;
    println!("cargo:rustc-env=CMKGUARD_TEST_COMPONENTS={}", hostile.display());
    Ok(())
}

const HOSTILE_WIT: &str = r#"
package hostile:policy;
world fs { import wasi:filesystem/types@0.2.0; include cmkguard:policy/policy@1.0.0; }
world sockets { import wasi:sockets/tcp@0.2.0; include cmkguard:policy/policy@1.0.0; }
"#;
const WASI_FS: &str = "package wasi:filesystem@0.2.0; interface types { read-file: func(path: string) -> list<u8>; }";
const WASI_SOCKETS: &str = "package wasi:sockets@0.2.0; interface tcp { connect: func(host: string); }";

/// Wraps the hand-written core modules in `tests/data/*.wat` (the hostile policies of the
/// tests) into components of contract 1's world (`wit/policy.wit`: they also prove that
/// the host still runs version-1 policies), or of the world each was written for (a WASI
/// import, contract 3.0.0, which does not exist). Cheap (a few small modules); done here
/// so that the tests need no wasm tooling of their own.
fn test_components(data: &Path, wit: &Path, out: &Path) -> Result<(), String> {
    println!("cargo:rerun-if-changed={}", data.display());
    let entries = std::fs::read_dir(data).map_err(|e| format!("{}: {e}", data.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".wat")) else {
            continue;
        };
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let mut module = wat::parse_file(&path).map_err(|e| fail(&e))?;
        let mut resolve = wit_parser::Resolve::default();
        let world = if name == "wrong-contract" {
            let src =
                std::fs::read_to_string(wit.join("policy.wit")).map_err(|e| fail(&e))?.replace("@1.0.0", "@3.0.0");
            let pkg = resolve.push_str("policy.wit", &src).map_err(|e| fail(&e))?;
            resolve.select_world(&[pkg], Some("policy")).map_err(|e| fail(&e))?
        } else {
            let (pkg, _) = resolve.push_dir(wit).map_err(|e| fail(&e))?;
            match name {
                "wasi-filesystem-import" | "wasi-sockets-import" => {
                    resolve.push_str("fs.wit", WASI_FS).map_err(|e| fail(&e))?;
                    resolve.push_str("sockets.wit", WASI_SOCKETS).map_err(|e| fail(&e))?;
                    let hostile = resolve.push_str("hostile.wit", HOSTILE_WIT).map_err(|e| fail(&e))?;
                    let world = if name.contains("filesystem") { "fs" } else { "sockets" };
                    resolve.select_world(&[hostile], Some(world)).map_err(|e| fail(&e))?
                }
                _ => resolve.select_world(&[pkg], Some("policy")).map_err(|e| fail(&e))?,
            }
        };
        wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)
            .map_err(|e| fail(&e))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|enc| enc.validate(true).encode())
            .map_err(|e| fail(&format!("{e:#}")))?;
        write(&out.join(format!("{name}.wasm")), &component)?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Removes the outer build's settings: they describe the host build, not the wasm one.
fn scrub(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = matches!(
            key,
            "CARGO_HOME" | "CARGO_MAKEFLAGS" | "CARGO_NET_OFFLINE" | "CARGO_REGISTRIES_CRATES_IO_PROTOCOL"
        );
        let leaks = (key.starts_with("CARGO_") && !keep)
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTC_LINKER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            )
            || key.starts_with("DEP_");
        if leaks {
            cmd.env_remove(key);
        }
    }
}

/// Installs the wasm target with rustup if this toolchain lacks it.
fn ensure_wasm_target() -> Result<(), String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .map_err(|e| format!("running {rustc}: {e}"))?;
    let dir = String::from_utf8_lossy(&libdir.stdout).trim().to_owned();
    if libdir.status.success() && has_std(Path::new(&dir)) {
        return Ok(());
    }
    println!("cargo:warning=installing the {TARGET} target with rustup (needed to build the policies)");
    let status = Command::new("rustup").args(["target", "add", TARGET]).status().map_err(|e| {
        format!("the {TARGET} Rust target is missing and rustup could not be run ({e}); install it with `rustup target add {TARGET}`")
    })?;
    if !status.success() {
        return Err(format!("`rustup target add {TARGET}` failed ({status}); install the target by hand and rebuild"));
    }
    Ok(())
}

fn has_std(libdir: &Path) -> bool {
    std::fs::read_dir(libdir)
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        .unwrap_or(false)
}

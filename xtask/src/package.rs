//! `cargo xtask package`: the zip-deploy package. Layout at the zip root, as the Functions
//! host expects it in wwwroot: `host.json`, the `cmkguard` binary (mode 0755),
//! `functions/<Name>/function.json` for every function folder, `policy/default-policy.wasm`
//! (the embedded default policy, shipped for reference and as a starting point), and
//! `cmkguard-package.json` (file digests and the binary's linkage).
//!
//! The binary is the production build: `--no-default-features`, i.e. without the `demo`
//! feature that links the azsim emulator (`verify-package` checks it is absent).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

use crate::{elf, repo_root};

/// Newest glibc on every Functions Linux worker image we may land on: host v4 images were
/// Debian 11 "bullseye" (glibc 2.31) and move to Debian 12 "bookworm" (2.36) and Ubuntu
/// 24.04 (2.39); an app can be pinned back to the old image. A binary needing more than
/// this may fail to start there: build it with `--target x86_64-unknown-linux-musl`.
pub const WORKER_GLIBC_FLOOR: (u32, u32) = (2, 31);

pub const BINARY_NAME: &str = "cmkguard";
pub const ZIP_NAME: &str = "cmkguard.zip";

/// One file of the package.
struct Entry {
    name: String,
    bytes: Vec<u8>,
    mode: u32,
}

pub fn run(out: &Path, target: Option<&str>, binary: Option<&Path>, policies: &[PathBuf]) -> Result<()> {
    let root = repo_root();
    let (binary, built) = match binary {
        Some(b) => (b.to_path_buf(), false),
        None => (release_binary(&root, target, out)?, true),
    };
    let bin_bytes = strip_debug_info(&binary, out)?;
    if built {
        let _ = std::fs::remove_file(&binary);
    }
    let linkage = elf::inspect(&bin_bytes)
        .with_context(|| format!("{} cannot run on the Functions Linux workers", binary.display()))?;
    match (&linkage.interpreter, linkage.glibc) {
        (None, _) => println!("binary: {} (static, no glibc needed)", binary.display()),
        (Some(interp), Some(v)) if v > WORKER_GLIBC_FLOOR => println!(
            "warning: {} needs GLIBC_{}.{} ({interp}); workers on Debian 11 images have {}.{}. \
             Bookworm/Noble images have enough; for any image build with --target x86_64-unknown-linux-musl",
            binary.display(),
            v.0,
            v.1,
            WORKER_GLIBC_FLOOR.0,
            WORKER_GLIBC_FLOOR.1
        ),
        (Some(interp), _) => println!("binary: {} (dynamic, {interp})", binary.display()),
    }

    let mut entries = vec![
        Entry { name: "host.json".into(), bytes: read(&root.join("host.json"))?, mode: 0o644 },
        Entry { name: BINARY_NAME.into(), bytes: bin_bytes, mode: 0o755 },
    ];
    check_host_json(&entries[0].bytes)?;
    let functions = function_folders(&root)?;
    if functions.is_empty() {
        bail!("no functions/<Name>/function.json found under {}", root.display());
    }
    for name in &functions {
        let path = root.join("functions").join(name).join("function.json");
        entries.push(Entry { name: format!("functions/{name}/function.json"), bytes: read(&path)?, mode: 0o644 });
    }
    let target_dir = root.join("target");
    let policy = target_dir.join("policy-wasm/components/default-policy.wasm");
    if policy.is_file() {
        entries.push(Entry { name: "policy/default-policy.wasm".into(), bytes: read(&policy)?, mode: 0o644 });
    } else {
        println!("note: {} not built; the package relies on the policy embedded in the binary", policy.display());
    }

    for p in policies {
        let bytes = read(p)?;
        if bytes.get(..4) != Some(b"\0asm") {
            bail!("{} is not a WebAssembly file", p.display());
        }
        let name = p.file_name().context("policy path has no file name")?.to_string_lossy().into_owned();
        if entries.iter().any(|e| e.name == format!("policy/{name}")) {
            bail!("policy/{name} is already in the package");
        }
        println!(
            "policy/{name}: sha256 {} (set CMKGUARD_POLICY_SHA256 to pin it)",
            hex::encode(Sha256::digest(&bytes))
        );
        entries.push(Entry { name: format!("policy/{name}"), bytes, mode: 0o644 });
    }

    let manifest = serde_json::json!({
        "package": "cmkguard",
        "version": env!("CARGO_PKG_VERSION"),
        "binary": {
            "name": BINARY_NAME,
            "static": linkage.interpreter.is_none(),
            "interpreter": linkage.interpreter,
            "glibc": linkage.glibc.map(|(a, b)| format!("{a}.{b}")),
            "build": if built { "cargo build --release --no-default-features (no demo, no azsim)" } else { "given with --binary" },
        },
        "functions": functions,
        "files": entries.iter().map(|e| serde_json::json!({
            "name": e.name, "size": e.bytes.len(), "sha256": hex::encode(Sha256::digest(&e.bytes)),
        })).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    entries.push(Entry { name: "cmkguard-package.json".into(), bytes: manifest_bytes.clone(), mode: 0o644 });

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let zip_path = out.join(ZIP_NAME);
    write_zip(&zip_path, &entries)?;
    std::fs::write(out.join("cmkguard-package.json"), &manifest_bytes)?;
    let zip_bytes = read(&zip_path)?;
    println!(
        "wrote {} ({} files, {} bytes, sha256 {})",
        zip_path.display(),
        entries.len(),
        zip_bytes.len(),
        hex::encode(Sha256::digest(&zip_bytes))
    );
    Ok(())
}

/// The binary without its DWARF sections (the release profile keeps line tables, which
/// multiply the size; symbols stay for backtraces). Uses binutils' `objcopy` when present.
fn strip_debug_info(binary: &Path, out: &Path) -> Result<Vec<u8>> {
    let original = read(binary)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let stripped = out.join(".cmkguard.stripped");
    match Command::new("objcopy").arg("--strip-debug").arg(binary).arg(&stripped).status() {
        Ok(s) if s.success() => {
            let bytes = read(&stripped)?;
            let _ = std::fs::remove_file(&stripped);
            println!("stripped debug info: {} -> {} bytes", original.len(), bytes.len());
            Ok(bytes)
        }
        _ => {
            let _ = std::fs::remove_file(&stripped);
            println!("note: objcopy unavailable or failed; shipping the binary with its debug info");
            Ok(original)
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The production binary for `target`: `cargo build --release --no-default-features`, so
/// the `demo` feature (the azsim emulator and its TLS stack) is not linked in. Same
/// profile and target dir as every other build: the dependencies are shared with the
/// workspace build, only the crates whose features differ are compiled a second time (once;
/// cargo keeps both feature sets side by side in `deps/`).
///
/// Cargo copies the binary it built to `target/<triple>/release/cmkguard`, the same path
/// the workspace build uses for the default (demo) binary. The production binary is
/// copied out of that path at once, and the default binary put back (a fresh build that
/// only re-links the file) when it was there before, so tests and `cargo run -- demo`
/// keep finding the binary they expect.
fn release_binary(root: &Path, target: Option<&str>, out: &Path) -> Result<PathBuf> {
    let dir = match target {
        Some(t) => root.join("target").join(t).join("release"),
        None => root.join("target/release"),
    };
    let uplifted = dir.join(BINARY_NAME);
    let had_default = uplifted.is_file();
    let build = |production: bool| -> Result<()> {
        let mut cmd = crate::cargo::cargo();
        cmd.current_dir(root).args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "-p",
            "cmkguard",
            "--bin",
            BINARY_NAME,
        ]);
        if production {
            cmd.arg("--no-default-features");
        }
        if let Some(t) = target {
            cmd.args(["--target", t]);
        }
        let status = cmd.status().context("running cargo build")?;
        if !status.success() || !uplifted.is_file() {
            let what = if production { "--no-default-features " } else { "" };
            bail!("cargo build --release {what}of {BINARY_NAME} failed ({status})");
        }
        Ok(())
    };
    println!("building the production binary (cargo build --release --no-default-features: no demo, no azsim)");
    build(true)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let production = out.join(".cmkguard.production");
    std::fs::copy(&uplifted, &production)
        .with_context(|| format!("copying {} to {}", uplifted.display(), production.display()))?;
    if had_default && let Err(e) = build(false) {
        println!("warning: could not put the default (demo) binary back at {}: {e:#}", uplifted.display());
    }
    Ok(production)
}

/// The folders under `functions/` that hold a function.json, sorted.
pub fn function_folders(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("functions");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.path().join("function.json").is_file() {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// host.json must start `cmkguard` from the package root.
pub fn check_host_json(bytes: &[u8]) -> Result<Vec<String>> {
    let host: serde_json::Value = serde_json::from_slice(bytes).context("host.json is not JSON")?;
    let desc = &host["customHandler"]["description"];
    let exe = desc["defaultExecutablePath"]
        .as_str()
        .context("host.json: customHandler.description.defaultExecutablePath missing")?;
    if exe != BINARY_NAME {
        bail!("host.json starts {exe:?}, but the package ships {BINARY_NAME:?}");
    }
    let args = desc["arguments"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    Ok(args)
}

fn write_zip(path: &Path, entries: &[Entry]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(file);
    for e in entries {
        // Fixed timestamps (the zip default, 1980-01-01) keep the package reproducible.
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).unix_permissions(e.mode);
        zip.start_file(e.name.as_str(), options)?;
        zip.write_all(&e.bytes)?;
    }
    zip.finish()?;
    Ok(())
}

//! `cargo xtask verify-package`: unzip a package as zip deploy would, check the layout the
//! Functions host expects (host.json at the root naming an executable `cmkguard`, one
//! folder per function with its function.json, nothing unexpected), then start the binary
//! the way the host does (its arguments from host.json, `FUNCTIONS_CUSTOMHANDLER_PORT`,
//! wwwroot as working directory) and expect an HTTP answer to `GET /` on that port.
//! It also checks that the binary is the production build: no `demo` subcommand and no
//! code of the azsim emulator linked in.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::package::{BINARY_NAME, check_host_json, function_folders};
use crate::repo_root;

pub fn run(zip_path: &Path, wait: Duration) -> Result<()> {
    let dir = unique_temp_dir()?;
    let result = verify_in(zip_path, &dir, wait);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn verify_in(zip_path: &Path, dir: &Path, wait: Duration) -> Result<()> {
    let file = std::fs::File::open(zip_path).with_context(|| format!("opening {}", zip_path.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip", zip_path.display()))?;
    let mut names = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let name = entry.enclosed_name().with_context(|| format!("unsafe path in zip: {:?}", entry.name()))?;
        let out = dir.join(&name);
        if entry.is_dir() {
            std::fs::create_dir_all(&out)?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        std::fs::write(&out, &bytes)?;
        if let Some(mode) = entry.unix_mode() {
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        names.push((name.to_string_lossy().into_owned(), entry.unix_mode()));
    }

    // Layout.
    let has = |n: &str| names.iter().any(|(name, _)| name == n);
    if !has("host.json") {
        bail!("host.json is not at the package root");
    }
    let args = check_host_json(&std::fs::read(dir.join("host.json"))?)?;
    let mode = names
        .iter()
        .find(|(n, _)| n == BINARY_NAME)
        .map(|(_, m)| *m)
        .context("the cmkguard binary is not at the package root")?;
    if mode.is_none_or(|m| m & 0o111 == 0) {
        bail!("{BINARY_NAME} lost its executable bit in the zip (mode {mode:?})");
    }
    let expected = function_folders(&repo_root())?;
    for f in &expected {
        if !has(&format!("functions/{f}/function.json")) {
            bail!("functions/{f}/function.json is missing from the package");
        }
    }
    for (n, _) in &names {
        let ok = n == "host.json"
            || n == BINARY_NAME
            || n == "cmkguard-package.json"
            || n.starts_with("policy/")
            || n.strip_prefix("functions/")
                .and_then(|r| r.strip_suffix("/function.json"))
                .is_some_and(|f| expected.iter().any(|e| e == f));
        if !ok {
            bail!("unexpected file in the package: {n}");
        }
    }
    println!(
        "layout ok: host.json, {BINARY_NAME} (mode {:o}), functions {}",
        mode.unwrap_or(0) & 0o7777,
        expected.join(", ")
    );

    check_no_emulator(&dir.join(BINARY_NAME))?;

    // Start it as the Functions host would.
    let port = free_port()?;
    let child = Command::new(dir.join(BINARY_NAME))
        .args(&args)
        .current_dir(dir)
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("CMKGUARD_LEDGER", format!("sqlite:{}", dir.join("ledger.db").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {BINARY_NAME} {}", args.join(" ")))?;
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + wait;
    let answer = loop {
        if let Some(status) = child.0.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("{BINARY_NAME} exited before answering ({status}): {}", tail(&err));
        }
        match get_root(port) {
            Ok(a) => break a,
            Err(e) if Instant::now() >= deadline => {
                bail!("no answer on GET / at 127.0.0.1:{port} within {wait:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let status_line = answer.lines().next().unwrap_or_default().to_owned();
    if !status_line.starts_with("HTTP/1.1 2") && !status_line.starts_with("HTTP/1.0 2") {
        bail!("GET / answered {status_line:?}, expected a 2xx");
    }
    println!("started with FUNCTIONS_CUSTOMHANDLER_PORT={port}: GET / -> {status_line}");
    Ok(())
}

/// Markers only the azsim crate puts into a binary: its mangled symbol prefix (legacy
/// `_ZN5azsim…` and v0 `…5azsim…` both contain `5azsim`), and its source paths in panic
/// locations.
const EMULATOR_MARKERS: &[&[u8]] = &[b"5azsim", b"azsim/src/"];

/// The shipped binary must not contain the emulator: `demo` is not a subcommand, and no
/// azsim symbol or source path is in the file.
fn check_no_emulator(binary: &Path) -> Result<()> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    if let Some(m) = emulator_marker(&bytes) {
        bail!(
            "{BINARY_NAME} contains the azsim emulator ({:?} found): the package must be built with --no-default-features",
            String::from_utf8_lossy(m)
        );
    }
    let out = Command::new(binary)
        .args(["demo", "--help"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {BINARY_NAME} demo --help"))?;
    if out.status.success() {
        bail!("{BINARY_NAME} still has the `demo` subcommand: the package must be built with --no-default-features");
    }
    println!("production build: no `demo` subcommand, no azsim code");
    Ok(())
}

fn emulator_marker(bytes: &[u8]) -> Option<&'static [u8]> {
    EMULATOR_MARKERS.iter().copied().find(|m| bytes.windows(m.len()).any(|w| w == *m))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tail(s: &str) -> &str {
    let start = s.len().saturating_sub(2000);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn get_root(port: u16) -> Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.take(64 * 1024).read_to_end(&mut buf)?;
    if buf.is_empty() {
        bail!("empty answer");
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn unique_temp_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let dir = base.join(format!("cmkguard-package-{}-{n}", std::process::id()));
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    bail!("could not create a temporary directory under {}", base.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_markers_are_found_and_absent_ones_are_not() {
        assert_eq!(emulator_marker(b"..._ZN5azsim5world5World3new17h..."), Some(&b"5azsim"[..]));
        assert_eq!(emulator_marker(b"panicked at azsim/src/arm.rs:12"), Some(&b"azsim/src/"[..]));
        assert_eq!(emulator_marker(b"_ZN8cmkguard3cli5serve3run; profile name azsim"), None);
    }
}

//! Shared helpers for the end-to-end tests in `tests/tests/`: find (or build) the real
//! `cmkguard` binary, start it on a free loopback port, wait until it is ready, stop it.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The release `cmkguard` binary of this workspace, built if it is not there yet.
pub fn cmkguard_bin() -> PathBuf {
    binary("cmkguard", "cmkguard")
}

/// A workspace binary in the release target dir (next to this test executable's `deps/`),
/// brought up to date once per test process (a no-op when `cargo test --workspace` just
/// built it), so a stale binary is never tested.
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/release").to_path_buf();
    let bin = dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--quiet", "-p", package, "--bin", name])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        built.push(name.to_owned());
    }
    bin
}

/// A free port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A running `cmkguard serve`. Killed on drop.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    /// Starts `cmkguard serve` with the given extra flags and environment, the port given
    /// the way the Functions host gives it (FUNCTIONS_CUSTOMHANDLER_PORT), and waits for
    /// `GET /` to answer.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(cmkguard_bin());
        // Each server gets its own ledger in the temp dir unless the test names one.
        let ledger = std::env::temp_dir().join(format!("cmkguard-e2e-{}-{port}.db", std::process::id()));
        cmd.arg("serve")
            .args(args)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("CMKGUARD_LEDGER", format!("sqlite:{}", ledger.display()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("start cmkguard serve");
        let mut server = Self { port, child: Some(child) };
        server.wait_ready(Duration::from_secs(30));
        server
    }

    fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("cmkguard exited before it was ready ({status}): {}", self.stop_and_logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("cmkguard was not ready within {limit:?}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and everything logged.
    pub fn terminate(&mut self) -> (Option<i32>, String) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut logs = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut logs);
        }
        (status.code(), logs)
    }

    fn stop_and_logs(&mut self) -> String {
        let Some(mut child) = self.child.take() else { return String::new() };
        let _ = child.kill();
        let _ = child.wait();
        let mut logs = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut logs);
        }
        logs
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `../shared/azure-fixtures` beside the repository (override with CMKGUARD_FIXTURES).
pub fn fixtures_dir() -> PathBuf {
    std::env::var("CMKGUARD_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/azure-fixtures"))
}

pub fn fixture(rel: &str) -> serde_json::Value {
    let p = fixtures_dir().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// A `KeyNearExpiry` event derived from the published `SecretNewVersionCreated` sample by
/// changing only the type, object type and object path (no Key* samples are published).
pub fn key_near_expiry_event() -> serde_json::Value {
    let mut ev = fixture("eventgrid/keyvault.SecretNewVersionCreated.eventgrid.json");
    ev["eventType"] = "Microsoft.KeyVault.KeyNearExpiry".into();
    ev["data"]["ObjectType"] = "Key".into();
    let id = ev["data"]["Id"].as_str().unwrap().replace("/secrets/", "/keys/");
    ev["data"]["Id"] = id.into();
    ev
}

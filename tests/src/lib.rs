//! Shared helpers for the end-to-end tests in `tests/tests/` (and the soak test): run the
//! real `cmkguard` binary and the real `azsim` process on loopback, wire one to the other,
//! and look at what happened — Azure state and azsim's event log, the ledger through
//! `cmkguard audit`, and chat messages received by a local sink.
//!
//! The pieces:
//! - [`Sim`]: an `azsim` process started from a scenario file ([`scenario`]), its cloud
//!   profile written for cmkguard, its control API (events, faults, key changes, call
//!   counts) and ARM reads for assertions.
//! - [`Guard`]: `cmkguard serve` wired to a [`Sim`] through [`GuardOptions`] (mode, ledger —
//!   a temp SQLite file by default —, chat channels, policy, extra settings), with
//!   [`Guard::post_events`] (direct webhook mode) and [`Guard::audit_show`] /
//!   [`Guard::audit_list`] (the `cmkguard audit` CLI with the same settings).
//! - [`ChatSink`] (re-exported from `cmkguard-notify`): a Teams/Slack/webhook receiver in
//!   the test process; [`GuardOptions::teams_channel`] points a channel at it.
//! - [`Server`]: the bare `cmkguard serve` process (logs to a file, killed on drop).
//! - Event builders from the Microsoft-published samples in `../shared/azure-fixtures`.
//!
//! Every wait is bounded; every helper panics with a message saying what failed (these
//! are test helpers), including the process logs where they help.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use cmkguard_notify::ChannelKind;
pub use cmkguard_notify::sink::{ChatSink, Failure, Received};
use serde_json::{Value, json};

/// The subscription of `azsim/scenarios/demo.json` (and the scenarios derived from it).
pub const DEMO_SUBSCRIPTION: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";

/// How long any single wait in these helpers may take.
pub const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Binaries and paths
// ---------------------------------------------------------------------------------------

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A scenario file in `azsim/scenarios/` by name (e.g. `"demo.json"`).
pub fn scenario(name: &str) -> PathBuf {
    workspace_root().join("azsim/scenarios").join(name)
}

/// The release `cmkguard` binary of this workspace, built if it is not there yet.
pub fn cmkguard_bin() -> PathBuf {
    binary("cmkguard", "cmkguard")
}

/// A workspace binary in the release target dir (next to this test executable's `deps/`),
/// brought up to date once per test process (a no-op when `cargo test --workspace` just
/// built it), so a stale binary is never tested. `CMKGUARD_E2E_PREBUILT=1` skips the build
/// and uses the binaries as they are (e.g. while a shared tree does not build).
pub fn binary(package: &str, name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    let parent = exe.parent().expect("target/release");
    // A test runs from target/release/deps; a binary of this crate (the soak) from target/release.
    let in_test = parent.ends_with("deps");
    let dir = if in_test { parent.parent().expect("target/release") } else { parent }.to_path_buf();
    let bin = dir.join(name);
    if !in_test {
        // A long run (the soak) uses the binaries built before it, never rebuilding mid-run.
        assert!(bin.exists(), "{} is missing: run `cargo build --release -p {package}` first", bin.display());
        return bin;
    }
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let prebuilt = std::env::var("CMKGUARD_E2E_PREBUILT").is_ok_and(|v| v == "1");
    if !prebuilt && !built.iter().any(|b| b == name) {
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

/// A hostile policy component built from `crates/policy/tests/data/NAME.wat` by that
/// crate's build script (which wraps each test module into a component with the `wit/`
/// world). `name` without extension, e.g. `"infinite-loop"`. The newest build wins.
pub fn hostile_policy(name: &str) -> PathBuf {
    let build = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(|d| d.parent()).map(|d| d.join("build")))
        .expect("target/release/build");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&build)
        .unwrap_or_else(|e| panic!("{}: {e}", build.display()))
        .filter_map(Result::ok)
        .filter(|d| d.file_name().to_string_lossy().starts_with("cmkguard-policy-"))
        .map(|d| d.path().join("out/test-components").join(format!("{name}.wasm")))
        .filter_map(|p| p.metadata().and_then(|m| m.modified()).ok().map(|t| (t, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!("no {name}.wasm under {}/cmkguard-policy-*/out/test-components (build cmkguard first)", build.display())
    })
}

// ---------------------------------------------------------------------------------------
// azsim
// ---------------------------------------------------------------------------------------

/// A running `azsim` process (killed on drop) with its endpoints, CA and cloud profile.
pub struct Sim {
    child: Child,
    /// The endpoints line azsim printed (`armEndpoint`, `identityEndpoint`, `port`, …).
    pub info: Value,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("port", &self.port()).finish_non_exhaustive()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    /// Starts `azsim --scenario FILE` (plus `extra` flags, e.g. `["--lro-polls", "3"]`) and
    /// writes its CA and a cloud profile for cmkguard into a temp dir.
    pub fn start(scenario: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("azsim-ca.pem");
        let log = std::fs::File::create(dir.path().join("azsim.log")).expect("azsim log file");
        let mut child = Command::new(binary("azsim", "azsim"))
            .arg("--scenario")
            .arg(scenario)
            .arg("--write-ca")
            .arg(&ca)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start azsim");
        let mut line = String::new();
        // azsim prints its endpoints at once; a scenario it refuses ends stdout instead.
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("azsim endpoints line");
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("azsim.log")).unwrap_or_default();
            panic!("azsim did not print its endpoints ({e}): {log}")
        });
        let ca_pem = std::fs::read(&ca).expect("azsim wrote its CA");
        let addr: std::net::SocketAddr = info["https"].as_str().and_then(|s| s.parse().ok()).expect("https address");
        let mut http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca_pem).expect("azsim CA")])
            .timeout(WAIT);
        for host in info["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            http = http.resolve(host, addr);
        }
        let sim = Self { child, info, dir, http: http.build().expect("http client") };
        sim.write_profile();
        sim
    }

    /// The HTTPS port every Azure host name is served on.
    pub fn port(&self) -> u16 {
        self.info["port"].as_u64().expect("port") as u16
    }

    fn str(&self, field: &str) -> &str {
        self.info[field].as_str().unwrap_or_else(|| panic!("azsim info has no {field}"))
    }

    /// `https://management.azsim.test:PORT`.
    pub fn arm_endpoint(&self) -> &str {
        self.str("armEndpoint")
    }

    /// The cloud-profile file (`CMKGUARD_CLOUD`) that points cmkguard at this azsim.
    pub fn profile_path(&self) -> PathBuf {
        self.dir.path().join("azsim-profile.json")
    }

    fn write_profile(&self) {
        let p = self.profile_json(self.str("identityEndpoint"));
        std::fs::write(self.profile_path(), serde_json::to_vec_pretty(&p).expect("json")).expect("write profile");
    }

    /// Another cloud profile for this azsim whose managed-identity endpoint is
    /// `identity_endpoint` (a test's own endpoint in front of azsim's); returns its path.
    pub fn profile_with_identity(&self, identity_endpoint: &str) -> PathBuf {
        let path = self.dir.path().join(format!("azsim-profile-{}.json", free_port()));
        let p = self.profile_json(identity_endpoint);
        std::fs::write(&path, serde_json::to_vec_pretty(&p).expect("json")).expect("write profile");
        path
    }

    fn profile_json(&self, identity_endpoint: &str) -> Value {
        let i = &self.info;
        json!({
            "name": "azsim",
            "armEndpoint": i["armEndpoint"],
            "keyVaultSuffix": i["vaultSuffix"],
            "managedHsmSuffix": i["hsmSuffix"],
            "armAudience": i["armAudience"],
            "keyVaultAudience": i["vaultAudience"],
            "managedHsmAudience": format!("https://{}", self.str("hsmSuffix")),
            "authorityHost": "https://login.azsim.test",
            "identityEndpoint": identity_endpoint,
            "port": i["port"],
            "test": {"extraCaPemFile": self.dir.path().join("azsim-ca.pem"), "resolveToLoopback": true}
        })
    }

    /// The settings that connect cmkguard to this azsim: cloud profile and managed identity.
    pub fn cmkguard_env(&self) -> Vec<(String, String)> {
        vec![
            ("CMKGUARD_CLOUD".into(), self.profile_path().display().to_string()),
            ("IDENTITY_ENDPOINT".into(), self.str("identityEndpoint").into()),
            ("IDENTITY_HEADER".into(), self.str("identityHeader").into()),
        ]
    }

    /// azsim's own log (stderr).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azsim.log")).unwrap_or_default()
    }

    /// One control-API call (`/_azsim/{path}`); panics on a non-2xx answer.
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/_azsim/{path}", self.arm_endpoint());
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {url}: {status} {v}");
        v
    }

    /// Every Event Grid event azsim produced so far (oldest first).
    pub async fn events(&self) -> Vec<Value> {
        let v = self.control(reqwest::Method::GET, "events", None).await;
        v["events"].as_array().cloned().unwrap_or_default()
    }

    /// The newest event of `event_type` about `subject_contains` (case-insensitive).
    pub async fn last_event(&self, event_type: &str, subject_contains: &str) -> Option<Value> {
        let needle = subject_contains.to_ascii_lowercase();
        self.events().await.into_iter().rev().find(|e| {
            e["eventType"] == event_type
                && e["subject"].as_str().is_some_and(|s| s.to_ascii_lowercase().contains(&needle))
        })
    }

    /// How many calls azsim answered on `route` (e.g. `"arm.registry.patch"`, `"any"`).
    pub async fn calls(&self, route: &str) -> u64 {
        let v = self.control(reqwest::Method::GET, "calls", None).await;
        if route == "any" {
            return v["counts"].as_object().map(|m| m.values().filter_map(Value::as_u64).sum()).unwrap_or(0);
        }
        v["counts"][route].as_u64().unwrap_or(0)
    }

    /// A new key version, as auto-rotation makes it (azsim also produces
    /// `KeyNewVersionCreated`); returns the version.
    pub async fn rotate_key(&self, vault: &str, key: &str) -> String {
        let v = self.control(reqwest::Method::POST, &format!("keys/{vault}/{key}/rotate"), None).await;
        v["version"].as_str().expect("version").to_owned()
    }

    /// Changes a key version's attributes (`{"enabled":false}`, `{"exp":"now-1d"}`…);
    /// `version` may be `@latest`.
    pub async fn patch_key(&self, vault: &str, key: &str, version: &str, attributes: Value) -> Value {
        self.control(reqwest::Method::PATCH, &format!("keys/{vault}/{key}/{version}"), Some(attributes)).await
    }

    /// Makes azsim produce a key event (`"KeyNearExpiry"`, `"KeyExpired"`, …) and returns it.
    pub async fn emit_key_event(&self, vault: &str, key: &str, event_type: &str) -> Value {
        let before = self.events().await.len();
        self.control(
            reqwest::Method::POST,
            "events/key",
            Some(json!({"vault": vault, "key": key, "eventType": event_type})),
        )
        .await;
        let events = self.events().await;
        assert!(events.len() > before, "azsim produced no {event_type} event");
        events.last().cloned().expect("event")
    }

    /// The next `count` calls on `route` fail with `status`.
    pub async fn fail_next(&self, route: &str, count: u32, status: u16) {
        let body = json!({"route": route, "count": count, "status": status});
        self.control(reqwest::Method::POST, "faults", Some(body)).await;
    }

    /// Clears faults and latencies.
    pub async fn clear_faults(&self) {
        self.control(reqwest::Method::DELETE, "faults", None).await;
    }

    /// A token from azsim's managed-identity endpoint for `resource`.
    pub async fn token(&self, resource: &str) -> String {
        let resp = self
            .http
            .get(self.str("identityEndpoint"))
            .query(&[("resource", resource), ("api-version", "2019-08-01")])
            .header("X-IDENTITY-HEADER", self.str("identityHeader"))
            .send()
            .await
            .expect("identity endpoint");
        let v: Value = resp.json().await.expect("token JSON");
        v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_owned()
    }

    /// The ARM body of a registry (GET with a managed-identity token), as Azure has it now.
    pub async fn registry(&self, id: &str) -> Value {
        let token = self.token(self.str("armAudience")).await;
        let url = format!("{}{id}?api-version=2025-04-01", self.arm_endpoint());
        let resp = self.http.get(&url).bearer_auth(token).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {url}: {status} {v}");
        v
    }

    /// The key id a registry is configured with (`""` without CMK).
    pub async fn registry_key(&self, id: &str) -> String {
        let r = self.registry(id).await;
        r.pointer("/properties/encryption/keyVaultProperties/keyIdentifier")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// The resource id of a registry in the demo scenario's subscription.
pub fn registry_id(resource_group: &str, name: &str) -> String {
    format!(
        "/subscriptions/{DEMO_SUBSCRIPTION}/resourceGroups/{resource_group}/providers/Microsoft.ContainerRegistry/registries/{name}"
    )
}

// ---------------------------------------------------------------------------------------
// cmkguard serve
// ---------------------------------------------------------------------------------------

/// A running `cmkguard serve`. Killed on drop. Its log (stderr) goes to a file, so a
/// chatty server never blocks on a full pipe.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `cmkguard serve` with the given extra flags and environment, the port given
    /// the way the Functions host gives it (FUNCTIONS_CUSTOMHANDLER_PORT), and waits for
    /// `GET /` to answer. Without `CMKGUARD_LEDGER` in `env` it gets a temp SQLite ledger.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = dir.path().join("cmkguard.log");
        let mut cmd = Command::new(cmkguard_bin());
        cmd.arg("serve")
            .args(args)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("CMKGUARD_LEDGER", format!("sqlite:{}", dir.path().join("ledger.db").display()))
            .env("CMKGUARD_POLICY_CACHE_DIR", dir.path().join("policy-cache"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("start cmkguard serve");
        let mut server = Self { port, child: Some(child), log, _dir: dir };
        server.wait_ready(WAIT);
        server
    }

    fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("cmkguard exited before it was ready ({status}): {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("cmkguard was not ready within {limit:?}: {}", self.logs());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit (killed after 20 s); returns the exit code and
    /// everything logged.
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
        (status.code(), self.logs())
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

/// How to run `cmkguard serve` against a [`Sim`].
#[derive(Debug, Clone)]
pub struct GuardOptions {
    /// `monitor` or `enforce`.
    pub mode: String,
    /// `CMKGUARD_LEDGER`; `None` = a fresh SQLite file in the guard's temp dir.
    pub ledger: Option<String>,
    /// Chat channels: (name, kind, URL).
    pub channels: Vec<(String, ChannelKind, String)>,
    /// `CMKGUARD_POLICY` (a component file); `None` = the embedded default policy.
    pub policy: Option<PathBuf>,
    /// Any other settings (they win over the ones above).
    pub env: Vec<(String, String)>,
}

impl GuardOptions {
    /// `enforce` or `monitor`, SQLite ledger, default policy, no channels.
    pub fn new(mode: &str) -> Self {
        Self { mode: mode.into(), ledger: None, channels: Vec::new(), policy: None, env: Vec::new() }
    }

    /// Adds a Teams channel `name` that posts to `sink` (registered there).
    pub fn teams_channel(mut self, sink: &ChatSink, name: &str) -> Self {
        sink.channel(name, ChannelKind::Teams, None).expect("sink accepts the channel");
        self.channels.push((name.into(), ChannelKind::Teams, sink.url(ChannelKind::Teams, name)));
        self
    }

    pub fn policy(mut self, path: PathBuf) -> Self {
        self.policy = Some(path);
        self
    }

    pub fn ledger(mut self, ledger: impl Into<String>) -> Self {
        self.ledger = Some(ledger.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// `cmkguard serve` wired to an azsim: direct webhook mode on, the settings kept so the
/// `cmkguard audit` CLI reads the same ledger.
pub struct Guard {
    pub server: Server,
    /// `CMKGUARD_LEDGER` as given to the server.
    pub ledger: String,
    /// The full environment the server got (minus the process's own).
    pub env: Vec<(String, String)>,
    key: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Guard {
    /// The key direct webhook mode requires (`x-cmkguard-key`).
    pub const WEBHOOK_KEY: &'static str = "e2e-webhook-key-0123456789abcdef";

    /// Starts `cmkguard serve` against `sim` and waits until it is ready.
    pub fn start(sim: &Sim, options: GuardOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger =
            options.ledger.clone().unwrap_or_else(|| format!("sqlite:{}", dir.path().join("ledger.db").display()));
        let mut env = sim.cmkguard_env();
        env.push(("CMKGUARD_MODE".into(), options.mode.clone()));
        env.push(("CMKGUARD_LEDGER".into(), ledger.clone()));
        env.push(("CMKGUARD_WEBHOOK_KEY".into(), Self::WEBHOOK_KEY.into()));
        env.push(("CMKGUARD_POLICY_RELOAD_SECS".into(), "0".into()));
        if !options.channels.is_empty() {
            let list: Vec<String> = options.channels.iter().map(|(n, k, _)| format!("{n}={k}")).collect();
            env.push(("CMKGUARD_CHANNELS".into(), list.join(",")));
            for (name, _, url) in &options.channels {
                env.push((
                    format!("CMKGUARD_CHANNEL_{}_URL", name.to_ascii_uppercase().replace('-', "_")),
                    url.clone(),
                ));
            }
        }
        if let Some(p) = &options.policy {
            env.push(("CMKGUARD_POLICY".into(), p.display().to_string()));
        }
        env.extend(options.env.iter().cloned());
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server = Server::start(&[], &pairs);
        let http = reqwest::Client::builder().timeout(WAIT).build().expect("http client");
        Self { server, ledger, env, key: Self::WEBHOOK_KEY.into(), http, _dir: dir }
    }

    /// Posts Event Grid events to `POST /api/events` (direct mode); the status and the body.
    pub async fn post_events(&self, events: &[Value]) -> (u16, Value) {
        let resp = self
            .http
            .post(self.server.url("/api/events"))
            .header("x-cmkguard-key", &self.key)
            .json(&events)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /api/events: {e}\n{}", self.server.logs()));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Posts one event and asserts a 200; the per-event report
    /// (`{"event_id","decided","actions":[…]}`).
    pub async fn deliver(&self, event: &Value) -> Value {
        let (status, body) = self.post_events(std::slice::from_ref(event)).await;
        assert_eq!(status, 200, "{body}\n{}", self.server.logs());
        body["outcome"]["reports"][0].clone()
    }

    /// Runs `cmkguard audit ARGS --output json` with the server's settings; the JSON.
    pub fn audit(&self, args: &[&str]) -> Value {
        let mut cmd = Command::new(cmkguard_bin());
        cmd.arg("audit").args(args).args(["--output", "json"]);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = run_bounded(cmd, WAIT);
        assert!(out.status.success(), "cmkguard audit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("audit output is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The audit record of one event.
    pub fn audit_show(&self, event_id: &str) -> Value {
        self.audit(&["show", event_id])
    }

    /// The newest audit records (at most 1000).
    pub fn audit_list(&self) -> Vec<Value> {
        self.audit(&["list", "--limit", "1000"]).as_array().cloned().unwrap_or_default()
    }
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    std::thread::spawn(move || {
        let read = |r: Option<Box<dyn std::io::Read + Send>>| {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        };
        let e = std::thread::spawn(move || read(stderr.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>)));
        let o = read(stdout.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>));
        let _ = tx.send((o, e.join().unwrap_or_default()));
    });
    let (stdout, stderr) = rx.recv_timeout(limit).unwrap_or_else(|_| {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        panic!("command did not finish within {limit:?}")
    });
    let status = child.wait().expect("wait");
    std::process::Output { status, stdout, stderr }
}

// ---------------------------------------------------------------------------------------
// Events (Microsoft-published shapes only)
// ---------------------------------------------------------------------------------------

/// `../shared/azure-fixtures` beside the repository (override with CMKGUARD_FIXTURES).
pub fn fixtures_dir() -> PathBuf {
    std::env::var("CMKGUARD_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/azure-fixtures"))
}

pub fn fixture(rel: &str) -> Value {
    let p = fixtures_dir().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// A `KeyNearExpiry` event derived from the published `SecretNewVersionCreated` sample by
/// changing only the type, object type and object path (no Key* samples are published).
pub fn key_near_expiry_event() -> Value {
    let mut ev = fixture("eventgrid/keyvault.SecretNewVersionCreated.eventgrid.json");
    ev["eventType"] = "Microsoft.KeyVault.KeyNearExpiry".into();
    ev["data"]["ObjectType"] = "Key".into();
    let id = ev["data"]["Id"].as_str().unwrap().replace("/secrets/", "/keys/");
    ev["data"]["Id"] = id.into();
    ev
}

/// A registry write (`Microsoft.Resources.ResourceWriteSuccess`), from the published
/// sample with the ids, subject, resource and operation of `registry` filled in.
pub fn registry_write_event(event_id: &str, registry: &str) -> Value {
    let mut ev = fixture("eventgrid/resources.ResourceWriteSuccess.eventgrid.json");
    let rg_scope = registry.split("/providers/").next().unwrap_or(registry).to_owned();
    ev["id"] = event_id.into();
    ev["subject"] = registry.into();
    ev["topic"] = rg_scope.into();
    ev["eventTime"] = "2026-11-23T12:00:00Z".into();
    let d = &mut ev["data"];
    d["authorization"]["scope"] = registry.into();
    d["authorization"]["action"] = "Microsoft.ContainerRegistry/registries/write".into();
    d["resourceProvider"] = "Microsoft.ContainerRegistry".into();
    d["resourceUri"] = registry.into();
    d["operationName"] = "Microsoft.ContainerRegistry/registries/write".into();
    d["subscriptionId"] = DEMO_SUBSCRIPTION.into();
    d["correlationId"] = uuid_like(event_id).into();
    ev
}

/// A copy of `event` with another id (a new delivery of the same news, e.g. the next
/// day's `KeyNearExpiry`).
pub fn with_id(event: &Value, id: &str) -> Value {
    let mut e = event.clone();
    e["id"] = id.into();
    e
}

fn uuid_like(seed: &str) -> String {
    let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", h >> 32, (h >> 16) & 0xffff, h & 0xfff, (h >> 20) & 0xfff, h >> 16)
}

/// Waits (bounded) until `sink` has received `count` messages on `channel`, then a
/// little longer to catch extras; returns what it holds.
pub async fn chat_messages(sink: &ChatSink, channel: &str, count: usize) -> Vec<Received> {
    let start = Instant::now();
    while sink.received_on(channel).len() < count && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    sink.received_on(channel)
}

//! `soak`: the fault-injection soak (issue 8). Thousands of Event Grid events through the
//! real `cmkguard serve` process (enforce mode, SQLite ledger) against the real `azsim`
//! process while azsim throttles (429 + Retry-After), fails (5xx), slows down and drops
//! connections, the chat receiver goes down for periods, and the handler is killed with
//! SIGKILL and restarted on the same ledger. The driver behaves like Event Grid: every
//! event whose answer was not 2xx (or was lost with the handler) is delivered again on a
//! bounded schedule. Then it checks, and exits 1 naming every violation:
//!
//! - every delivery got a 2xx in the end (nothing dead-lettered);
//! - every event id is in the ledger exactly once (`cmkguard audit list --output json`);
//! - no registry was moved to the same key twice (azsim's log of accepted writes);
//! - every accepted write is accounted for by an audit record (done or pending), no
//!   registry is left `Updating`, and every pinned registry ends on its key's latest
//!   version unless a record says its rotation failed;
//! - no notification was sent twice within the dedupe window (the chat receiver's log,
//!   by dedupe key = rule, resource, key version), and every notification recorded as
//!   sent arrived.
//!
//! The plan (event mix, faults, kill points) comes from a seeded RNG (`--seed`), so a run
//! is reproducible up to timing. Run: `cargo run --release -p cmkguard-e2e --bin soak --
//! --events 10000 --seed 1` (the `cmkguard` and `azsim` release binaries must be built).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use cmkguard_e2e::{
    ChannelKind, ChatSink, DEMO_SUBSCRIPTION, Failure, Server, Sim, cmkguard_bin, fixture, registry_id,
    registry_write_event,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

const SUB: &str = DEMO_SUBSCRIPTION;
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const WEBHOOK_KEY: &str = "soak-webhook-key-0123456789abcdef";
const CHANNEL_SECRET: &str = "soak-channel-signing-secret";
/// Event Grid's schedule (10 s, 30 s, 1 min, 5 min, …) scaled down, capped; the last
/// entry repeats until `MAX_ATTEMPTS`.
const RETRY_SCHEDULE_MS: &[u64] = &[250, 500, 1_000, 2_000, 4_000, 8_000, 10_000];
const MAX_ATTEMPTS: u32 = 60;
/// Event Grid waits 30 s for an answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(about = "Fault-injection soak: events through the real cmkguard serve against the real azsim")]
struct Args {
    /// Events the source sends (duplicates included; redeliveries and cmkguard's own
    /// writes coming back as events are on top).
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Seed of the plan (event mix, faults, kill points).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Deliveries in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// SIGKILLs of the handler during the run.
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Keys in the generated estate.
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// Registries in the generated estate.
    #[arg(long, default_value_t = 24)]
    registries: usize,
    /// CMKGUARD_AZURE_BUDGET_SECS for the handler.
    #[arg(long, default_value_t = 5)]
    budget_secs: u64,
    /// CMKGUARD_CLAIM_TTL_SECS for the handler (how long a killed handler's claims block).
    #[arg(long, default_value_t = 40)]
    claim_ttl_secs: u64,
    /// Inject no azsim faults and no chat outages (a baseline; kills still happen).
    #[arg(long)]
    no_faults: bool,
    /// Give up (and fail) after this many minutes.
    #[arg(long, default_value_t = 40)]
    max_minutes: u64,
    /// Working directory (ledger, logs, scenario); a fresh temp dir by default.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory afterwards (it is always kept when a check fails).
    #[arg(long)]
    keep: bool,
}

// ------------------------------------------------------------------ the handler process

/// Settings of every `cmkguard serve` of the run (the same ledger across restarts).
struct HandlerEnv {
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl HandlerEnv {
    fn new(dir: &Path, sim: &Sim, ledger: &str, sink_url: &str, budget_secs: u64, claim_ttl_secs: u64) -> Self {
        let mut env = sim.cmkguard_env();
        for (k, v) in [
            ("CMKGUARD_MODE", "enforce"),
            ("CMKGUARD_LEDGER", ledger),
            ("CMKGUARD_WEBHOOK_KEY", WEBHOOK_KEY),
            ("CMKGUARD_CHANNELS", "ops=webhook"),
            ("CMKGUARD_CHANNEL_OPS_URL", sink_url),
            ("CMKGUARD_CHANNEL_OPS_SECRET", CHANNEL_SECRET),
            // Pinned registries follow each new version (one rotation per version and registry).
            ("CMKGUARD_POLICY_SETTINGS", r#"{"prefer_versionless":false}"#),
            ("CMKGUARD_LOG_FORMAT", "text"),
            ("CMKGUARD_LOG", "info"),
        ] {
            env.push((k.into(), v.into()));
        }
        env.push(("CMKGUARD_AZURE_BUDGET_SECS".into(), budget_secs.to_string()));
        env.push(("CMKGUARD_CLAIM_TTL_SECS".into(), claim_ttl_secs.to_string()));
        Self { dir: dir.to_path_buf(), env }
    }

    /// Starts one `cmkguard serve` (blocking wait for readiness off the async threads).
    async fn start(&self) -> Result<Server, String> {
        let env = self.env.clone();
        tokio::task::spawn_blocking(move || {
            let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Server::start(&[], &pairs)
        })
        .await
        .map_err(|e| format!("starting cmkguard serve: {e}"))
    }

    /// Keeps a server's log in the run's directory (its own temp dir goes with it).
    fn keep_log(&self, server: &Server, n: usize) {
        let _ = std::fs::write(self.dir.join(format!("cmkguard-{n}.log")), server.logs());
    }
}

// ------------------------------------------------------------------ estate

#[derive(Debug, Clone)]
struct KeyInfo {
    vault: String,
    name: String,
    /// Near expiry, expired or healthy at the start.
    first_version: String,
}

#[derive(Debug, Clone)]
struct RegInfo {
    name: String,
    id: String,
    /// `Some(key index)` when pinned to a version of that key.
    pinned: Option<usize>,
}

struct Estate {
    scenario: Value,
    keys: Vec<KeyInfo>,
    registries: Vec<RegInfo>,
}

fn hex32(rng: &mut fastrand::Rng) -> String {
    format!("{:016x}{:016x}", rng.u64(..), rng.u64(..))
}

fn uuid(rng: &mut fastrand::Rng) -> String {
    let h = hex32(rng);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

fn reg_id(name: &str) -> String {
    registry_id("rg-registries", name)
}

/// A generated estate: two protected vaults and one without purge protection; keys near
/// expiry, healthy, one expired; registries pinned to a version (rotated by cmkguard on
/// every new version), versionless, on the weak vault, and without CMK.
fn estate(rng: &mut fastrand::Rng, n_keys: usize, n_regs: usize) -> Estate {
    let mut keys = Vec::new();
    let mut vault_keys: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for i in 0..n_keys.max(2) {
        let vault = if i % 2 == 0 { "kv-soak-a" } else { "kv-soak-b" };
        let version = hex32(rng);
        // Key 0 is near expiry, key 1 healthy, then alternating.
        let exp = if i % 2 == 0 { "now+10d" } else { "now+400d" };
        vault_keys.entry(vault).or_default().push(json!({
            "name": format!("cmk-{i}"), "kty": "RSA", "size": 2048,
            "versions": [{"version": version, "created": "now-355d", "exp": exp}]
        }));
        keys.push(KeyInfo { vault: vault.into(), name: format!("cmk-{i}"), first_version: version });
    }
    let expired = hex32(rng);
    vault_keys.entry("kv-soak-b").or_default().push(json!({
        "name": "cmk-expired", "kty": "RSA", "versions": [{"version": expired, "created": "now-400d", "exp": "now-1d"}]
    }));
    let weak = hex32(rng);
    vault_keys.entry("kv-soak-weak").or_default().push(json!({
        "name": "cmk-weak", "kty": "RSA", "versions": [{"version": weak, "created": "now-30d"}]
    }));
    let vault = |name: &str, purge: bool| {
        json!({"name": name, "resourceGroup": "rg-security", "softDelete": true, "softDeleteRetentionDays": 90,
               "purgeProtection": purge, "keys": vault_keys.get(name).cloned().unwrap_or_default()})
    };
    let mut regs = Vec::new();
    let mut reg_json = Vec::new();
    for j in 0..n_regs.max(4) {
        let name = format!("acrsoak{j:03}");
        let k = j % keys.len();
        let key = &keys[k];
        let (enc, pinned) = match j % 8 {
            // Half pinned to a version: cmkguard moves them on every new version.
            0 | 2 | 4 | 6 => (Some(format!("{}/{}/@latest", key.vault, key.name)), Some(k)),
            1 | 5 => (Some(format!("{}/{}", key.vault, key.name)), None),
            3 => (Some("kv-soak-weak/cmk-weak".to_owned()), None),
            _ => (None, None),
        };
        let mut r = json!({"name": name, "resourceGroup": "rg-registries", "sku": "Premium", "identities": ["id-acr-cmk"],
                           "tags": {"team": format!("team-{}", j % 5)}});
        if let Some(e) = enc {
            r["encryption"] = json!({"key": e, "identity": "id-acr-cmk"});
        }
        reg_json.push(r);
        regs.push(RegInfo { id: reg_id(&name), name, pinned });
    }
    let scenario = json!({
        "tenant": TENANT,
        "subscriptions": [{"id": SUB, "resourceGroups": [
            {"name": "rg-security", "location": "westeurope"}, {"name": "rg-registries", "location": "westeurope"}]}],
        "identities": [{"name": "id-acr-cmk", "resourceGroup": "rg-security",
                        "clientId": "33b5bfe1-ff99-42ec-a264-a19d6bf8e4f7", "principalId": "3ca1d2d0-689f-4a0d-92e1-2c23b73fa6f8"}],
        "vaults": [vault("kv-soak-a", true), vault("kv-soak-b", true), vault("kv-soak-weak", false)],
        "registries": reg_json,
    });
    keys.push(KeyInfo { vault: "kv-soak-b".into(), name: "cmk-expired".into(), first_version: expired });
    Estate { scenario, keys, registries: regs }
}

// ------------------------------------------------------------------ events (fixture shapes)

struct Shapes {
    key: Value,
}

impl Shapes {
    /// `ResourceWriteSuccess` for a registry: the published sample with the subject,
    /// resource, scope and operation of a registry write.
    fn registry_write(&self, id: &str, registry: &str, now: &str) -> Value {
        let mut e = registry_write_event(id, registry);
        e["eventTime"] = now.into();
        e["data"]["status"] = "Succeeded".into();
        e["data"]["claims"]["appid"] = "soak-platform-team".into();
        e
    }

    /// A Key Vault key event (`KeyNearExpiry`, `KeyExpired`) from the published
    /// `SecretNewVersionCreated` sample: type, object type and object path changed.
    fn key_event(&self, id: &str, ty: &str, key: &KeyInfo, version: &str, port: u16, now: &str) -> Value {
        let mut e = self.key.clone();
        e["id"] = id.into();
        e["eventType"] = format!("Microsoft.KeyVault.{ty}").into();
        e["topic"] = format!(
            "/subscriptions/{SUB}/resourceGroups/rg-security/providers/Microsoft.KeyVault/vaults/{}",
            key.vault
        )
        .into();
        e["subject"] = key.name.clone().into();
        e["eventTime"] = now.into();
        e["data"]["Id"] = format!("https://{}.vault.azsim.test:{port}/keys/{}/{version}", key.vault, key.name).into();
        e["data"]["VaultName"] = key.vault.clone().into();
        e["data"]["ObjectType"] = "Key".into();
        e["data"]["ObjectName"] = key.name.clone().into();
        e["data"]["Version"] = version.into();
        e
    }
}

// ------------------------------------------------------------------ the Event Grid driver

#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    event: Arc<Value>,
    attempt: u32,
}

#[derive(Debug, Default)]
struct Record {
    attempts: u32,
    done: bool,
    dead: bool,
    statuses: BTreeMap<String, u32>,
}

#[derive(Default)]
struct Stats {
    per_id: HashMap<String, Record>,
    /// Answer latency (any answer), ms.
    latency_ms: Vec<f64>,
    /// Answer latency of 2xx answers, ms.
    ok_latency_ms: Vec<f64>,
    deliveries: usize,
    redeliveries: usize,
    by_status: BTreeMap<String, usize>,
    sent_direct: usize,
    sent_functions: usize,
}

struct Driver {
    http: reqwest::Client,
    base: Mutex<String>,
    stats: Mutex<Stats>,
    outstanding: AtomicUsize,
    tx: mpsc::UnboundedSender<Delivery>,
    /// Per-delivery choice of route (direct webhook vs Functions envelope); seeded.
    route_rng: Mutex<fastrand::Rng>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Driver {
    fn enqueue(&self, id: String, event: Arc<Value>) {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(Delivery { id, event, attempt: 1 });
    }

    async fn deliver(self: Arc<Self>, d: Delivery) {
        let base = lock(&self.base).clone();
        let functions = lock(&self.route_rng).f64() < 0.3;
        let ty = d.event["eventType"].as_str().unwrap_or_default();
        let req = if functions {
            let function = if ty.starts_with("Microsoft.KeyVault.") { "KeyVaultEvents" } else { "RegistryEvents" };
            let body = json!({
                "Data": {"event": d.event.to_string()},
                "Metadata": {"sys": {"MethodName": function}, "DeliveryCount": d.attempt}
            });
            self.http.post(format!("{base}/{function}")).json(&body)
        } else {
            self.http
                .post(format!("{base}/api/events"))
                .header("x-cmkguard-key", WEBHOOK_KEY)
                .header("aeg-event-type", "Notification")
                .header("aeg-delivery-count", (d.attempt - 1).to_string())
                .json(&json!([&*d.event]))
        };
        let start = Instant::now();
        let result = req.timeout(DELIVERY_TIMEOUT).send().await;
        let status = match &result {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => "timeout".to_owned(),
            Err(e) if e.is_connect() => "connect-error".to_owned(),
            Err(_) => "connection-lost".to_owned(),
        };
        let ok = result.as_ref().is_ok_and(|r| r.status().is_success());
        if let Ok(r) = result {
            let _ = r.bytes().await;
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        let retry = {
            let mut s = lock(&self.stats);
            s.deliveries += 1;
            if d.attempt > 1 {
                s.redeliveries += 1;
            }
            if functions {
                s.sent_functions += 1;
            } else {
                s.sent_direct += 1;
            }
            *s.by_status.entry(status.clone()).or_default() += 1;
            if result_is_answer(&status) {
                s.latency_ms.push(ms);
            }
            if ok {
                s.ok_latency_ms.push(ms);
            }
            let rec = s.per_id.entry(d.id.clone()).or_default();
            rec.attempts += 1;
            *rec.statuses.entry(status).or_default() += 1;
            if ok {
                rec.done = true;
                false
            } else if d.attempt >= MAX_ATTEMPTS {
                rec.dead = true;
                false
            } else {
                true
            }
        };
        if retry {
            let i = (d.attempt as usize - 1).min(RETRY_SCHEDULE_MS.len() - 1);
            let delay = Duration::from_millis(RETRY_SCHEDULE_MS[i]);
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = me.tx.send(Delivery { attempt: d.attempt + 1, ..d });
            });
        } else {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn result_is_answer(status: &str) -> bool {
    status.bytes().all(|b| b.is_ascii_digit())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ------------------------------------------------------------------ azsim control API

#[derive(Default, Debug)]
struct FaultCounts {
    by_kind: BTreeMap<String, usize>,
    chat_outages: usize,
    chat_outage_ms: u64,
}

/// Injects azsim faults and chat outages on a seeded schedule until `stop`.
async fn inject_faults(
    sim: Arc<Sim>,
    sink: Arc<ChatSink>,
    seed: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<FaultCounts>>,
    enabled: bool,
    progress: Arc<AtomicUsize>,
) {
    const ROUTES: &[&str] = &[
        "arm.registry.get",
        "arm.registry.patch",
        "arm.operation.get",
        "arm.vault.get",
        "arm.resourcegraph.query",
        "kv.key.get",
        "kv.key.versions",
        "kv.rotationpolicy.get",
        "identity.token",
        "any",
    ];
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xfa01_75ee_d000_0001);
    let mut latency_on: Vec<(&str, Instant)> = Vec::new();
    let mut next_chat = Instant::now() + Duration::from_millis(rng.u64(2_000..6_000));
    // Faults follow the traffic (one rule per FAULT_EVERY source events, queued rules
    // cleared every CLEAR_EVERY), so a stalled handler is not buried under faults that
    // pile up while nothing consumes them.
    const FAULT_EVERY: usize = 8;
    const CLEAR_EVERY: usize = 200;
    let (mut injected_at, mut cleared_at) = (0usize, 0usize);
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !enabled {
            continue;
        }
        let now = Instant::now();
        if now >= next_chat {
            let ms = rng.u64(500..4_000);
            let failure = if rng.bool() { Failure::ServerError } else { Failure::Throttle { retry_after_secs: 1 } };
            sink.fail_for(Duration::from_millis(ms), failure);
            let mut c = lock(&counts);
            c.chat_outages += 1;
            c.chat_outage_ms += ms;
            next_chat = now + Duration::from_millis(ms + rng.u64(3_000..10_000));
        }
        for (r, _) in latency_on.iter().filter(|(_, until)| *until <= now) {
            sim.control(Method::POST, "latency", Some(json!({"route": r, "ms": 0}))).await;
        }
        latency_on.retain(|(_, until)| *until > now);
        let done = progress.load(Ordering::SeqCst);
        if done >= cleared_at + CLEAR_EVERY {
            cleared_at = done;
            sim.clear_faults().await;
            latency_on.clear();
        }
        if done < injected_at + FAULT_EVERY {
            continue;
        }
        injected_at = done;
        let route = ROUTES[rng.usize(..ROUTES.len())];
        let count = rng.u32(1..4);
        let (kind, body) = match rng.u32(0..100) {
            0..30 => ("429+Retry-After", json!({"route": route, "count": count, "status": 429, "retryAfter": 1})),
            30..50 => ("500", json!({"route": route, "count": count, "status": 500})),
            50..65 => ("503", json!({"route": route, "count": count, "status": 503})),
            65..80 => ("dropped connection", json!({"route": route, "count": count.min(2), "drop": true})),
            _ => ("latency", json!({"route": route, "ms": rng.u64(20..400)})),
        };
        if kind == "latency" {
            latency_on.push((route, Instant::now() + Duration::from_millis(rng.u64(500..3_000))));
            sim.control(Method::POST, "latency", Some(body)).await;
        } else {
            sim.control(Method::POST, "faults", Some(body)).await;
        }
        let n = if kind == "latency" { 1 } else { count as usize };
        *lock(&counts).by_kind.entry(kind.to_owned()).or_default() += n;
    }
    sim.clear_faults().await;
    sink.recover();
}

/// Feeds the events azsim produces (new key versions, cmkguard's own registry writes
/// coming back) into the driver, as an Event Grid subscription on them would.
async fn feed_azsim_events(
    sim: Arc<Sim>,
    driver: Arc<Driver>,
    versions: Arc<Mutex<HashMap<String, String>>>,
    seen: Arc<AtomicUsize>,
    echoes: Arc<AtomicUsize>,
) {
    let all = sim.events().await;
    let from = seen.load(Ordering::SeqCst);
    for e in all.iter().skip(from) {
        if e["eventType"] == "Microsoft.KeyVault.KeyNewVersionCreated" {
            let name = e["data"]["ObjectName"].as_str().unwrap_or_default().to_owned();
            let version = e["data"]["Version"].as_str().unwrap_or_default().to_owned();
            lock(&versions).insert(name, version);
        } else {
            echoes.fetch_add(1, Ordering::SeqCst);
        }
        let id = e["id"].as_str().unwrap_or_default().to_owned();
        driver.enqueue(id, Arc::new(e.clone()));
    }
    seen.store(all.len().max(from), Ordering::SeqCst);
}

// ------------------------------------------------------------------ main

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn run(args: Args) -> Result<bool, String> {
    let t0 = Instant::now();
    let load_start = loadavg();
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("cmkguard-soak-{}-{}", args.seed, std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let est = estate(&mut rng, args.keys, args.registries);
    let scenario_path = dir.join("scenario.json");
    std::fs::write(&scenario_path, serde_json::to_vec_pretty(&est.scenario).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let shapes = Shapes { key: fixture("eventgrid/keyvault.SecretNewVersionCreated.eventgrid.json") };

    let sim = Arc::new(Sim::start(&scenario_path, &["--lro-polls", "1"]));
    let port = sim.port();
    let sink = Arc::new(ChatSink::start().await.map_err(|e| format!("chat sink: {e}"))?);
    sink.channel("ops", ChannelKind::Webhook, Some(CHANNEL_SECRET)).map_err(|e| e.to_string())?;
    let ledger = format!("sqlite:{}", dir.join("ledger.db").display());
    let henv = HandlerEnv::new(
        &dir,
        &sim,
        &ledger,
        &sink.url(ChannelKind::Webhook, "ops"),
        args.budget_secs,
        args.claim_ttl_secs,
    );
    let mut handler = Some(henv.start().await?);
    let mut restarts = 0usize;

    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let driver = Arc::new(Driver {
        http: reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().map_err(|e| e.to_string())?,
        base: Mutex::new(format!("http://127.0.0.1:{}", handler.as_ref().map(|h| h.port).unwrap_or_default())),
        stats: Mutex::new(Stats::default()),
        outstanding: AtomicUsize::new(0),
        tx,
        route_rng: Mutex::new(fastrand::Rng::with_seed(args.seed ^ 0x0070_07e5)),
    });
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    {
        let driver = driver.clone();
        let sem = sem.clone();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                let Ok(permit) = sem.clone().acquire_owned().await else { break };
                let driver = driver.clone();
                tokio::spawn(async move {
                    driver.deliver(d).await;
                    drop(permit);
                });
            }
        });
    }
    let stop_faults = Arc::new(AtomicBool::new(false));
    let fault_counts = Arc::new(Mutex::new(FaultCounts::default()));
    let progress = Arc::new(AtomicUsize::new(0));
    let faults_task = tokio::spawn(inject_faults(
        sim.clone(),
        sink.clone(),
        args.seed,
        stop_faults.clone(),
        fault_counts.clone(),
        !args.no_faults,
        progress.clone(),
    ));
    let versions: Arc<Mutex<HashMap<String, String>>> =
        Arc::new(Mutex::new(est.keys.iter().map(|k| (k.name.clone(), k.first_version.clone())).collect()));
    let seen_events = Arc::new(AtomicUsize::new(0));
    let echoes = Arc::new(AtomicUsize::new(0));
    let stop_feed = Arc::new(AtomicBool::new(false));
    let feed_task = {
        let (sim, driver, versions, seen, echoes, stop) =
            (sim.clone(), driver.clone(), versions.clone(), seen_events.clone(), echoes.clone(), stop_feed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                feed_azsim_events(sim.clone(), driver.clone(), versions.clone(), seen.clone(), echoes.clone()).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // The source: a seeded mix. Kill points spread evenly with jitter.
    let kill_at: Vec<usize> = (1..=args.kills)
        .map(|k| {
            let base = args.events * k / (args.kills + 1);
            let jitter = args.events / (args.kills + 1) / 4;
            base.saturating_sub(jitter / 2) + rng.usize(..jitter.max(1))
        })
        .collect();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sent: Vec<(String, Arc<Value>)> = Vec::new();
    let mut kills_done = 0usize;
    let mut in_flight_at_kill = Vec::new();
    let window = args.concurrency * 3;
    let deadline = t0 + Duration::from_secs(args.max_minutes * 60);
    println!(
        "soak: seed {} events {} kills {} concurrency {} estate {} keys / {} registries, dir {}",
        args.seed,
        args.events,
        args.kills,
        args.concurrency,
        est.keys.len(),
        est.registries.len(),
        dir.display()
    );
    for i in 0..args.events {
        while driver.outstanding.load(Ordering::SeqCst) >= window {
            if Instant::now() > deadline {
                return Err("the run did not finish within --max-minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if kills_done < kill_at.len() && i >= kill_at[kills_done] {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..150))).await;
            let inflight = driver.outstanding.load(Ordering::SeqCst);
            if let Some(h) = handler.take() {
                henv.keep_log(&h, restarts);
                // Dropping the server SIGKILLs it (std's Child::kill) and reaps it.
                drop(h);
            }
            kills_done += 1;
            in_flight_at_kill.push(inflight);
            restarts += 1;
            let h = henv.start().await?;
            *lock(&driver.base) = format!("http://127.0.0.1:{}", h.port);
            handler = Some(h);
            println!("soak: SIGKILL #{kills_done} at event {i} ({inflight} outstanding); restarted on the same ledger");
        }
        progress.store(i, Ordering::SeqCst);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let roll = rng.u32(0..100);
        if roll < 15 && !sent.is_empty() {
            // A duplicate: the same event (same id) again, recent or older.
            let back = rng.usize(..sent.len().min(300));
            let (id, ev) = sent[sent.len() - 1 - back].clone();
            *kinds.entry("duplicate").or_default() += 1;
            driver.enqueue(id, ev);
            continue;
        }
        let id = uuid(&mut rng);
        let event = match roll {
            0..55 => {
                let r = &est.registries[rng.usize(..est.registries.len())];
                *kinds.entry("ResourceWriteSuccess").or_default() += 1;
                shapes.registry_write(&id, &r.id, &now)
            }
            55..80 => {
                let k = &est.keys[rng.usize(..est.keys.len())];
                let v = lock(&versions).get(&k.name).cloned().unwrap_or_default();
                *kinds.entry("KeyNearExpiry").or_default() += 1;
                shapes.key_event(&id, "KeyNearExpiry", k, &v, port, &now)
            }
            80..95 => {
                let k = if rng.bool() { &est.keys[est.keys.len() - 1] } else { &est.keys[rng.usize(..est.keys.len())] };
                let v = lock(&versions).get(&k.name).cloned().unwrap_or_default();
                *kinds.entry("KeyExpired").or_default() += 1;
                shapes.key_event(&id, "KeyExpired", k, &v, port, &now)
            }
            _ => {
                // A new key version (azsim emits KeyNewVersionCreated; the feeder delivers it).
                let k = &est.keys[rng.usize(..est.keys.len() - 1)];
                *kinds.entry("KeyNewVersionCreated").or_default() += 1;
                sim.rotate_key(&k.vault, &k.name).await;
                continue;
            }
        };
        let ev = Arc::new(event);
        sent.push((id.clone(), ev.clone()));
        driver.enqueue(id, ev);
    }

    // Drain: faults stop once the source is done; wait for every delivery to end.
    stop_faults.store(true, Ordering::SeqCst);
    let _ = faults_task.await;
    let mut quiet_since = Instant::now();
    let mut last_seen = seen_events.load(Ordering::SeqCst);
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "the run did not drain within --max-minutes ({} deliveries outstanding); logs in {}",
                driver.outstanding.load(Ordering::SeqCst),
                dir.display()
            ));
        }
        let seen = seen_events.load(Ordering::SeqCst);
        if seen != last_seen || driver.outstanding.load(Ordering::SeqCst) > 0 {
            last_seen = seen;
            quiet_since = Instant::now();
        }
        if quiet_since.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_feed.store(true, Ordering::SeqCst);
    let _ = feed_task.await;
    let wall = t0.elapsed();
    let load_end = loadavg();
    let code = handler.take().map(|mut h| {
        let (code, _) = h.terminate();
        henv.keep_log(&h, restarts);
        code
    });

    // ------------------------------------------------------------------ checks
    let mut problems: Vec<String> = Vec::new();
    if code != Some(Some(0)) {
        problems.push(format!("the last handler did not exit 0 on SIGTERM: {code:?}"));
    }
    let stats = std::mem::take(&mut *lock(&driver.stats));
    let dead: Vec<&String> = stats.per_id.iter().filter(|(_, r)| r.dead).map(|(id, _)| id).collect();
    for id in dead.iter().take(20) {
        problems.push(format!("event {id} was never answered 2xx ({:?})", stats.per_id[*id].statuses));
    }
    let undone = stats.per_id.values().filter(|r| !r.done).count();
    if undone > 0 {
        problems.push(format!("{undone} event id(s) never got a 2xx ({} dead-lettered)", dead.len()));
    }

    // Ledger: every event id exactly once.
    let out = Command::new(cmkguard_bin())
        .args(["audit", "list", "--since", "3650d", "--limit", "100000000", "--output", "json", "--ledger"])
        .arg(&ledger)
        .output()
        .map_err(|e| format!("cmkguard audit list: {e}"))?;
    if !out.status.success() {
        return Err(format!("cmkguard audit list failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let records: Vec<Value> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cmkguard audit list --output json: {e}"))?;
    let mut in_ledger: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *in_ledger.entry(r["eventId"].as_str().unwrap_or_default()).or_default() += 1;
    }
    let mut missing = Vec::new();
    for id in stats.per_id.keys() {
        match in_ledger.get(id.as_str()).copied().unwrap_or(0) {
            1 => {}
            0 => missing.push(id.clone()),
            n => problems.push(format!("event {id} is in the ledger {n} times")),
        }
    }
    if !missing.is_empty() {
        missing.sort();
        problems.push(format!(
            "{} event id(s) are not in the ledger, e.g. {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let unknown: Vec<&&str> = in_ledger.keys().filter(|id| !stats.per_id.contains_key(**id)).collect();
    if !unknown.is_empty() {
        problems.push(format!(
            "{} ledger record(s) for ids never sent, e.g. {:?}",
            unknown.len(),
            &unknown[..unknown.len().min(5)]
        ));
    }

    // Rotations: no registry moved to the same key twice; every write accounted for.
    let writes = sim.control(Method::GET, "writes", None).await;
    let writes = writes["writes"].as_array().cloned().unwrap_or_default();
    let mut per_target: BTreeMap<(String, String), usize> = BTreeMap::new();
    for w in &writes {
        let reg =
            w["registry"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
        let key = w["keyIdentifier"].as_str().unwrap_or("none").to_ascii_lowercase();
        *per_target.entry((reg, key)).or_default() += 1;
    }
    for ((reg, key), n) in &per_target {
        if *n > 1 {
            problems.push(format!("registry {reg} was moved to {key} {n} times"));
        }
    }
    let mut rotate_actions: Vec<(String, String, String)> = Vec::new(); // (registry name, status, detail)
    let mut notify_sent_events: Vec<String> = Vec::new();
    let mut action_counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        for a in r["actions"].as_array().into_iter().flatten() {
            let action = a["action"].as_str().unwrap_or_default();
            let status = a["status"].as_str().unwrap_or_default();
            *action_counts.entry(format!("{action} {status}")).or_default() += 1;
            if action == "rotate-registry-key" {
                let reg = a["target"]
                    .as_str()
                    .unwrap_or_default()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                rotate_actions.push((
                    reg,
                    status.to_owned(),
                    a["detail"].as_str().unwrap_or_default().to_ascii_lowercase(),
                ));
            }
            if action == "notify" && matches!(status, "done" | "sent") {
                notify_sent_events.push(r["eventId"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    for (reg, key) in per_target.keys() {
        let claimed = rotate_actions
            .iter()
            .any(|(r, s, d)| r == reg && matches!(s.as_str(), "done" | "pending") && d.contains(key.as_str()));
        if !claimed {
            problems.push(format!("registry {reg} was moved to {key} but no audit record says so (done or pending)"));
        }
    }
    let latest = lock(&versions).clone();
    let mut lagging = 0usize;
    for r in &est.registries {
        let doc = sim.registry(&r.id).await;
        let state = doc["properties"]["provisioningState"].as_str().unwrap_or_default();
        if state.eq_ignore_ascii_case("Updating") {
            problems.push(format!("registry {} is left Updating (an operation nobody finished)", r.name));
        }
        let Some(k) = r.pinned else { continue };
        let want = latest.get(&est.keys[k].name).cloned().unwrap_or_default().to_ascii_lowercase();
        let have = doc["properties"]["encryption"]["keyVaultProperties"]["keyIdentifier"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !have.ends_with(&format!("/{want}")) {
            lagging += 1;
            let explained = rotate_actions
                .iter()
                .any(|(reg, s, d)| *reg == r.name && matches!(s.as_str(), "failed" | "pending") && d.contains(&want));
            if !explained {
                problems.push(format!(
                    "registry {} is on {have}, not the latest version {want} of {}, and no record says the rotation failed",
                    r.name, est.keys[k].name
                ));
            }
        }
    }

    // Notifications: none twice within the window (the whole run); every "sent" arrived.
    let received = sink.received();
    let mut by_dedupe: BTreeMap<String, usize> = BTreeMap::new();
    let mut arrived_for: HashSet<String> = HashSet::new();
    for m in &received {
        let key = format!("{}|{}", m.channel, m.body["dedupekey"].as_str().unwrap_or("?"));
        *by_dedupe.entry(key).or_default() += 1;
        if let Some(e) = m.body["data"]["event"]["id"].as_str() {
            arrived_for.insert(e.to_owned());
        }
    }
    for (k, n) in &by_dedupe {
        if *n > 1 {
            problems.push(format!("notification {k} was sent {n} times within the dedupe window"));
        }
    }
    for e in &notify_sent_events {
        if !arrived_for.contains(e) {
            problems.push(format!("event {e}: the record says its notification was sent, but none arrived"));
        }
    }
    let rejected = sink.rejected();
    if !rejected.is_empty() {
        problems.push(format!("the chat receiver refused {} post(s), e.g. {:?}", rejected.len(), rejected[0]));
    }

    // ------------------------------------------------------------------ summary
    let mut lat = stats.latency_ms.clone();
    lat.sort_by(f64::total_cmp);
    let mut ok_lat = stats.ok_latency_ms.clone();
    ok_lat.sort_by(f64::total_cmp);
    let faults = std::mem::take(&mut *lock(&fault_counts));
    let calls = sim.control(Method::GET, "calls", None).await;
    println!("\n== soak summary (seed {}) ==", args.seed);
    println!("source events        {} ({:?})", args.events, kinds);
    println!(
        "azsim events fed     {} (of which {} cmkguard's own writes coming back)",
        seen_events.load(Ordering::SeqCst),
        echoes.load(Ordering::SeqCst)
    );
    println!("distinct event ids   {}", stats.per_id.len());
    println!(
        "deliveries           {} ({} direct, {} Functions envelope)",
        stats.deliveries, stats.sent_direct, stats.sent_functions
    );
    println!("redeliveries         {}", stats.redeliveries);
    println!("answers              {:?}", stats.by_status);
    println!("azsim faults         {:?}", faults.by_kind);
    println!(
        "chat outages         {} ({:.1} s down in total)",
        faults.chat_outages,
        faults.chat_outage_ms as f64 / 1000.0
    );
    println!("SIGKILLs             {} (outstanding deliveries at each: {:?})", kills_done, in_flight_at_kill);
    println!("azsim calls          {}", calls["counts"]);
    println!(
        "registry writes      {} accepted ({} registries lag their key's latest version, explained)",
        writes.len(),
        lagging
    );
    println!("ledger records       {}", records.len());
    println!("actions recorded     {:?}", action_counts);
    println!("chat messages        {} received, {} requests", received.len(), sink.requests());
    println!(
        "answer latency       p50 {:.1} ms, p99 {:.1} ms (all answers); 2xx p50 {:.1} ms, p99 {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&ok_lat, 0.5),
        percentile(&ok_lat, 0.99)
    );
    println!("wall time            {:.1} s", wall.as_secs_f64());
    println!("load average         {load_start} (start), {load_end} (end)");
    if problems.is_empty() {
        println!("\nsoak: PASS — every check held");
        if !args.keep && args.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(true)
    } else {
        let _ = std::fs::write(dir.join("azsim.log"), sim.logs());
        println!("\nsoak: FAIL — {} problem(s); logs, ledger and scenario in {}", problems.len(), dir.display());
        for p in &problems {
            println!("  - {p}");
        }
        Ok(false)
    }
}

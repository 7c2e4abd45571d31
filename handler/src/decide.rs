//! The decide stage: facts → decision by the sandboxed WebAssembly policy
//! ([`cmkguard_policy`]), behind [`crate::pipeline::Decide`]; plus the https client the
//! policy loader uses for pinned URLs and the hot-reload manifest, and the alert for a
//! refused hot reload ([`alert_refusals`]: chat channels and an audit record, through
//! the act stage's notifier and ledger).
//!
//! Evaluation is CPU-bound and bounded by the policy deadline. A fresh-sandbox
//! evaluation of the default policy takes tens of microseconds (BENCHMARKS.md
//! "Policy"), less than handing it to the blocking pool costs, so it runs inline on the
//! async worker. A policy that has been measured slower than [`INLINE_LIMIT`] (e.g. a
//! Python one, ~2 ms) runs on the blocking pool so it cannot stall other requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cmkguard_model::{PolicyInput, Severity};
use cmkguard_notify::Notification;
use cmkguard_policy::{Fetch, Limits, PolicyEngine, PolicyHost, PolicySource};
use tokio::sync::mpsc;

use crate::act::ActStage;
use crate::config::PolicyConfig;
use crate::pipeline::{ActionOutcome, ActionStatus, Decide, Decided, PolicyRef};

/// Refused reloads waiting for their alert; more are dropped (and logged) until it drains.
const REFUSALS_QUEUED: usize = 16;

/// A new policy module the hot reload refused; the policy in `serving` keeps deciding.
#[derive(Debug, Clone)]
pub struct ReloadRefused {
    /// What was wrong (digest mismatch, does not compile, settings refused, fetch failed…).
    pub error: String,
    pub serving: PolicyRef,
    pub at: DateTime<Utc>,
}

/// Evaluations measured faster than this run inline on the async worker.
pub const INLINE_LIMIT: Duration = Duration::from_micros(500);

/// The policy engine as the pipeline's decide stage.
pub struct PolicyDecide {
    host: Arc<PolicyHost>,
    /// Moving estimate of one evaluation, in nanoseconds.
    estimate_ns: AtomicU64,
    /// Refused reloads, for whoever alerts on them ([`PolicyDecide::take_refusals`]).
    refusals: Mutex<Option<mpsc::Receiver<ReloadRefused>>>,
}

impl std::fmt::Debug for PolicyDecide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyDecide").field("host", &self.host).finish_non_exhaustive()
    }
}

impl PolicyDecide {
    pub fn new(host: Arc<PolicyHost>) -> Self {
        Self { host, estimate_ns: AtomicU64::new(0), refusals: Mutex::new(None) }
    }

    /// Loads the configured policy (refusing to start with a bad one) and, when
    /// `reload_every` is set, starts the hot-reload task.
    pub async fn from_config(config: &PolicyConfig) -> Result<Self, String> {
        let fetch = if needs_fetcher(config) { Some(HttpsFetch::new()?) } else { None };
        let decide = Self::open(config, fetch).await?;
        decide.start_reload(config);
        Ok(decide)
    }

    /// Loads the configured policy (refusing to start with a bad one) without starting
    /// the hot-reload task ([`PolicyDecide::start_reload`], once the rest of the start
    /// succeeded). `fetch` is needed for a URL policy or a manifest ([`needs_fetcher`]).
    pub async fn open(config: &PolicyConfig, fetch: Option<HttpsFetch>) -> Result<Self, String> {
        let limits = Limits { timeout: config.timeout, ..Limits::default() };
        let engine =
            PolicyEngine::new(limits, Some(config.cache_dir.clone())).map_err(|e| format!("policy engine: {e}"))?;
        let source = PolicySource::from_setting(config.source.as_deref(), config.sha256.as_deref())
            .map_err(|e| e.to_string())?;
        let fetch = fetch.map(|f| Arc::new(f) as Arc<dyn Fetch>);
        let host = PolicyHost::open(engine, source, config.manifest.clone(), config.settings.clone(), fetch)
            .await
            .map_err(|e| format!("policy: {e}"))?;
        Ok(Self::new(Arc::new(host)))
    }

    /// Starts the hot-reload task when `reload_every` is set (at most once per policy).
    pub fn start_reload(&self, config: &PolicyConfig) {
        let Some(every) = config.reload_every else { return };
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if refusals.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(REFUSALS_QUEUED);
        let serving = Arc::downgrade(&self.host);
        // Detached: it lives as long as the runtime (the process).
        drop(self.host.clone().spawn_reload(every, move |e| {
            let Some(host) = serving.upgrade() else { return };
            let refused =
                ReloadRefused { error: e.to_string(), serving: host.current().reference().clone(), at: Utc::now() };
            if tx.try_send(refused).is_err() {
                tracing::warn!("policy reload refusals are not being alerted fast enough; this one is only logged");
            }
        }));
        *refusals = Some(rx);
    }

    /// The refused reloads (once: the first caller gets the receiver). Hand it to
    /// [`alert_refusals`] with the act stage, which owns the chat channels and the ledger.
    pub fn take_refusals(&self) -> Option<mpsc::Receiver<ReloadRefused>> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn host(&self) -> &Arc<PolicyHost> {
        &self.host
    }

    fn record(&self, took: Duration) {
        let took = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let old = self.estimate_ns.load(Ordering::Relaxed);
        let new = if old == 0 { took } else { (old * 7 + took) / 8 };
        self.estimate_ns.store(new, Ordering::Relaxed);
    }
}

#[async_trait]
impl Decide for PolicyDecide {
    async fn decide(&self, input: &PolicyInput) -> Decided {
        let policy = self.host.current();
        let reference = policy.reference().clone();
        let started = Instant::now();
        let result = if Duration::from_nanos(self.estimate_ns.load(Ordering::Relaxed)) <= INLINE_LIMIT {
            policy.evaluate(input)
        } else {
            let input = input.clone();
            match tokio::task::spawn_blocking(move || policy.evaluate(&input)).await {
                Ok(r) => r,
                Err(e) => {
                    return Decided::PolicyError { policy: Some(reference), error: format!("policy task failed: {e}") };
                }
            }
        };
        self.record(started.elapsed());
        match result {
            Ok(decision) => Decided::Decision { policy: reference, decision },
            Err(e) => Decided::PolicyError { policy: Some(reference), error: e.to_string() },
        }
    }
}

/// Alerts every refused reload until the sender is gone (the reload task ends with the
/// process). Run it as a task: `tokio::spawn(alert_refusals(act, rx))`.
pub async fn alert_refusals(stage: ActStage, mut refusals: mpsc::Receiver<ReloadRefused>) {
    while let Some(refused) = refusals.recv().await {
        alert_refused(&stage, &refused).await;
    }
}

/// Alerts one refused reload like a policy failure (high severity, to every configured
/// channel, deduplicated per error within the notification window) and records it in the
/// ledger as an audit record of its own (`policy-reload-refused:…`, a policy error that
/// remediated nothing). Returns the notification outcomes.
pub async fn alert_refused(stage: &ActStage, refused: &ReloadRefused) -> Vec<ActionOutcome> {
    const RULE: &str = "policy-reload-refused";
    let serving = &refused.serving;
    let short = |d: &str| d.get(..12).unwrap_or(d).to_owned();
    let text = format!(
        "A new policy module was refused: {}. {} {} (sha256 {}) keeps deciding; fix the new module or its manifest.",
        refused.error,
        serving.name,
        serving.version,
        short(&serving.digest)
    );
    // The same failure (same message) is one alert per window, whatever the ticks.
    let error_digest = short(&cmkguard_policy::source::sha256_hex(refused.error.as_bytes()));
    let n = Notification::new(Severity::High, "[high] cmkguard: new policy refused", text, refused.at)
        .with_rule(RULE)
        .with_mode(stage.mode.as_str());
    let mut out = Vec::new();
    match &stage.notifier {
        None => out.push(ActionOutcome {
            action: "notify".into(),
            target: String::new(),
            status: ActionStatus::Skipped,
            detail: "refused policy reload not alerted: no chat channels are configured".into(),
        }),
        Some(notifier) => {
            for ch in notifier.channels().iter() {
                let rule = format!("{RULE}@{}", ch.name);
                match stage.ledger.should_send(&rule, "policy", &error_digest, stage.dedupe_window).await {
                    Ok(false) => {
                        out.push(ActionOutcome {
                            action: "notify".into(),
                            target: ch.name.clone(),
                            status: ActionStatus::Skipped,
                            detail: "already alerted within the dedupe window".into(),
                        });
                        continue;
                    }
                    Ok(true) => {}
                    Err(e) => tracing::warn!(error = %e, "alert dedupe unavailable; sending anyway"),
                }
                let delivery = notifier.send(ch, &n).await;
                if !delivery.is_sent()
                    && let Err(e) = stage.ledger.forget_send(&rule, "policy", &error_digest).await
                {
                    tracing::warn!(error = %e, "could not forget a failed alert; the next one waits for the window");
                }
                out.push(delivery.outcome(&ch.name));
            }
        }
    }
    // One record per failure and window too (a manifest that stays unreachable fails every tick).
    let record_rule = format!("{RULE}@ledger");
    if !stage.ledger.should_send(&record_rule, "policy", &error_digest, stage.dedupe_window).await.unwrap_or(true) {
        return out;
    }
    let record = cmkguard_ledger::AuditRecord {
        event_id: format!("{RULE}:{}:{error_digest}", refused.at.timestamp_millis()),
        event_type: "cmkguard.PolicyReloadRefused".into(),
        subject: serving.name.clone(),
        event_time: refused.at,
        recorded_at: Utc::now(),
        mode: stage.mode.as_str().into(),
        decided: Decided::PolicyError {
            policy: Some(serving.clone()),
            error: format!("reload refused: {}", refused.error),
        },
        actions: out.clone(),
    };
    if let Err(e) = stage.ledger.record(&record).await {
        tracing::error!(error = %e, "could not record the refused policy reload");
    }
    out
}

/// Whether the policy settings fetch anything over https (a URL policy or a manifest),
/// so that the policy needs an [`HttpsFetch`]. Otherwise none is built (its TLS setup is
/// start-up time for nothing).
pub fn needs_fetcher(config: &PolicyConfig) -> bool {
    config.manifest.is_some() || config.source.as_deref().is_some_and(|s| s.starts_with("https://"))
}

/// Fetches policy modules and manifests over https (bounded size and time).
#[derive(Debug, Clone)]
pub struct HttpsFetch {
    client: reqwest::Client,
}

impl HttpsFetch {
    /// With the platform's CA roots loaded for this client alone.
    pub fn new() -> Result<Self, String> {
        Self::with_tls(&cmkguard_azure::SharedTls::load().map_err(|e| e.to_string())?)
    }

    /// With the process's shared TLS settings.
    pub fn with_tls(tls: &cmkguard_azure::SharedTls) -> Result<Self, String> {
        let client = tls
            .client_builder()
            .timeout(Duration::from_secs(30))
            .https_only(true)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl Fetch for HttpsFetch {
    async fn fetch(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
        let mut resp = self.client.get(url).send().await.map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
            return Err(format!("larger than {max_bytes} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.without_url().to_string())? {
            if body.len() + chunk.len() > max_bytes {
                return Err(format!("larger than {max_bytes} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(settings: &str) -> PolicyConfig {
        PolicyConfig {
            source: None,
            sha256: None,
            manifest: None,
            settings: settings.to_owned(),
            cache_dir: std::env::temp_dir().join("cmkguard-decide-test-cache"),
            timeout: Duration::from_millis(50),
            reload_every: None,
        }
    }

    #[test]
    fn a_fetcher_only_for_urls_and_manifests() {
        let mut c = config("{}");
        assert!(!needs_fetcher(&c), "embedded policy");
        c.source = Some("/opt/policy.wasm".into());
        assert!(!needs_fetcher(&c), "file policy");
        c.source = Some("https://example.invalid/policy.wasm".into());
        assert!(needs_fetcher(&c), "URL policy");
        c.source = None;
        c.manifest = Some("https://example.invalid/manifest.json".into());
        assert!(needs_fetcher(&c), "manifest");
    }

    #[tokio::test]
    async fn the_embedded_policy_decides_and_names_itself() {
        let decide = PolicyDecide::from_config(&config("{}")).await.unwrap();
        let input = cmkguard_policy::sample::sample_input(4);
        match decide.decide(&input).await {
            Decided::Decision { policy, decision } => {
                assert_eq!(policy.name, "cmkguard-default");
                assert_eq!(policy.digest, cmkguard_policy::source::sha256_hex(cmkguard_policy::DEFAULT_POLICY));
                assert!(decision.findings.iter().any(|f| f.rule_id == "CMK003"), "{decision:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_input_is_a_policy_error_not_a_crash() {
        let decide = PolicyDecide::from_config(&config("{}")).await.unwrap();
        let mut input = cmkguard_policy::sample::sample_input(1);
        input.event.kind = "key-deleted".into();
        match decide.decide(&input).await {
            Decided::PolicyError { policy, error } => {
                assert_eq!(policy.unwrap().name, "cmkguard-default");
                assert!(error.contains("key-deleted"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn settings_the_policy_refuses_stop_the_start() {
        let e = PolicyDecide::from_config(&config(r#"{"expiry_warning_days": 0}"#)).await.unwrap_err();
        assert!(e.contains("expiry_warning_days"), "{e}");
        let mut c = config("{}");
        c.source = Some("/nonexistent/policy.wasm".into());
        let e = PolicyDecide::from_config(&c).await.unwrap_err();
        assert!(e.contains("/nonexistent/policy.wasm"), "{e}");
    }

    /// A module replaced by a broken one under the reload task: the old policy keeps
    /// deciding, the refusal reaches the chat channel once and is recorded in the ledger.
    #[cfg(feature = "demo")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_reload_is_alerted_once_and_recorded() {
        use cmkguard_ledger::ListQuery;

        let dir = tempfile::tempdir().unwrap();
        let sink = cmkguard_notify::sink::ChatSink::start().await.unwrap();
        let db = dir.path().join("ledger.db");
        let mut app = crate::cli::demo::local_config(crate::config::Mode::Monitor, &db).unwrap();
        app.channels = vec![crate::cli::demo::sink_channel(&sink, "ops")];
        let ledger = cmkguard_ledger::open(&format!("sqlite:{}", db.display()), None).await.unwrap();
        let stage = ActStage::new(&app, ledger.clone(), None).unwrap();

        let module = dir.path().join("policy.wasm");
        std::fs::write(&module, cmkguard_policy::DEFAULT_POLICY).unwrap();
        let mut c = config("{}");
        c.source = Some(module.display().to_string());
        c.reload_every = Some(Duration::from_millis(50));
        let decide = PolicyDecide::from_config(&c).await.unwrap();
        let refusals = decide.take_refusals().expect("reloading, so refusals are reported");
        assert!(decide.take_refusals().is_none(), "one consumer");
        let alerts = tokio::spawn(alert_refusals(stage.clone(), refusals));

        std::fs::write(&module, b"\0asm\x0d\0\x01\0broken").unwrap();
        let got = sink.wait_for(1, Duration::from_secs(20)).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].channel, "ops");
        assert!(got[0].title().unwrap_or_default().contains("new policy refused"), "{}", got[0].summary());
        let body = got[0].body.to_string();
        assert!(body.contains("does not compile") && body.contains("cmkguard-default"), "{body}");

        // The old module keeps deciding.
        match decide.decide(&cmkguard_policy::sample::sample_input(2)).await {
            Decided::Decision { policy, .. } => assert_eq!(policy.name, "cmkguard-default"),
            other => panic!("{other:?}"),
        }
        // Recorded once; the same refusal again is neither re-sent nor re-recorded.
        let records = |all: Vec<cmkguard_ledger::AuditRecord>| {
            all.into_iter().filter(|r| r.event_type == "cmkguard.PolicyReloadRefused").collect::<Vec<_>>()
        };
        // The record is written after the message is sent: wait for it (bounded).
        let mut recorded = Vec::new();
        for _ in 0..200 {
            recorded = records(ledger.list(&ListQuery::default()).await.unwrap());
            if !recorded.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert!(
            matches!(&recorded[0].decided, Decided::PolicyError { error, .. } if error.contains("does not compile"))
        );
        let again = ReloadRefused {
            error: match &recorded[0].decided {
                Decided::PolicyError { error, .. } => error.trim_start_matches("reload refused: ").to_owned(),
                Decided::Decision { .. } => unreachable!(),
            },
            serving: decide.host().current().reference().clone(),
            at: Utc::now(),
        };
        let out = alert_refused(&stage, &again).await;
        assert!(out.iter().all(|o| o.status == ActionStatus::Skipped), "{out:?}");
        assert_eq!(records(ledger.list(&ListQuery::default()).await.unwrap()).len(), 1);
        assert_eq!(sink.received().len(), 1);
        alerts.abort();
    }
}

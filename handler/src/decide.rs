//! The decide stage: facts → decision by the sandboxed WebAssembly policy
//! ([`cmkguard_policy`]), behind [`crate::pipeline::Decide`]; plus the https client the
//! policy loader uses for pinned URLs and the hot-reload manifest.
//!
//! Evaluation is CPU-bound and bounded by the policy deadline. A fresh-sandbox
//! evaluation of the default policy takes tens of microseconds (BENCHMARKS.md
//! "Policy"), less than handing it to the blocking pool costs, so it runs inline on the
//! async worker. A policy that has been measured slower than [`INLINE_LIMIT`] (e.g. a
//! Python one, ~2 ms) runs on the blocking pool so it cannot stall other requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cmkguard_model::PolicyInput;
use cmkguard_policy::{Fetch, Limits, PolicyEngine, PolicyHost, PolicySource};

use crate::config::PolicyConfig;
use crate::pipeline::{Decide, Decided};

/// Evaluations measured faster than this run inline on the async worker.
pub const INLINE_LIMIT: Duration = Duration::from_micros(500);

/// The policy engine as the pipeline's decide stage.
pub struct PolicyDecide {
    host: Arc<PolicyHost>,
    /// Moving estimate of one evaluation, in nanoseconds.
    estimate_ns: AtomicU64,
}

impl std::fmt::Debug for PolicyDecide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyDecide").field("host", &self.host).finish_non_exhaustive()
    }
}

impl PolicyDecide {
    pub fn new(host: Arc<PolicyHost>) -> Self {
        Self { host, estimate_ns: AtomicU64::new(0) }
    }

    /// Loads the configured policy (refusing to start with a bad one) and, when
    /// `reload_every` is set, starts the hot-reload task.
    pub async fn from_config(config: &PolicyConfig) -> Result<Self, String> {
        let limits = Limits { timeout: config.timeout, ..Limits::default() };
        let engine =
            PolicyEngine::new(limits, Some(config.cache_dir.clone())).map_err(|e| format!("policy engine: {e}"))?;
        let source = PolicySource::from_setting(config.source.as_deref(), config.sha256.as_deref())
            .map_err(|e| e.to_string())?;
        let fetch: Arc<dyn Fetch> = Arc::new(HttpsFetch::new()?);
        let host = PolicyHost::open(engine, source, config.manifest.clone(), config.settings.clone(), Some(fetch))
            .await
            .map_err(|e| format!("policy: {e}"))?;
        let host = Arc::new(host);
        if let Some(every) = config.reload_every {
            // Detached: it lives as long as the runtime (the process).
            drop(host.clone().spawn_reload(every, |_| {}));
        }
        Ok(Self::new(host))
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

/// Fetches policy modules and manifests over https (bounded size and time).
#[derive(Debug, Clone)]
pub struct HttpsFetch {
    client: reqwest::Client,
}

impl HttpsFetch {
    pub fn new() -> Result<Self, String> {
        let client = reqwest::Client::builder()
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
}

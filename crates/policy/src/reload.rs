//! The serving policy and hot reload: the configured source is re-checked (a file by
//! content digest, a URL through its manifest); a new module is loaded and validated off
//! the async threads and swapped in atomically. In-flight evaluations finish on the old
//! module; a broken new one is refused and the old one keeps serving.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::engine::{Policy, PolicyEngine};
use crate::error::LoadError;
use crate::source::{Fetch, Manifest, PolicySource, read_source, sha256_hex, verify_digest};

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    Unchanged,
    /// A new module now serves (digests, hex).
    Swapped {
        from: String,
        to: String,
    },
}

/// The serving policy plus what is needed to reload it. Share it in an `Arc`.
pub struct PolicyHost {
    engine: PolicyEngine,
    current: ArcSwap<Policy>,
    source: PolicySource,
    manifest: Option<String>,
    settings: String,
    fetch: Option<Arc<dyn Fetch>>,
    /// The digest of the last module refused, so one bad module is reported once.
    rejected: Mutex<Option<String>>,
}

impl std::fmt::Debug for PolicyHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHost")
            .field("source", &self.source)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl PolicyHost {
    /// Loads the configured policy (refusing to start with a bad one).
    pub async fn open(
        engine: PolicyEngine,
        source: PolicySource,
        manifest: Option<String>,
        settings: String,
        fetch: Option<Arc<dyn Fetch>>,
    ) -> Result<Self, LoadError> {
        let bytes = read_source(&source, fetch.as_deref(), engine.limits().module_bytes).await?;
        let origin = origin(&source);
        let policy = load_blocking(&engine, bytes, origin, settings.clone()).await?;
        tracing::info!(policy = %policy.reference().name, version = %policy.reference().version, digest = %policy.reference().digest, "policy loaded");
        Ok(Self {
            engine,
            current: ArcSwap::from_pointee(policy),
            source,
            manifest,
            settings,
            fetch,
            rejected: Mutex::new(None),
        })
    }

    /// The policy serving now; evaluations hold it to the end even across a swap.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    /// Re-checks the source; swaps in a changed module that loads and validates.
    pub async fn refresh(&self) -> Result<Refresh, LoadError> {
        let current = self.current.load().reference().digest.clone();
        let (bytes, digest, origin) = if let Some(manifest_url) = &self.manifest {
            let fetch = self.fetch.as_deref().ok_or_else(|| LoadError::Manifest {
                url: manifest_url.clone(),
                message: "no HTTP client configured".into(),
            })?;
            let text = fetch
                .fetch(manifest_url, 64 << 10)
                .await
                .map_err(|message| LoadError::Manifest { url: manifest_url.clone(), message })?;
            let m = Manifest::parse(&text, manifest_url)?;
            if m.sha256 == current || self.already_rejected(&m.sha256) {
                return Ok(Refresh::Unchanged);
            }
            let bytes = fetch
                .fetch(&m.url, self.engine.limits().module_bytes)
                .await
                .map_err(|message| LoadError::Fetch { url: m.url.clone(), message })?;
            let result = verify_digest(&bytes, &m.sha256);
            self.note(&m.sha256, result)?;
            (bytes, m.sha256, m.url)
        } else {
            match &self.source {
                PolicySource::File { .. } => {
                    let bytes = read_source(&self.source, None, self.engine.limits().module_bytes).await;
                    let bytes = match bytes {
                        Ok(b) => b,
                        Err(LoadError::DigestMismatch { actual, expected }) => {
                            let e = LoadError::DigestMismatch { actual: actual.clone(), expected };
                            if actual == current || self.already_rejected(&actual) {
                                return Ok(Refresh::Unchanged);
                            }
                            return self.note::<()>(&actual, Err(e)).map(|()| Refresh::Unchanged);
                        }
                        Err(e) => return Err(e),
                    };
                    let digest = sha256_hex(&bytes);
                    if digest == current || self.already_rejected(&digest) {
                        return Ok(Refresh::Unchanged);
                    }
                    (bytes, digest, origin(&self.source))
                }
                // Embedded and pinned URLs cannot change without a manifest.
                PolicySource::Embedded | PolicySource::Url { .. } => return Ok(Refresh::Unchanged),
            }
        };
        let loaded = load_blocking(&self.engine, bytes, origin, self.settings.clone()).await;
        let policy = self.note(&digest, loaded)?;
        let to = policy.reference().digest.clone();
        self.current.store(Arc::new(policy));
        tracing::info!(from = %current, to = %to, "policy reloaded");
        Ok(Refresh::Swapped { from: current, to })
    }

    fn already_rejected(&self, digest: &str) -> bool {
        self.rejected.lock().map(|r| r.as_deref() == Some(digest)).unwrap_or(false)
    }

    /// Remembers a refused digest (so it is reported once) and passes the result on.
    fn note<T>(&self, digest: &str, result: Result<T, LoadError>) -> Result<T, LoadError> {
        if result.is_err()
            && let Ok(mut r) = self.rejected.lock()
        {
            *r = Some(digest.to_owned());
        }
        result
    }

    /// Re-checks every `every` until the returned task is aborted. `on_reject` is told
    /// about each refused module (log and alert there); the old module keeps serving.
    pub fn spawn_reload(
        self: Arc<Self>,
        every: Duration,
        on_reject: impl Fn(&LoadError) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = self.refresh().await {
                    tracing::error!(error = %e, alert = true, "new policy refused; the previous policy keeps serving");
                    on_reject(&e);
                }
            }
        })
    }
}

fn origin(source: &PolicySource) -> String {
    match source {
        PolicySource::Embedded => "embedded default policy".to_owned(),
        PolicySource::File { path, .. } => path.display().to_string(),
        PolicySource::Url { url, .. } => url.clone(),
    }
}

/// Compiles and checks a module on a blocking thread (compiling takes milliseconds to seconds).
pub async fn load_blocking(
    engine: &PolicyEngine,
    bytes: Vec<u8>,
    origin: String,
    settings: String,
) -> Result<Policy, LoadError> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.load(&bytes, &origin, &settings))
        .await
        .map_err(|e| LoadError::Engine(format!("policy load task failed: {e}")))?
}

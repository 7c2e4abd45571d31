//! cmkguard: keeps Azure Container Registry customer-managed-key (CMK) encryption
//! healthy, event by event, as an Azure Functions custom handler.
//!
//! Where things live:
//! - [`config`]: every setting, validated once at start.
//! - [`api`]: HTTP routes (Functions custom-handler protocol, direct webhook, readiness);
//!   translates HTTP ⇄ domain and nothing more.
//! - [`events`]: wire formats (Functions envelope, Event Grid, CloudEvents) decoded into
//!   the typed domain [`cmkguard_model::Event`].
//! - [`pipeline`]: the enrich → decide → act stages behind small traits.
//! - [`cli`]: the command line.
//! - [`alloc`]: the global allocator (jemalloc, configured for a small peak RSS).

use std::sync::Arc;

pub mod act;
pub mod alloc;
pub mod api;
pub mod cli;
pub mod config;
pub mod decide;
pub mod enrich;
pub mod events;
pub mod logging;
pub mod pipeline;
pub mod sweep;

/// Threads of the async runtime's blocking pool at most (it runs slow policy evaluations
/// and ledger reads). Bounded so an overload queues evaluations instead of starting
/// hundreds of threads that share the cores, miss the policy deadline and fail safe.
pub fn blocking_threads() -> usize {
    2 * std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2).max(2)
}

/// Shared by every request: configuration, the pipeline and counters.
#[derive(Debug)]
pub struct AppState {
    pub config: config::Config,
    pub pipeline: pipeline::Pipeline,
    pub stats: api::Stats,
    /// The estate sweep (the `Sweep` function); `None` without Azure clients.
    pub sweeper: Option<sweep::Sweeper>,
}

impl AppState {
    /// Builds the state a server needs from validated configuration.
    ///
    /// The independent parts of the start run at once (BENCHMARKS.md "Cold start"): the
    /// ledger opens (on its own threads) and the platform's CA roots load (once, for every
    /// HTTP client) while the policy engine starts and the policy loads. Every part is
    /// awaited before anything starts serving or running in the background (the policy's
    /// hot reload starts last), and the first error in start order (policy, ledger, Azure
    /// clients) fails the start with its own message.
    pub async fn from_config(config: config::Config) -> Result<Self, String> {
        let tls = tokio::task::spawn_blocking(cmkguard_azure::SharedTls::load);
        let ledger = {
            let config = config.clone();
            tokio::spawn(async move {
                let credential = cli::audit::ledger_credential(&config).map_err(|e| e.message)?;
                cmkguard_ledger::open(&config.ledger, credential)
                    .await
                    .map_err(|e| format!("CMKGUARD_LEDGER: cannot open the ledger: {e}"))
            })
        };
        let joined = |r: Result<Result<cmkguard_azure::SharedTls, cmkguard_azure::AzureError>, _>| match r {
            Ok(tls) => tls.map_err(|e| e.to_string()),
            Err(e) => Err(format!("TLS setup: {e}")),
        };
        let (policy, tls) = if decide::needs_fetcher(&config.policy) {
            let tls = joined(tls.await);
            let fetch = tls.as_ref().map_err(Clone::clone).and_then(decide::HttpsFetch::with_tls);
            let policy = match fetch {
                Ok(fetch) => decide::PolicyDecide::open(&config.policy, Some(fetch)).await,
                Err(e) => Err(e),
            };
            (policy, tls)
        } else {
            let policy = decide::PolicyDecide::open(&config.policy, None).await;
            (policy, joined(tls.await))
        };
        // Always awaited, so a failed start leaves no ledger half-open behind it.
        let ledger = ledger.await.map_err(|e| format!("CMKGUARD_LEDGER: cannot open the ledger: {e}"))?;
        let (policy, ledger, tls) = (policy?, ledger?, tls?);

        let mut pipeline = pipeline::Pipeline::logging_only();
        // A real deployment always has Azure; building the clients contacts nothing yet.
        let enrich = enrich::AzureEnrich::from_config_with(&config, &tls)?;
        // The act stage shares the enrich stage's Azure clients (one token cache, one pool).
        let azure = enrich.enricher().clients().clone();
        pipeline.enrich = std::sync::Arc::new(enrich);
        let act = act::ActStage::with_tls(&config, ledger, Some(azure.clone()), Some(&tls))?;
        pipeline.act = std::sync::Arc::new(act.clone());
        policy.start_reload(&config.policy);
        // Refused hot reloads are alerted and recorded by the act stage's channels and ledger.
        if let Some(refusals) = policy.take_refusals() {
            // Detached: it ends when the reload task (and so the process) does.
            drop(tokio::spawn(decide::alert_refusals(act.clone(), refusals)));
        }
        pipeline.decide = std::sync::Arc::new(policy);
        let sweeper = sweep::Sweeper {
            clients: azure,
            act,
            subscriptions: config.azure.subscriptions.clone(),
            settings: config.policy.settings.clone(),
        };
        Ok(Self { config, pipeline, stats: api::Stats::default(), sweeper: Some(sweeper) })
    }

    /// State with a given pipeline (tests, the demo).
    pub fn with_pipeline(config: config::Config, pipeline: pipeline::Pipeline) -> Arc<Self> {
        Arc::new(Self { config, pipeline, stats: api::Stats::default(), sweeper: None })
    }
}

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

use std::sync::Arc;

pub mod act;
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
    pub async fn from_config(config: config::Config) -> Result<Self, String> {
        let mut pipeline = pipeline::Pipeline::logging_only();
        let policy = decide::PolicyDecide::from_config(&config.policy).await?;
        // Refused hot reloads are alerted and recorded by the act stage's channels and ledger.
        let reload_refusals = policy.take_refusals();
        pipeline.decide = std::sync::Arc::new(policy);
        // A real deployment always has Azure; building the clients contacts nothing yet.
        let enrich = enrich::AzureEnrich::from_config(&config)?;
        // The act stage shares the enrich stage's Azure clients (one token cache, one pool).
        let azure = enrich.enricher().clients().clone();
        pipeline.enrich = std::sync::Arc::new(enrich);
        let act = act::ActStage::from_config(&config, Some(azure.clone())).await?;
        pipeline.act = std::sync::Arc::new(act.clone());
        if let Some(refusals) = reload_refusals {
            // Detached: it ends when the reload task (and so the process) does.
            drop(tokio::spawn(decide::alert_refusals(act.clone(), refusals)));
        }
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

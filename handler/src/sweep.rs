//! The estate sweep: every registry (Resource Graph) through the same pipeline as an
//! event, with a synthetic event id per run and registry (`EventKind::Sweep`), after
//! finishing the rotations parked as pending. It catches registries created before
//! deployment and events lost to dead-letter. Used by the `Sweep` timer function and
//! `cmkguard sweep`.
//!
//! ## Where the facts come from
//!
//! One Resource Graph listing gives every registry **with its properties** (encryption,
//! identity, tags, provisioning state): the rows are turned into [`RegistryFacts`] by the
//! same mapping as an ARM GET (`cmkguard_azure::facts::registry_facts`), so the sweep
//! makes no per-registry ARM call. Each distinct key is then fetched once (at most
//! [`KEY_CONCURRENCY`] at a time) and every registry is decided and acted on with
//! [`CONCURRENCY`] in flight, each through the act stage (claim, outcome, audit record;
//! a registry whose outcome has no side effect is one group-committed ledger write).
//!
//! Resource Graph may trail ARM by a few seconds. That only matters when the sweep acts
//! (enforce): a rotation re-reads the registry over ARM right before it PATCHes, and does
//! nothing when the registry is already on the wanted key.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use cmkguard_azure::{AzureClients, Budget, Enricher};
use cmkguard_model::{Event, EventKind, RegistryFacts, ResourceId, Severity};
use serde::Serialize;

use crate::act::ActStage;
use crate::act::rotate::{PendingStats, finish_pending};
use crate::pipeline::{ActionStatus, Decided, EventReport, Pipeline, StageError};

/// Registries evaluated at once. Wide enough that the ledger's group commit gathers many
/// records per fsync; every in-flight registry holds only its facts and decision.
pub const CONCURRENCY: usize = 128;
/// Keys fetched at once (three Key Vault / ARM reads each) before the registries run.
pub const KEY_CONCURRENCY: usize = 8;

/// What a sweep needs beyond the pipeline.
#[derive(Debug, Clone)]
pub struct Sweeper {
    pub clients: AzureClients,
    pub act: ActStage,
    pub subscriptions: Vec<String>,
    /// The policy's settings JSON, passed into every input (as the enrich stage does).
    pub settings: String,
}

/// The outcome of one sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepSummary {
    pub run_id: String,
    pub registries: usize,
    /// Registries with no finding.
    pub compliant: usize,
    /// Findings by severity.
    pub findings: BTreeMap<Severity, usize>,
    /// Registries with a rotation done or started (enforce) or that would be (monitor).
    pub remediated: usize,
    /// Registries whose evaluation failed or had a failed action.
    pub failed: usize,
    /// Rotations parked by earlier events, polled first.
    pub pending: PendingStats,
}

/// The synthetic event of one registry in one run.
pub fn sweep_event(run_id: &str, registry: ResourceId) -> Event {
    Event {
        id: format!("sweep:{run_id}:{}", registry.as_str().to_ascii_lowercase()),
        time: Utc::now(),
        subject: registry.as_str().to_owned(),
        event_type: "cmkguard.Sweep".to_owned(),
        kind: EventKind::Sweep { registry },
    }
}

impl Sweeper {
    /// Sweeps the estate; `progress(done, total)` is called as registries finish.
    pub async fn run(&self, pipeline: &Pipeline, progress: impl Fn(usize, usize)) -> Result<SweepSummary, StageError> {
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let pending = finish_pending(&self.act).await;
        let budget = Budget::new(std::time::Duration::from_secs(300));
        let registries = self
            .clients
            .graph
            .all_registries(&self.subscriptions, &budget)
            .await
            .map_err(|e| crate::enrich::stage_error(&e))?;
        let total = registries.len();
        let mut summary = SweepSummary { run_id: run_id.clone(), registries: total, pending, ..Default::default() };
        // One enricher per run: its key cache is this run's "each key once".
        let enricher = Arc::new(Enricher::new(
            self.clients.clone(),
            self.subscriptions.clone(),
            self.act.budget,
            self.settings.clone(),
        ));
        enricher.prefetch_keys(&registries, KEY_CONCURRENCY).await;
        let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for r in registries {
            let Ok(id) = ResourceId::parse(&r.id) else {
                tracing::warn!(registry = %r.id, "sweep: Resource Graph row with an id that does not parse");
                summary.failed += 1;
                continue;
            };
            let event = sweep_event(&run_id, id);
            let pipeline = pipeline.clone();
            let enricher = enricher.clone();
            let sem = sem.clone();
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                evaluate(&pipeline, &enricher, &event, r).await
            });
        }
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            done += 1;
            progress(done, total);
            let report = match joined {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "sweep: registry not evaluated");
                    summary.failed += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sweep task failed");
                    summary.failed += 1;
                    continue;
                }
            };
            match &report.decided {
                Decided::Decision { decision, .. } if decision.findings.is_empty() => summary.compliant += 1,
                Decided::Decision { decision, .. } => {
                    for f in &decision.findings {
                        *summary.findings.entry(f.severity).or_default() += 1;
                    }
                }
                Decided::PolicyError { .. } => summary.failed += 1,
            }
            let rotated = report.actions.iter().any(|a| {
                a.action.starts_with("rotate-")
                    && matches!(a.status, ActionStatus::Done | ActionStatus::Pending | ActionStatus::WouldDo)
            });
            if rotated {
                summary.remediated += 1;
            }
            if report.actions.iter().any(|a| a.status == ActionStatus::Failed) {
                summary.failed += 1;
            }
        }
        Ok(summary)
    }
}

/// One registry through decide → act, with facts from its Resource Graph row (the
/// pipeline's own enrich stage would GET the registry again over ARM).
async fn evaluate(
    pipeline: &Pipeline,
    enricher: &Enricher,
    event: &Event,
    registry: RegistryFacts,
) -> Result<EventReport, StageError> {
    let now = (pipeline.clock)();
    let input = enricher.registry_input(event, registry, now).await.map_err(|e| crate::enrich::stage_error(&e))?;
    pipeline.decide_and_act(event, input).await
}

impl SweepSummary {
    /// The summary as a small table.
    pub fn table(&self) -> String {
        let mut s = format!("{:<22} {:>8}\n", "registries", self.registries);
        s += &format!("{:<22} {:>8}\n", "compliant", self.compliant);
        for sev in Severity::ALL.iter().rev() {
            s += &format!("{:<22} {:>8}\n", format!("findings: {sev}"), self.findings.get(sev).copied().unwrap_or(0));
        }
        s += &format!("{:<22} {:>8}\n", "remediated", self.remediated);
        s += &format!("{:<22} {:>8}\n", "failed", self.failed);
        s += &format!(
            "{:<22} {:>8}\n",
            "pending rotations",
            format!("{}/{}", self.pending.finished, self.pending.finished + self.pending.still_running)
        );
        s
    }
}

//! The event pipeline as explicit stages: decode → **enrich → decide → act** → answer.
//!
//! `api/` decodes and answers; this module runs the three middle stages behind small
//! traits so each can be swapped without touching HTTP code:
//! - [`Enrich`]: event → facts (the [`PolicyInput`]), from Azure;
//! - [`Decide`]: facts → decision, by the WebAssembly policy;
//! - [`Act`]: decision → audit record, remediation, notifications.
//!
//! Errors carry a class ([`ErrorClass`]): *retryable* failures (throttling, Azure 5xx)
//! become a 5xx so the event is redelivered; *terminal* ones are recorded and answered 2xx.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cmkguard_model::facts::EventInfo;
pub use cmkguard_model::outcome::{ActionOutcome, ActionStatus, Decided, EventReport, PolicyRef};
use cmkguard_model::{Decision, Event, PolicyInput};
use serde::Serialize;

/// Whether a redelivery of the same event could succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Throttling, timeouts, Azure 5xx: worth a redelivery.
    Retryable,
    /// Bad input, a refused action, a policy error: a redelivery would fail the same way.
    Terminal,
}

/// A stage failure with its class and a message fit for logs (no secrets).
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[error("{stage}: {message}")]
pub struct StageError {
    pub stage: &'static str,
    pub class: ErrorClass,
    pub message: String,
}

impl StageError {
    pub fn retryable(stage: &'static str, message: impl Into<String>) -> Self {
        Self { stage, class: ErrorClass::Retryable, message: message.into() }
    }
    pub fn terminal(stage: &'static str, message: impl Into<String>) -> Self {
        Self { stage, class: ErrorClass::Terminal, message: message.into() }
    }
}

/// event → facts.
#[async_trait]
pub trait Enrich: Send + Sync {
    async fn enrich(&self, event: &Event, now: DateTime<Utc>) -> Result<PolicyInput, StageError>;
}

/// facts → decision.
#[async_trait]
pub trait Decide: Send + Sync {
    async fn decide(&self, input: &PolicyInput) -> Decided;
}

/// decision → effects (audit, remediation, notifications).
#[async_trait]
pub trait Act: Send + Sync {
    async fn act(
        &self,
        event: &Event,
        input: &PolicyInput,
        decided: &Decided,
    ) -> Result<Vec<ActionOutcome>, StageError>;
}

/// The three middle stages, wired.
#[derive(Clone)]
pub struct Pipeline {
    pub enrich: Arc<dyn Enrich>,
    pub decide: Arc<dyn Decide>,
    pub act: Arc<dyn Act>,
    /// The clock; tests and `--now` pin it.
    pub clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipeline")
    }
}

impl Pipeline {
    /// Runs one decoded event through enrich → decide → act.
    pub async fn handle(&self, event: &Event) -> Result<EventReport, StageError> {
        let now = (self.clock)();
        let input = self.enrich.enrich(event, now).await?;
        self.decide_and_act(event, input).await
    }

    /// decide → act for facts already gathered (the sweep builds them from its scan).
    pub async fn decide_and_act(&self, event: &Event, input: PolicyInput) -> Result<EventReport, StageError> {
        let decided = self.decide.decide(&input).await;
        if let Decided::PolicyError { error, .. } = &decided {
            tracing::warn!(event_id = %event.id, %error, "policy failed; failing safe (no remediation)");
        }
        let actions = self.act.act(event, &input, &decided).await?;
        Ok(EventReport {
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            kind: event.kind.name().to_owned(),
            subject: event.subject.clone(),
            decided,
            actions,
        })
    }

    /// A pipeline with no Azure access and no policy: events are decoded, logged and
    /// answered; nothing is decided or changed. Used until the real stages are configured.
    pub fn logging_only() -> Self {
        Self {
            enrich: Arc::new(EventOnly),
            decide: Arc::new(NoPolicy),
            act: Arc::new(LogOnly),
            clock: Arc::new(Utc::now),
        }
    }
}

/// Enrich with what the event itself says, and nothing from Azure.
#[derive(Debug, Default)]
pub struct EventOnly;

#[async_trait]
impl Enrich for EventOnly {
    async fn enrich(&self, event: &Event, now: DateTime<Utc>) -> Result<PolicyInput, StageError> {
        Ok(PolicyInput {
            event: EventInfo::from(event),
            now,
            key: None,
            registries: Default::default(),
            settings: "{}".to_owned(),
        })
    }
}

/// Decides nothing: an empty decision, attributed to no policy.
#[derive(Debug, Default)]
pub struct NoPolicy;

#[async_trait]
impl Decide for NoPolicy {
    async fn decide(&self, _input: &PolicyInput) -> Decided {
        Decided::Decision {
            policy: PolicyRef { name: "none".into(), version: "0".into(), digest: String::new() },
            decision: Decision::default(),
        }
    }
}

/// Acts by logging the decision, changing nothing.
#[derive(Debug, Default)]
pub struct LogOnly;

#[async_trait]
impl Act for LogOnly {
    async fn act(
        &self,
        event: &Event,
        _input: &PolicyInput,
        decided: &Decided,
    ) -> Result<Vec<ActionOutcome>, StageError> {
        match decided {
            Decided::Decision { decision, .. } => tracing::info!(
                event_id = %event.id,
                kind = event.kind.name(),
                findings = decision.findings.len(),
                actions = decision.actions.len(),
                "decided"
            ),
            Decided::PolicyError { error, .. } => tracing::warn!(event_id = %event.id, %error, "policy error"),
        }
        Ok(Vec::new())
    }
}

//! What became of an event: which policy decided what, and what happened to each action.
//! These are the pieces of an audit record and of the answer to the caller.

use serde::{Deserialize, Serialize};

use crate::Decision;

/// Which policy decided (every audit record carries it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub name: String,
    pub version: String,
    /// sha256 of the module, hex.
    pub digest: String,
}

/// The decide stage's outcome. A policy failure is an outcome, not an error: it is
/// recorded and alerted, and never leads to remediation (fail safe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Decided {
    Decision { policy: PolicyRef, decision: Decision },
    PolicyError { policy: Option<PolicyRef>, error: String },
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// `audit`, `rotate-registry-key`, `rotate-vault-key`, `notify`.
    pub action: String,
    /// The resource or channel acted on.
    pub target: String,
    pub status: ActionStatus,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionStatus {
    Done,
    /// Monitor mode: recorded what would have been done.
    WouldDo,
    /// Nothing to do (desired state already holds, deduplicated, or redelivery).
    Skipped,
    /// Started, to be finished later (e.g. a long ARM operation).
    Pending,
    Failed,
}

/// The result of one event through the pipeline, as reported to the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventReport {
    pub event_id: String,
    pub event_type: String,
    pub kind: String,
    pub subject: String,
    pub decided: Decided,
    pub actions: Vec<ActionOutcome>,
}

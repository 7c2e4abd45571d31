//! The audit record of one event: the event, the policy (name, version, digest) and its
//! decision or failure, every action's outcome and the mode. Written by the act stage
//! with the event's claim, so it is durable before the event is answered.

use chrono::Utc;
use cmkguard_ledger::AuditRecord;
use cmkguard_model::Event;

use crate::pipeline::{ActionOutcome, Decided};

/// The record for `event` as it will be stored. Takes the outcomes (the caller gets them
/// back from the record once it is written: one list per event, not two).
pub fn record(event: &Event, decided: &Decided, actions: Vec<ActionOutcome>, mode: &str) -> AuditRecord {
    AuditRecord {
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        subject: event.subject.clone(),
        event_time: event.time,
        recorded_at: Utc::now(),
        mode: mode.to_owned(),
        decided: decided.clone(),
        actions,
    }
}

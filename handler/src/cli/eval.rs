//! `cmkguard eval`: runs a policy on an event file (Event Grid event, batch or
//! CloudEvent) and prints the decision as JSON. `--facts` supplies the policy input
//! (the documented `PolicyInput` JSON); without it the facts are only what the event says.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use cmkguard_model::{PolicyInput, Severity};
use cmkguard_policy::Policy;
use serde::Serialize;

use super::policy::{load_policy, read_settings};
use super::{CliError, exit};
use crate::events::Decoded;
use crate::pipeline::{Decided, Enrich, EventOnly};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy component file, or `builtin` for the embedded default policy.
    #[arg(long, default_value = "builtin")]
    pub policy: String,
    /// Event file: an Event Grid event, an array of them, or a CloudEvent (batch).
    #[arg(long)]
    pub event: PathBuf,
    /// Policy input (facts) as JSON, the format of `policy-wasm/testcases`; its event and
    /// time are taken from the event file.
    #[arg(long)]
    pub facts: Option<PathBuf>,
    /// Policy settings file (a JSON object); overrides the settings in --facts.
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// The evaluation's "now" (RFC 3339) [default: the current time].
    #[arg(long)]
    pub now: Option<DateTime<Utc>>,
    /// Exit 1 when a finding is at or above this severity.
    #[arg(long)]
    pub fail_on: Option<Severity>,
}

#[derive(Serialize)]
struct Report {
    event_id: String,
    event_type: String,
    #[serde(flatten)]
    decided: Decided,
}

pub async fn run(args: Args) -> Result<u8, CliError> {
    let bytes =
        std::fs::read(&args.event).map_err(|e| CliError::bad_input(format!("{}: {e}", args.event.display())))?;
    let decoded = crate::events::decode_events_json(&bytes)
        .map_err(|e| CliError::bad_input(format!("{}: {e}", args.event.display())))?;
    let facts = match &args.facts {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| CliError::bad_input(format!("{}: {e}", path.display())))?;
            Some(PolicyInput::from_json(&text).map_err(|e| CliError::bad_input(format!("{}: {e}", path.display())))?)
        }
        None => None,
    };
    let settings = args.settings.as_deref().map(read_settings).transpose()?;
    let policy: Policy = load_policy(&args.policy, settings.as_deref().unwrap_or("{}"))?;
    let now = args.now.unwrap_or_else(Utc::now);

    let mut reports = Vec::new();
    let mut worst: Option<Severity> = None;
    for d in decoded {
        let event = match d {
            Decoded::Event(e) => e,
            Decoded::Ignored(i) => {
                eprintln!("note: event {} ({}) ignored: {}", i.id, i.event_type, i.reason);
                continue;
            }
            Decoded::Validation { id, .. } => {
                eprintln!("note: event {id} is an Event Grid subscription validation; nothing to evaluate");
                continue;
            }
        };
        let base = EventOnly.enrich(&event, now).await.map_err(|e| CliError::bad_input(e.to_string()))?;
        let input = match &facts {
            Some(f) => PolicyInput { event: base.event, now, ..f.clone() },
            None => base,
        };
        let decided = match policy.evaluate_with(&input, settings.as_deref().or(Some(input.settings.as_str()))) {
            Ok(decision) => {
                worst = worst.max(decision.max_severity());
                Decided::Decision { policy: policy.reference().clone(), decision }
            }
            Err(e) => Decided::PolicyError { policy: Some(policy.reference().clone()), error: e.to_string() },
        };
        reports.push(Report { event_id: event.id.clone(), event_type: event.event_type.clone(), decided });
    }
    let out = if reports.len() == 1 {
        serde_json::to_string_pretty(&reports[0])
    } else {
        serde_json::to_string_pretty(&reports)
    };
    println!("{}", out.map_err(|e| CliError::bad_input(e.to_string()))?);

    if reports.iter().any(|r| matches!(r.decided, Decided::PolicyError { .. })) {
        eprintln!("error: the policy failed on at least one event (see \"error\" above)");
        return Ok(exit::FINDINGS);
    }
    match (args.fail_on, worst) {
        (Some(threshold), Some(w)) if w >= threshold => {
            eprintln!("findings at or above {threshold} (worst: {w})");
            Ok(exit::FINDINGS)
        }
        _ => Ok(exit::OK),
    }
}

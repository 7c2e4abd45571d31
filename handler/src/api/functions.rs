//! `POST /{FunctionName}`: the Azure Functions custom-handler protocol.
//!
//! Any non-2xx fails the invocation and makes Event Grid redeliver the whole delivery for
//! a day, so a well-formed invocation carrying a malformed or unknown *event* is answered
//! 200 with the rejection in `ReturnValue` and `Logs`. Only an envelope no host would send
//! gets a 400; only a failure a redelivery can fix gets a 500.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;
use tracing::Instrument;

use super::{ApiError, Stats, read_body, run_batch};
use crate::AppState;
use crate::events::functions::parse_invocation;

/// The functions this handler serves (folder names under `functions/`).
pub const FUNCTIONS: &[&str] = &["KeyVaultEvents", "RegistryEvents", "Sweep"];

const INVOCATION_HEADER: &str = "x-azure-functions-invocationid";

pub async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(function) = FUNCTIONS.iter().copied().find(|f| f.eq_ignore_ascii_case(&function)) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_function",
            format!("no function named {function:?} (this handler serves {})", FUNCTIONS.join(", ")),
        )
        .into_response();
    };
    let invocation_id = headers
        .get(INVOCATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!("invocation", invocation_id = %invocation_id, function);
    async move {
        Stats::add(&state.stats.invocations, 1);
        match handle(&state, function, &headers, body).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(code = e.code, message = %e.message, "invocation refused");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn handle(
    state: &AppState,
    function: &'static str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(headers, body, state.config.max_body_bytes).await?;
    let invocation = parse_invocation(&bytes).map_err(ApiError::bad_request)?;
    if function == "Sweep" {
        // The timer's schedule status is in Data.timer; the sweep evaluates every registry
        // and finishes parked rotations. Only a failure to list the estate is retried.
        let Some(sweeper) = &state.sweeper else {
            tracing::info!("sweep requested without Azure clients");
            return Ok(answer(
                vec!["sweep: not run (no Azure clients configured)".into()],
                &json!({"sweep": "not-run"}),
            ));
        };
        return match sweeper.run(&state.pipeline, |_, _| {}).await {
            Ok(summary) => {
                tracing::info!(
                    registries = summary.registries,
                    compliant = summary.compliant,
                    remediated = summary.remediated,
                    failed = summary.failed,
                    "sweep finished"
                );
                let log = format!(
                    "cmkguard: sweep {}: {} registries, {} compliant, {} remediated, {} failed",
                    summary.run_id, summary.registries, summary.compliant, summary.remediated, summary.failed
                );
                Ok(answer(vec![log], &summary))
            }
            Err(e) if e.class == crate::pipeline::ErrorClass::Retryable => {
                Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "retryable", e.to_string()))
            }
            Err(e) => Ok(answer(
                vec![format!("cmkguard: sweep failed: {e}")],
                &json!({"sweep": "failed", "error": e.message}),
            )),
        };
    }
    let decoded = match invocation.decode_trigger() {
        Ok(d) => d,
        Err(e) => {
            // Malformed event in a well-formed invocation: acknowledge, never redeliver.
            Stats::add(&state.stats.rejected, 1);
            tracing::warn!(code = e.code, error = %e.message, "event rejected");
            let log = format!("cmkguard: event rejected ({}): {}", e.code, e.message);
            return Ok(answer(
                vec![log],
                &json!({"status": "rejected", "error": {"code": e.code, "message": e.message}}),
            ));
        }
    };
    let outcome = run_batch(state, decoded).await;
    if let Some(e) = &outcome.retryable {
        // A redelivery can fix this: fail the invocation so Event Grid sends it again.
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "retryable", e.to_string()));
    }
    let mut logs: Vec<String> = Vec::new();
    for r in &outcome.reports {
        logs.push(format!("cmkguard: {} {} → {} action outcome(s)", r.kind, r.event_id, r.actions));
    }
    for i in &outcome.ignored {
        logs.push(format!("cmkguard: ignored {} {} ({})", i.event_type, i.id, i.reason));
    }
    for f in &outcome.failed {
        logs.push(format!("cmkguard: failed {}: {}", f.event_id, f.error));
    }
    Ok(answer(logs, &outcome))
}

/// The custom-handler response: `{"Outputs":{},"Logs":[..],"ReturnValue":..}`, serialized
/// straight to the body (no intermediate `Value` of the outcome).
fn answer<T: serde::Serialize>(logs: Vec<String>, return_value: &T) -> Response {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer<'a, T> {
        outputs: Empty,
        logs: Vec<String>,
        return_value: &'a T,
    }
    #[derive(serde::Serialize)]
    struct Empty {}
    super::json_response(StatusCode::OK, &Answer { outputs: Empty {}, logs, return_value })
}

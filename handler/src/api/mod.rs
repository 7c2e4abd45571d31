//! HTTP routes: translate HTTP ⇄ domain, nothing more.
//!
//! - `GET /`: readiness (the Functions host polls it after starting the handler).
//! - `GET /api/health`: counters, as JSON.
//! - `POST /{FunctionName}`: the custom-handler protocol ([`functions`]).
//! - `POST|OPTIONS /api/events`: direct webhook mode without a Functions host ([`webhook`]).
//!
//! Errors become `{"error":{"code":..,"message":..}}` in one place ([`error::ApiError`]);
//! a panic becomes a bare 500; SIGTERM drains in-flight requests before exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::Serialize;

use crate::AppState;

pub mod error;
pub mod functions;
pub mod webhook;

pub use error::ApiError;

/// How long a client may take to send its body (slow-loris guard).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Counters since start. Cheap, lock-free, served at `/api/health`.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub invocations: AtomicU64,
    pub events: AtomicU64,
    pub ignored: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The router with every route and layer.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(ready))
        .route("/api/health", get(health))
        .route("/api/events", post(webhook::post_events).options(webhook::options_events))
        .route("/{function}", post(functions::invoke))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
            tracing::error!("a request handler panicked; answered 500");
            ApiError::internal().into_response()
        }))
        .with_state(state)
}

/// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

async fn ready() -> &'static str {
    "cmkguard ready\n"
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "mode": state.config.mode.as_str(),
        "stats": &state.stats,
    }))
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route: POST /{FunctionName} or /api/events")
}

/// Reads a request body with the configured size limit and a read timeout.
pub(crate) async fn read_body(headers: &http::HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    let declared =
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the body was not received in time")),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let is_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some());
            if is_limit {
                Err(too_large())
            } else {
                Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_body", format!("could not read the body: {e}")))
            }
        }
    }
}

/// A JSON response serialized straight into its body (one buffer, no `Value` tree).
pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))], body)
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not serialize a response");
            ApiError::internal().into_response()
        }
    }
}

/// What became of a batch of decoded events.
#[derive(Debug, Default, Serialize)]
pub struct BatchOutcome {
    pub reports: Vec<cmkguard_model::outcome::EventReport>,
    pub ignored: Vec<crate::events::Ignored>,
    /// Terminal failures: recorded and acknowledged (a redelivery would fail the same way).
    pub failed: Vec<FailedEvent>,
    /// A failure a redelivery can fix (throttling, Azure 5xx): the caller answers 5xx.
    #[serde(skip)]
    pub retryable: Option<crate::pipeline::StageError>,
}

#[derive(Debug, Serialize)]
pub struct FailedEvent {
    pub event_id: String,
    pub error: crate::pipeline::StageError,
}

/// Most events of one batch in flight at once. Every event costs durable ledger writes
/// (group commits): one after another, a batch of 100 would wait for 200 commits in a row.
const BATCH_CONCURRENCY: usize = 32;

/// Runs decoded events through the pipeline. Events are handled concurrently, except
/// that an event waits for every earlier one with the same id or subject (a duplicate
/// delivery, or a second event about the same key or registry), so those still run in
/// batch order. Reports, ignored and failed events are listed in batch order. After a
/// retryable failure no further group starts (already handled events are in the ledger,
/// so the redelivery repeats nothing). Validation handshakes are not events and are
/// skipped here (the direct-mode route answers them before).
pub(crate) async fn run_batch(state: &AppState, decoded: Vec<crate::events::Decoded>) -> BatchOutcome {
    use crate::events::Decoded;
    use cmkguard_model::Event;
    let mut out = BatchOutcome::default();
    // rounds[r]: events (with their batch position) that may run together.
    let mut rounds: Vec<Vec<(usize, Event)>> = Vec::new();
    let mut last_round: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (pos, d) in decoded.into_iter().enumerate() {
        match d {
            Decoded::Event(event) => {
                let id_key = format!("i:{}", event.id);
                let subject_key = format!("s:{}", event.subject.to_ascii_lowercase());
                let round = [&id_key, &subject_key]
                    .iter()
                    .filter_map(|k| last_round.get(k.as_str()).map(|r| r + 1))
                    .max()
                    .unwrap_or(0);
                last_round.insert(id_key, round);
                last_round.insert(subject_key, round);
                if rounds.len() <= round {
                    rounds.resize_with(round + 1, Vec::new);
                }
                rounds[round].push((pos, *event));
            }
            Decoded::Ignored(ig) => {
                tracing::info!(event_id = %ig.id, event_type = %ig.event_type, reason = ig.reason, "ignored");
                Stats::add(&state.stats.ignored, 1);
                out.ignored.push(ig);
            }
            Decoded::Validation { id, .. } => {
                tracing::info!(event_id = %id, "subscription validation event outside the handshake; ignored");
            }
        }
    }
    let mut done: Vec<(usize, Event, Result<cmkguard_model::outcome::EventReport, crate::pipeline::StageError>)> =
        Vec::new();
    'rounds: for round in rounds {
        let mut events = round.into_iter().peekable();
        while events.peek().is_some() {
            let group: Vec<(usize, Event)> = events.by_ref().take(BATCH_CONCURRENCY).collect();
            Stats::add(&state.stats.events, group.len() as u64);
            let results = futures::future::join_all(group.iter().map(|(_, e)| state.pipeline.handle(e))).await;
            let retry =
                results.iter().any(|r| r.as_ref().is_err_and(|e| e.class == crate::pipeline::ErrorClass::Retryable));
            done.extend(group.into_iter().zip(results).map(|((pos, e), r)| (pos, e, r)));
            if retry {
                break 'rounds;
            }
        }
    }
    done.sort_by_key(|(pos, _, _)| *pos);
    for (_, event, result) in done {
        match result {
            Ok(report) => out.reports.push(report),
            Err(e) if e.class == crate::pipeline::ErrorClass::Retryable => {
                tracing::warn!(event_id = %event.id, error = %e, "retryable failure; asking for redelivery");
                Stats::add(&state.stats.failed, 1);
                out.retryable.get_or_insert(e);
            }
            Err(e) => {
                tracing::warn!(event_id = %event.id, error = %e, "event failed (terminal); acknowledged");
                Stats::add(&state.stats.failed, 1);
                out.failed.push(FailedEvent { event_id: event.id, error: e });
            }
        }
    }
    out
}

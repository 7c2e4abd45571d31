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

/// Reports per chunk of a streamed batch answer (≈ 6 KiB of JSON each).
const REPORTS_PER_CHUNK: usize = 8;

/// The direct-mode answer to a batch,
/// `{"received","handled","ignored","failed","outcome":{"reports","ignored","failed"}}`,
/// streamed: the reports are serialized a few at a time as the body is sent and dropped
/// once sent, instead of one buffer of the whole answer (≈ 600 KiB for 100 events) per
/// request. The bytes are those `serde_json` writes for the whole answer (a unit test
/// holds them equal). Serializing these types cannot fail in practice; if it did, the
/// body would end early and the client would see a broken answer and retry.
pub(crate) fn batch_answer(received: usize, outcome: BatchOutcome) -> Response {
    use futures::StreamExt;
    let BatchOutcome { reports, ignored, failed, retryable: _ } = outcome;
    let head = format!(
        r#"{{"received":{received},"handled":{},"ignored":{},"failed":{},"outcome":{{"reports":["#,
        reports.len(),
        ignored.len(),
        failed.len()
    );
    let tail = || -> serde_json::Result<Bytes> {
        let mut t = br#"],"ignored":"#.to_vec();
        serde_json::to_writer(&mut t, &ignored)?;
        t.extend_from_slice(br#","failed":"#);
        serde_json::to_writer(&mut t, &failed)?;
        t.extend_from_slice(b"}}");
        Ok(Bytes::from(t))
    };
    let mut first = true;
    let reports = futures::stream::iter(reports).chunks(REPORTS_PER_CHUNK).map(move |chunk| {
        let mut buf = Vec::with_capacity(chunk.iter().map(|r| r.json.get().len() + 1).sum());
        for report in &chunk {
            if !std::mem::take(&mut first) {
                buf.push(b',');
            }
            buf.extend_from_slice(report.json.get().as_bytes());
        }
        Ok::<_, serde_json::Error>(Bytes::from(buf))
    });
    let body = futures::stream::once(std::future::ready(Ok(Bytes::from(head))))
        .chain(reports)
        .chain(futures::stream::once(std::future::ready(tail())));
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))],
        Body::from_stream(body),
    )
        .into_response()
}

/// One handled event's report, serialized as soon as the event is done: the answer needs
/// only its JSON (≈ 6 KiB for a key event about 10 registries), while the report itself
/// is several times that in small allocations, and a batch holds all of them until it is
/// answered. Serializes as that JSON, verbatim.
#[derive(Debug)]
pub struct ReportJson {
    pub event_id: String,
    pub kind: String,
    /// How many action outcomes the report lists.
    pub actions: usize,
    pub json: Box<serde_json::value::RawValue>,
}

impl ReportJson {
    pub fn new(report: &cmkguard_model::outcome::EventReport) -> serde_json::Result<Self> {
        Ok(Self {
            event_id: report.event_id.clone(),
            kind: report.kind.clone(),
            actions: report.actions.len(),
            json: serde_json::value::to_raw_value(report)?,
        })
    }
}

impl Serialize for ReportJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

/// What became of a batch of decoded events.
#[derive(Debug, Default, Serialize)]
pub struct BatchOutcome {
    pub reports: Vec<ReportJson>,
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
/// (group commits): one after another, a batch of 100 would wait for 100–200 commits in a
/// row. Each event in flight holds its facts, decision, outcomes and audit JSON; 8 per
/// batch keeps the peak RSS under the direct-mode load (8 connections × 100 events) at
/// the 40 MB target with the events/s of 32 (BENCHMARKS "Harness").
const BATCH_CONCURRENCY: usize = 8;

/// Runs decoded events through the pipeline. Events are handled concurrently (at most
/// [`BATCH_CONCURRENCY`] at once, the next starting as soon as one ends), except that an
/// event waits for every earlier one with the same id or subject (a duplicate delivery,
/// or a second event about the same key or registry), so those still run in batch order.
/// Reports, ignored and failed events are listed in batch order. After a retryable
/// failure no further event starts and those running finish (already handled events are
/// in the ledger, so the redelivery repeats nothing). Validation handshakes are not events and are
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
    let mut done: Vec<(usize, Event, Result<ReportJson, crate::pipeline::StageError>)> = Vec::new();
    let mut retry = false;
    for round in rounds {
        // A window, not groups: when one event ends the next starts, so the bound's events
        // stay in flight without waiting for the slowest of a group.
        let mut events = round.into_iter();
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            while !retry && running.len() < BATCH_CONCURRENCY {
                let Some((pos, event)) = events.next() else { break };
                Stats::add(&state.stats.events, 1);
                running.push(async move {
                    let result = state.pipeline.handle(&event).await.and_then(|report| {
                        // Recorded in the ledger already; only the answer cannot say so.
                        ReportJson::new(&report).map_err(|e| {
                            crate::pipeline::StageError::terminal("answer", format!("cannot serialize the report: {e}"))
                        })
                    });
                    (pos, event, result)
                });
            }
            // After a retryable failure nothing new starts; what runs finishes.
            let Some((pos, event, result)) = futures::StreamExt::next(&mut running).await else { break };
            retry |= result.as_ref().is_err_and(|e| e.class == crate::pipeline::ErrorClass::Retryable);
            done.push((pos, event, result));
        }
        if retry {
            break;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{ActionOutcome, ActionStatus, Decided, ErrorClass, PolicyRef, StageError};
    use cmkguard_model::outcome::EventReport;

    /// The answer as one `serde_json` value of the reports themselves, as it was built
    /// before it was streamed from reports serialized early.
    #[derive(Serialize)]
    struct Whole<'a> {
        received: usize,
        handled: usize,
        ignored: usize,
        failed: usize,
        outcome: &'a Outcome,
    }
    #[derive(Serialize)]
    struct Outcome {
        reports: Vec<EventReport>,
        ignored: Vec<crate::events::Ignored>,
        failed: Vec<FailedEvent>,
    }

    fn report(i: usize) -> EventReport {
        EventReport {
            event_id: format!("id-{i}"),
            event_type: "Microsoft.KeyVault.KeyNearExpiry".into(),
            kind: "key-near-expiry".into(),
            subject: format!("key \"{i}\"\n"),
            decided: Decided::Decision {
                policy: PolicyRef { name: "p".into(), version: "1".into(), digest: "d".into() },
                decision: cmkguard_model::Decision::default(),
            },
            actions: vec![ActionOutcome {
                action: "rotate-registry-key".into(),
                target: format!("acr{i}"),
                status: ActionStatus::WouldDo,
                detail: "would rotate ✓".into(),
            }],
        }
    }

    async fn streamed(received: usize, outcome: BatchOutcome) -> Vec<u8> {
        let response = batch_answer(received, outcome);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], "application/json");
        axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()
    }

    #[tokio::test]
    async fn a_streamed_batch_answer_is_the_whole_answer_byte_for_byte() {
        for n in [0, 1, REPORTS_PER_CHUNK - 1, REPORTS_PER_CHUNK, REPORTS_PER_CHUNK + 1, 100] {
            let make = || Outcome {
                reports: (0..n).map(report).collect(),
                ignored: vec![crate::events::Ignored {
                    id: "ig".into(),
                    event_type: "Other".into(),
                    reason: "not ours",
                }],
                failed: vec![FailedEvent {
                    event_id: "f".into(),
                    error: StageError { stage: "enrich", class: ErrorClass::Terminal, message: "no".into() },
                }],
            };
            let expected = make();
            let whole = Whole {
                received: n + 2,
                handled: expected.reports.len(),
                ignored: expected.ignored.len(),
                failed: expected.failed.len(),
                outcome: &expected,
            };
            let want = serde_json::to_vec(&whole).unwrap();
            let Outcome { reports, ignored, failed } = make();
            let reports = reports.iter().map(|r| ReportJson::new(r).unwrap()).collect();
            let got = streamed(n + 2, BatchOutcome { reports, ignored, failed, retryable: None }).await;
            assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap(), "{n} reports");
        }
    }
}

//! `POST|OPTIONS /api/events`: direct webhook mode, for running without a Functions host.
//!
//! Accepts Event Grid schema (with the `SubscriptionValidationEvent` handshake) and
//! CloudEvents 1.0 (structured, batch, binary; the `OPTIONS` abuse-protection handshake).
//! No Functions host stands in front, so every request must carry the configured key
//! (`x-cmkguard-key` header or `code` query parameter), compared in constant time.
//! Here a malformed event gets a 400: Event Grid does not retry it and dead-letters it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, Stats, read_body, run_batch};
use crate::AppState;
use crate::events::{self, DecodeError, Decoded};

pub const KEY_HEADER: &str = "x-cmkguard-key";

#[derive(Debug, Deserialize)]
pub struct KeyQuery {
    code: Option<String>,
}

fn authorize(state: &AppState, headers: &HeaderMap, query: &KeyQuery) -> Result<(), ApiError> {
    let Some(expected) = &state.config.webhook_key else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "disabled",
            "direct webhook mode is disabled: set CMKGUARD_WEBHOOK_KEY to enable /api/events",
        ));
    };
    let given = headers.get(KEY_HEADER).map(HeaderValue::as_bytes).or(query.code.as_deref().map(str::as_bytes));
    match given {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("missing key: send it in the {KEY_HEADER} header or the code query parameter"),
        )),
        Some(k) if expected.matches(k) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong key")),
    }
}

/// The CloudEvents webhook validation handshake (abuse protection).
pub async fn options_events(
    State(state): State<Arc<AppState>>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize(&state, &headers, &query) {
        return e.into_response();
    }
    let Some(origin) = headers.get("webhook-request-origin").cloned() else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "OPTIONS needs a WebHook-Request-Origin header",
        )
        .into_response();
    };
    tracing::info!(origin = ?origin, "CloudEvents webhook validation accepted");
    let mut h = HeaderMap::new();
    h.insert("webhook-allowed-origin", origin);
    h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    (StatusCode::OK, h).into_response()
}

/// How the body is to be read, from the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// `application/json` (or none): Event Grid schema, or CloudEvents told by `specversion`.
    Json,
    /// `application/cloudevents+json`: one structured event (or an array of them).
    CloudEvent,
    /// `application/cloudevents-batch+json`: an array of structured events.
    CloudEventBatch,
    /// `ce-specversion` header present: binary mode.
    Binary,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    if headers.contains_key("ce-specversion") {
        return Ok(BodyKind::Binary);
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else { return Ok(BodyKind::Json) };
    let ct = ct.to_str().unwrap_or_default();
    let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "" => Ok(BodyKind::Json),
        "application/cloudevents+json" => Ok(BodyKind::CloudEvent),
        "application/cloudevents-batch+json" => Ok(BodyKind::CloudEventBatch),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type {ct:?} is not accepted: send application/json, application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode CloudEvent"
            ),
        )),
    }
}

pub async fn post_events(
    State(state): State<Arc<AppState>>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&state, &query, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_client_error() {
                Stats::add(&state.stats.rejected, 1);
            }
            tracing::warn!(status = e.status.as_u16(), code = e.code, message = %e.message, "direct-mode request refused");
            e.into_response()
        }
    }
}

async fn handle(state: &AppState, query: &KeyQuery, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(state, headers, query)?;
    let kind = body_kind(headers)?;
    let bytes = read_body(headers, body, state.config.max_body_bytes).await?;
    let decoded = decode(kind, headers, &bytes).map_err(ApiError::bad_request)?;
    if let [Decoded::Validation { validation_code, .. }] = decoded.as_slice() {
        tracing::info!("Event Grid subscription validation answered");
        return Ok((StatusCode::OK, axum::Json(json!({"validationResponse": validation_code}))).into_response());
    }
    if decoded.len() > 1 && decoded.iter().any(|d| matches!(d, Decoded::Validation { .. })) {
        return Err(ApiError::bad_request(DecodeError::new(
            events::code::BAD_ENVELOPE,
            "a subscription validation event must come alone",
        )));
    }
    let received = decoded.len();
    let outcome = run_batch(state, decoded).await;
    if let Some(e) = &outcome.retryable {
        // 503: Event Grid retries after ≥ 30 s.
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "retryable", e.to_string()));
    }
    Ok(super::batch_answer(received, outcome))
}

fn decode(kind: BodyKind, headers: &HeaderMap, bytes: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    match kind {
        BodyKind::Binary => Ok(vec![events::cloudevents::decode_binary(headers, bytes.to_vec())?]),
        BodyKind::Json | BodyKind::CloudEvent => events::decode_events_json(bytes),
        BodyKind::CloudEventBatch => {
            let value = events::parse_json(bytes)?;
            if !value.is_array() {
                return Err(DecodeError::new(
                    events::code::BAD_ENVELOPE,
                    format!("a CloudEvents batch must be a JSON array, found {}", events::json_kind(&value)),
                ));
            }
            let decoded = events::decode_events_value(value)?;
            Ok(decoded)
        }
    }
}

//! The one error type every route returns: a status and `{"error":{"code","message"}}`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::events::DecodeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// A 500 that reveals nothing (used for caught panics).
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    /// A 400 from a decoding failure.
    pub fn bad_request(e: DecodeError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

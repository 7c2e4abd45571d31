//! The one error type of the Azure clients, each variant classed *retryable* (a later
//! attempt or a redelivery could succeed) or *terminal* (it would fail the same way).
//!
//! Messages name the operation and what went wrong; they never carry tokens, and URLs
//! appear only as host names.

use std::time::Duration;

/// Whether a redelivery of the same event could succeed (the semantics of the handler's
/// `pipeline::ErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Throttling, timeouts, dropped connections, Azure 5xx, an exhausted budget.
    Retryable,
    /// Bad input, refused URLs, permissions, not found, malformed answers.
    Terminal,
}

/// Everything that can go wrong talking to Azure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AzureError {
    /// A URL outside the cloud profile's endpoints (SSRF guard); nothing was sent.
    #[error("{operation}: refused to call {host:?}: {reason} (outbound allowlist of cloud profile {cloud:?})")]
    NotAllowed { operation: &'static str, host: String, reason: String, cloud: String },

    /// Azure answered with an error status.
    #[error("{operation}: HTTP {status}{}: {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Status {
        operation: &'static str,
        status: u16,
        /// ARM / Key Vault error code (`error.code`), when sent.
        code: Option<String>,
        message: String,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },

    /// The connection failed or dropped before an answer arrived.
    #[error("{operation}: connection to {host} failed: {message}")]
    Transport { operation: &'static str, host: String, message: String },

    /// One attempt took longer than its timeout.
    #[error("{operation}: no answer from {host} within {timeout:?}")]
    Timeout { operation: &'static str, host: String, timeout: Duration },

    /// The invocation's time budget for Azure calls ran out (retries included).
    #[error("{operation}: Azure time budget of {budget:?} exhausted after {attempts} attempt(s); last error: {last}")]
    BudgetExhausted { operation: &'static str, budget: Duration, attempts: u32, last: String },

    /// An answer that does not have the documented shape.
    #[error("{operation}: unexpected answer: {message}")]
    Decode { operation: &'static str, message: String },

    /// No token could be obtained.
    #[error("credential ({audience}): {message}")]
    Credential { audience: String, message: String, retryable: bool },

    /// Key Vault's 401 challenge could not be followed (malformed or for a foreign resource).
    #[error("{operation}: Key Vault authentication challenge refused: {message}")]
    Challenge { operation: &'static str, message: String },

    /// Bad configuration (cloud profile, CA file, …) or a request the caller should not make.
    #[error("{0}")]
    Invalid(String),
}

impl AzureError {
    /// Retryable or terminal.
    pub fn class(&self) -> Class {
        match self {
            AzureError::Status { status, code, .. } => {
                if is_retryable_status(*status)
                    || code.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("RetryableErrorDueToAnotherOperation"))
                {
                    Class::Retryable
                } else {
                    Class::Terminal
                }
            }
            AzureError::Transport { .. } | AzureError::Timeout { .. } | AzureError::BudgetExhausted { .. } => {
                Class::Retryable
            }
            AzureError::Credential { retryable, .. } => {
                if *retryable {
                    Class::Retryable
                } else {
                    Class::Terminal
                }
            }
            AzureError::NotAllowed { .. }
            | AzureError::Decode { .. }
            | AzureError::Challenge { .. }
            | AzureError::Invalid(_) => Class::Terminal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.class() == Class::Retryable
    }

    /// The HTTP status, for `Status` errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            AzureError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A 404 from Azure.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    pub(crate) fn decode(operation: &'static str, message: impl Into<String>) -> Self {
        AzureError::Decode { operation, message: message.into() }
    }
}

/// Statuses worth another attempt: request timeout, conflict with a running operation,
/// throttling and server errors.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || (500..=599).contains(&status) && status != 501 && status != 505
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16, code: Option<&str>) -> AzureError {
        AzureError::Status {
            operation: "op",
            status: s,
            code: code.map(str::to_owned),
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn classes() {
        assert_eq!(status(429, None).class(), Class::Retryable);
        assert_eq!(status(503, None).class(), Class::Retryable);
        assert_eq!(status(500, None).class(), Class::Retryable);
        assert_eq!(status(400, None).class(), Class::Terminal);
        assert_eq!(status(403, None).class(), Class::Terminal);
        assert_eq!(status(404, None).class(), Class::Terminal);
        assert_eq!(status(400, Some("RetryableErrorDueToAnotherOperation")).class(), Class::Retryable);
        let b = AzureError::BudgetExhausted {
            operation: "op",
            budget: Duration::from_secs(1),
            attempts: 3,
            last: "x".into(),
        };
        assert_eq!(b.class(), Class::Retryable);
        let n =
            AzureError::NotAllowed { operation: "op", host: "evil".into(), reason: "r".into(), cloud: "public".into() };
        assert_eq!(n.class(), Class::Terminal);
    }

    #[test]
    fn status_message_names_operation_and_code() {
        let e = status(403, Some("AuthorizationFailed"));
        assert_eq!(e.to_string(), "op: HTTP 403 AuthorizationFailed: m");
    }
}

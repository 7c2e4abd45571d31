//! Posting a notification to its channel over HTTPS, with bounded retries.
//!
//! Retried: connection errors, timeouts, 408, 429 and 5xx; a `Retry-After` header
//! (seconds or HTTP date) is honoured, otherwise the wait is an exponential backoff
//! with jitter. Everything, waits included, fits in [`RetryPolicy::total_budget`]: a
//! failed notification costs at most that long and never fails the caller; it ends in
//! a [`Delivery`] to record. Redirects are not followed (a webhook that redirects is
//! misconfigured, and following it would send the payload somewhere unreviewed).
//! Webhook URLs appear in logs and reasons as `scheme://host/…` only.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmkguard_model::outcome::{ActionOutcome, ActionStatus};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument;

use crate::channel::{ChannelConfig, ChannelError, ChannelKind, Channels};
use crate::notification::Notification;
use crate::redact::scrub;
use crate::{slack, teams, webhook};

/// How hard to try. The defaults suit a notification sent from within an event's
/// invocation: four attempts within fifteen seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The backoff before the second attempt; it doubles each time, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// One request's limit (connect, send, response).
    pub attempt_timeout: Duration,
    /// Everything, waits included.
    pub total_budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(5),
            total_budget: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (after `attempt` failures, `attempt >= 1`)
    /// when the server gave no `Retry-After`: exponential, capped, with "equal jitter"
    /// (between half and all of the step), so that instances that failed together do
    /// not retry together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max_backoff);
        let half = step / 2;
        let jitter_ms = fastrand::u64(0..=half.as_millis().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// What became of one notification: record it (it is the `notify` action's outcome).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "delivery", rename_all = "kebab-case")]
pub enum Delivery {
    /// Accepted by the channel (2xx).
    Sent { attempts: u32 },
    /// Given up. `reason` names the last failure and never contains the URL.
    Failed { reason: String, attempts: u32 },
}

impl Delivery {
    pub fn is_sent(&self) -> bool {
        matches!(self, Delivery::Sent { .. })
    }

    pub fn attempts(&self) -> u32 {
        match self {
            Delivery::Sent { attempts } | Delivery::Failed { attempts, .. } => *attempts,
        }
    }

    /// The `notify` action's outcome for the audit record.
    pub fn outcome(&self, channel: &str) -> ActionOutcome {
        let (status, detail) = match self {
            Delivery::Sent { attempts: 1 } => (ActionStatus::Done, "sent".to_owned()),
            Delivery::Sent { attempts } => (ActionStatus::Done, format!("sent after {attempts} attempts")),
            Delivery::Failed { reason, attempts } => {
                (ActionStatus::Failed, format!("not sent after {attempts} attempt(s): {reason}"))
            }
        };
        ActionOutcome { action: "notify".into(), target: channel.to_owned(), status, detail }
    }
}

/// Building the HTTP client failed (TLS backend unavailable).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for notifications: {0}")]
pub struct ClientError(String);

/// A rendered request body and its content type.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Renders `n` the way a channel of `kind` expects. `event_id` is the webhook
/// CloudEvent id (ignored for Teams and Slack).
pub fn render(kind: ChannelKind, n: &Notification, event_id: &str) -> Rendered {
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec());
    match kind {
        ChannelKind::Teams => Rendered { content_type: "application/json", body: json(teams::payload(n)) },
        ChannelKind::Slack => Rendered { content_type: "application/json", body: json(slack::payload(n)) },
        ChannelKind::Webhook => match webhook::body(n, event_id) {
            Ok(body) => Rendered { content_type: webhook::CONTENT_TYPE, body },
            // Unreachable in practice (all attributes are ours); send the bare data rather than nothing.
            Err(_) => {
                Rendered { content_type: "application/json", body: json(serde_json::to_value(n).unwrap_or_default()) }
            }
        },
    }
}

/// Sends notifications to configured channels. Cheap to clone (shares one connection pool).
#[derive(Debug, Clone)]
pub struct Notifier {
    client: reqwest::Client,
    channels: Channels,
    retry: RetryPolicy,
}

impl Notifier {
    /// With a client of its own (reqwest's default TLS: the platform's CA roots are read
    /// for it).
    pub fn new(channels: Channels, retry: RetryPolicy) -> Result<Self, ClientError> {
        Self::with_client_builder(channels, retry, reqwest::Client::builder())
    }

    /// With a client built from `builder`, e.g. one preconfigured with the process's shared
    /// TLS settings (`cmkguard_azure::SharedTls::client_builder`), so a server reads the CA
    /// roots once for all its HTTP clients. Redirects, timeouts and the user agent are set here.
    pub fn with_client_builder(
        channels: Channels,
        retry: RetryPolicy,
        builder: reqwest::ClientBuilder,
    ) -> Result<Self, ClientError> {
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(retry.attempt_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("cmkguard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError(e.without_url().to_string()))?;
        Ok(Self { client, channels, retry: RetryPolicy { max_attempts: retry.max_attempts.max(1), ..retry } })
    }

    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Sends to the channel a policy named. An unknown name is an error to record (the
    /// policy asked for something the host does not have); delivery failures are not
    /// errors but a [`Delivery::Failed`].
    pub async fn notify(&self, channel: &str, n: &Notification) -> Result<Delivery, ChannelError> {
        let ch = self.channels.get(channel)?;
        Ok(self.send(ch, n).await)
    }

    /// Renders and posts `n` to `ch`, retrying within the budget. Never panics; returns
    /// within [`RetryPolicy::total_budget`] (plus scheduling noise).
    pub async fn send(&self, ch: &ChannelConfig, n: &Notification) -> Delivery {
        let span =
            tracing::info_span!("notify", channel = %ch.name, kind = %ch.kind, url = %ch.url, severity = %n.severity);
        let attempts = AtomicU32::new(0);
        // The loop keeps to the budget by itself; this guard holds even if a step hangs.
        let guard = self.retry.total_budget + Duration::from_millis(250);
        match tokio::time::timeout(guard, self.send_in_span(ch, n, &attempts).instrument(span.clone())).await {
            Ok(d) => d,
            Err(_) => span.in_scope(|| self.give_up(ch, attempts.load(Ordering::Relaxed), "time budget spent".into())),
        }
    }

    async fn send_in_span(&self, ch: &ChannelConfig, n: &Notification, counter: &AtomicU32) -> Delivery {
        let event_id = webhook::new_event_id();
        let rendered = render(ch.kind, n, &event_id);
        let deadline = Instant::now() + self.retry.total_budget;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            counter.store(attempts, Ordering::Relaxed);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return self.give_up(ch, attempts - 1, "time budget spent before the next attempt".into());
            }
            let (failure, retry_after) =
                match self.attempt(ch, &rendered, remaining.min(self.retry.attempt_timeout)).await {
                    Ok(()) => {
                        tracing::info!(attempts, "notification sent");
                        return Delivery::Sent { attempts };
                    }
                    Err(f) => f,
                };
            let Failure { reason, retryable } = failure;
            if !retryable {
                return self.give_up(ch, attempts, reason);
            }
            if attempts >= self.retry.max_attempts {
                return self.give_up(ch, attempts, reason);
            }
            let wait = retry_after.unwrap_or_else(|| self.retry.backoff(attempts));
            let remaining = deadline.saturating_duration_since(Instant::now());
            if wait >= remaining {
                return self.give_up(
                    ch,
                    attempts,
                    format!("{reason}; the next attempt (in {} ms) would pass the time budget", wait.as_millis()),
                );
            }
            tracing::warn!(attempts, wait_ms = wait.as_millis() as u64, %reason, "notification attempt failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    fn give_up(&self, ch: &ChannelConfig, attempts: u32, reason: String) -> Delivery {
        let reason = scrub(&reason, &ch.url);
        tracing::warn!(attempts, %reason, "notification not sent");
        Delivery::Failed { reason, attempts }
    }

    async fn attempt(
        &self,
        ch: &ChannelConfig,
        r: &Rendered,
        timeout: Duration,
    ) -> Result<(), (Failure, Option<Duration>)> {
        let mut req = self
            .client
            .post(ch.url.expose().clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, r.content_type)
            .body(r.body.clone());
        if let (ChannelKind::Webhook, Some(key)) = (ch.kind, &ch.secret) {
            let ts = unix_now();
            req = req
                .header(webhook::TIMESTAMP_HEADER, ts.to_string())
                .header(webhook::SIGNATURE_HEADER, webhook::sign(key, ts, &r.body));
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "request failed"
                };
                let detail = error_chain(&e.without_url());
                return Err((Failure { reason: scrub(&format!("{what}: {detail}"), &ch.url), retryable: true }, None));
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let snippet = read_snippet(resp).await;
        let retryable = status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error();
        let mut reason = format!("HTTP {status}");
        if !snippet.is_empty() {
            reason.push_str(": ");
            reason.push_str(&snippet);
        }
        Err((Failure { reason: scrub(&reason, &ch.url), retryable }, retry_after))
    }
}

struct Failure {
    reason: String,
    retryable: bool,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// An error and its sources, one line (reqwest's own message is terse: the cause is in the chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The first 200 printable characters of an error response (Slack answers with short
/// codes such as `invalid_payload` or `channel_is_archived`, which say what to fix).
async fn read_snippet(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < 1024 {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    crate::notification::truncate(clean.trim(), 200)
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date (relative to `now`; a
/// date in the past means "now"). `None` for anything else. Capped at one day.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    const CAP: Duration = Duration::from_secs(86_400);
    if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(|s| Duration::from_secs(s).min(CAP));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO).min(CAP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999", now), None);
        assert_eq!(parse_retry_after("9999999999", now), Some(Duration::from_secs(86_400)));
        for bad in ["", "-1", "1.5", "soon", "120s"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(400),
            max_backoff: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(200) && b1 <= Duration::from_millis(400), "{b1:?}");
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(800) && b3 <= Duration::from_millis(1600), "{b3:?}");
            let b20 = p.backoff(40);
            assert!(b20 >= Duration::from_secs(1) && b20 <= Duration::from_secs(2), "{b20:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(2)).collect();
        assert!(distinct.len() > 1, "backoff must be jittered");
    }

    #[test]
    fn delivery_becomes_an_outcome() {
        let o = Delivery::Failed { reason: "HTTP 500".into(), attempts: 4 }.outcome("ops");
        assert_eq!(o.status, ActionStatus::Failed);
        assert_eq!(o.target, "ops");
        assert!(o.detail.contains("4 attempt") && o.detail.contains("HTTP 500"));
        assert_eq!(Delivery::Sent { attempts: 1 }.outcome("ops").status, ActionStatus::Done);
        let v = serde_json::to_value(Delivery::Sent { attempts: 2 }).unwrap();
        assert_eq!(v, serde_json::json!({"delivery": "sent", "attempts": 2}));
    }

    proptest! {
        #[test]
        fn retry_after_never_panics_and_is_capped(s in ".{0,40}", secs in 0u64..4_000_000_000) {
            let now = UNIX_EPOCH + Duration::from_secs(secs);
            if let Some(d) = parse_retry_after(&s, now) {
                prop_assert!(d <= Duration::from_secs(86_400));
            }
        }

        #[test]
        fn retry_after_seconds_round_trip(n in 0u64..86_400) {
            prop_assert_eq!(parse_retry_after(&n.to_string(), SystemTime::now()), Some(Duration::from_secs(n)));
        }
    }
}

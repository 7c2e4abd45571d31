//! A local chat sink: an HTTP server on 127.0.0.1 that stands in for Teams, Slack and
//! webhook receivers in tests and in `cmkguard demo`. It accepts posts at
//! `/{kind}/{channel}`, checks each body has the shape its kind requires, verifies
//! webhook signatures (HMAC, replay window) as a real receiver would, records what it
//! received, and can be told to fail (500, or 429 with `Retry-After`) for a number of
//! requests or for a while, to exercise the sender's retries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;

use crate::channel::{ChannelConfig, ChannelError, ChannelKind};
use crate::webhook;

/// How the sink answers while told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 500 Internal Server Error.
    ServerError,
    /// 429 Too Many Requests with `Retry-After: <secs>`.
    Throttle { retry_after_secs: u64 },
}

/// One accepted post.
#[derive(Debug, Clone)]
pub struct Received {
    pub channel: String,
    pub kind: ChannelKind,
    pub body: Value,
    /// `Some(true)` for a webhook post whose signature verified (others are refused, see
    /// [`ChatSink::rejected`]); `None` for Teams and Slack.
    pub signature_valid: Option<bool>,
    pub at: SystemTime,
}

impl Received {
    /// The message's title, whatever the kind (for assertions and the demo's timeline).
    pub fn title(&self) -> Option<String> {
        let t = match self.kind {
            ChannelKind::Teams => self.body.pointer("/attachments/0/content/body/0/items/1/text"),
            ChannelKind::Slack => self.body.pointer("/blocks/0/text/text"),
            ChannelKind::Webhook => self.body.pointer("/data/title"),
        }?;
        let t = t.as_str()?.replace('\u{200B}', "");
        // Slack headers start with the severity emoji code, e.g. `:red_circle: `.
        let t = match t.strip_prefix(':').and_then(|r| r.split_once(": ")) {
            Some((code, rest)) if self.kind == ChannelKind::Slack && !code.contains(' ') => rest.to_owned(),
            _ => t,
        };
        Some(t)
    }

    /// One line for a timeline: `teams ops: Key acr-cmk expires in 10 days`.
    pub fn summary(&self) -> String {
        format!("{} {}: {}", self.kind, self.channel, self.title().unwrap_or_else(|| "(no title)".into()))
    }

    /// The Teams Adaptive Card, if this is a Teams post.
    pub fn adaptive_card(&self) -> Option<&Value> {
        (self.kind == ChannelKind::Teams).then(|| self.body.pointer("/attachments/0/content")).flatten()
    }
}

/// A refused post: wrong shape, unknown channel, or a webhook signature that failed.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub path: String,
    pub status: u16,
    pub reason: String,
}

#[derive(Default)]
struct Inner {
    channels: HashMap<String, (ChannelKind, Option<Vec<u8>>)>,
    received: Vec<Received>,
    rejected: Vec<Rejected>,
    requests: usize,
    fail_next: Option<(u32, Failure)>,
    fail_until: Option<(Instant, Failure)>,
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the records inconsistent; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running sink. Dropping it stops the server.
pub struct ChatSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ChatSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatSink").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl ChatSink {
    /// Binds 127.0.0.1 on a free port and serves until dropped.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new().route("/{kind}/{channel}", post(receive)).with_state(shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "chat sink stopped");
            }
        });
        Ok(Self { addr, shared, shutdown: Some(tx), task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a channel of `kind` named `name` posts to.
    pub fn url(&self, kind: ChannelKind, name: &str) -> String {
        format!("http://{}/{}/{}", self.addr, kind.as_str(), name.to_ascii_lowercase())
    }

    /// Registers a channel and returns its configuration, pointing at this sink. A
    /// webhook channel needs its signing `secret`; the sink verifies with it.
    pub fn channel(&self, name: &str, kind: ChannelKind, secret: Option<&str>) -> Result<ChannelConfig, ChannelError> {
        let cfg = ChannelConfig::new(name, kind, &self.url(kind, name), secret)?;
        let key = cfg.secret.as_ref().map(|k| k.expose().to_vec());
        self.shared.lock().channels.insert(cfg.name.to_ascii_lowercase(), (kind, key));
        Ok(cfg)
    }

    /// Answers the next `count` requests with `failure`.
    pub fn fail_next(&self, count: u32, failure: Failure) {
        self.shared.lock().fail_next = (count > 0).then_some((count, failure));
    }

    /// Answers every request with `failure` for `duration` from now.
    pub fn fail_for(&self, duration: Duration, failure: Failure) {
        self.shared.lock().fail_until = Some((Instant::now() + duration, failure));
    }

    /// Stops failing.
    pub fn recover(&self) {
        let mut g = self.shared.lock();
        g.fail_next = None;
        g.fail_until = None;
    }

    /// Every accepted post, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Accepted posts to one channel.
    pub fn received_on(&self, channel: &str) -> Vec<Received> {
        self.shared.lock().received.iter().filter(|r| r.channel.eq_ignore_ascii_case(channel)).cloned().collect()
    }

    /// Refused posts (bad shape, unknown channel, bad signature), in arrival order.
    pub fn rejected(&self) -> Vec<Rejected> {
        self.shared.lock().rejected.clone()
    }

    /// Requests seen, including those answered with a failure.
    pub fn requests(&self) -> usize {
        self.shared.lock().requests
    }

    /// Waits until at least `count` posts were accepted, or `timeout` passes; returns
    /// what was received either way (the caller asserts).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= count || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ChatSink {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path((kind, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{kind}/{channel}");
    let mut g = shared.lock();
    g.requests += 1;
    let reject = |g: &mut Inner, status: StatusCode, reason: String| -> Response {
        g.rejected.push(Rejected { path: path.clone(), status: status.as_u16(), reason: reason.clone() });
        (status, reason).into_response()
    };
    // Failure injection comes first: a real service fails before looking at the body.
    if let Some(f) = active_failure(&mut g) {
        return match f {
            Failure::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response(),
            Failure::Throttle { retry_after_secs } => {
                let mut r = (StatusCode::TOO_MANY_REQUESTS, "injected throttling").into_response();
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
        };
    }
    let Ok(kind) = kind.parse::<ChannelKind>() else {
        return reject(&mut g, StatusCode::NOT_FOUND, format!("no such kind {kind:?}"));
    };
    let Some((registered, key)) = g.channels.get(&channel.to_ascii_lowercase()).cloned() else {
        return reject(&mut g, StatusCode::NOT_FOUND, format!("no channel {channel:?}"));
    };
    if registered != kind {
        return reject(&mut g, StatusCode::NOT_FOUND, format!("channel {channel:?} is a {registered} channel"));
    }
    let mut signature_valid = None;
    if kind == ChannelKind::Webhook {
        let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let key = key.unwrap_or_default();
        if let Err(e) = webhook::verify(
            &key,
            h(webhook::TIMESTAMP_HEADER),
            h(webhook::SIGNATURE_HEADER),
            &body,
            now,
            webhook::DEFAULT_TOLERANCE,
        ) {
            return reject(&mut g, StatusCode::UNAUTHORIZED, e.to_string());
        }
        signature_valid = Some(true);
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return reject(&mut g, StatusCode::BAD_REQUEST, format!("invalid_payload: {e}")),
    };
    if let Err(reason) = check_shape(kind, &value) {
        return reject(&mut g, StatusCode::BAD_REQUEST, reason);
    }
    g.received.push(Received {
        channel: channel.to_ascii_lowercase(),
        kind,
        body: value,
        signature_valid,
        at: SystemTime::now(),
    });
    drop(g);
    match kind {
        // Teams Workflows answers 202 Accepted; Slack answers 200 "ok".
        ChannelKind::Teams => StatusCode::ACCEPTED.into_response(),
        ChannelKind::Slack => (StatusCode::OK, "ok").into_response(),
        ChannelKind::Webhook => StatusCode::NO_CONTENT.into_response(),
    }
}

fn active_failure(g: &mut Inner) -> Option<Failure> {
    if let Some((n, f)) = g.fail_next {
        g.fail_next = (n > 1).then_some((n - 1, f));
        return Some(f);
    }
    match g.fail_until {
        Some((until, f)) if Instant::now() < until => Some(f),
        Some(_) => {
            g.fail_until = None;
            None
        }
        None => None,
    }
}

/// The minimal structure each service insists on before it accepts a post.
fn check_shape(kind: ChannelKind, v: &Value) -> Result<(), String> {
    match kind {
        ChannelKind::Teams => {
            let att = v.pointer("/attachments/0").ok_or("no attachments")?;
            if att["contentType"] != crate::teams::CONTENT_TYPE {
                return Err("attachment is not an Adaptive Card".into());
            }
            let card = &att["content"];
            if card["type"] != "AdaptiveCard" || !card["version"].is_string() || !card["body"].is_array() {
                return Err("content is not an AdaptiveCard with version and body".into());
            }
            Ok(())
        }
        ChannelKind::Slack => {
            if v["text"].as_str().is_some_and(|t| !t.is_empty())
                || v["blocks"].as_array().is_some_and(|b| !b.is_empty())
            {
                Ok(())
            } else {
                Err("no_text".into())
            }
        }
        ChannelKind::Webhook => {
            if v["specversion"] == "1.0" && v["id"].is_string() && v["type"].is_string() && v["source"].is_string() {
                Ok(())
            } else {
                Err("not a CloudEvent 1.0 (specversion, id, type, source)".into())
            }
        }
    }
}

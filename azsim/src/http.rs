//! Serving: accept loops (HTTPS with host dispatch, plain-HTTP identity listener),
//! per-request plumbing (body limit, latency, faults, call log, event flush) and the
//! response helpers shared by the service modules.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::faults::{FaultKind, Route};
use crate::world::{ARM_HOST, Audience, HSM_SUFFIX, LOGIN_HOST, VAULT_SUFFIX, World};

/// Body of a response azsim sends.
pub type Body = Full<Bytes>;

/// What a handler decided: a response, or to drop the connection unanswered.
pub enum Reply {
    Resp(Response<Body>),
    Drop,
}

impl From<Response<Body>> for Reply {
    fn from(r: Response<Body>) -> Self {
        Reply::Resp(r)
    }
}

/// Settings the handlers need (copied from `Options`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub token_lifetime: Duration,
    pub identity_header: String,
    pub lro_retry_after: u64,
    pub kv_page_size: usize,
    pub rg_default_top: usize,
}

/// State shared by every connection.
pub struct Shared {
    pub world: Mutex<World>,
    pub settings: Settings,
    pub events_tx: Option<mpsc::UnboundedSender<Value>>,
    pub emitted: Mutex<usize>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock leaves the data usable for a test double.
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send events recorded since the last flush to the emitter.
    fn flush_events(&self) {
        let Some(tx) = &self.events_tx else { return };
        let w = self.lock();
        let mut done = self.emitted.lock().unwrap_or_else(|p| p.into_inner());
        for ev in &w.events[*done..] {
            let _ = tx.send(ev.clone());
        }
        *done = w.events.len();
    }
}

/// A request with its body read.
pub struct Ctx {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Ctx {
    /// Query parameter by case-insensitive name.
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Path segments after the leading slash (empty segments kept, e.g. `/keys/k/`).
    pub fn segs(&self) -> Vec<&str> {
        self.path.strip_prefix('/').unwrap_or(&self.path).split('/').collect()
    }
    pub fn json(&self) -> Result<Value, Response<Body>> {
        if self.body.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            arm_error(
                400,
                "InvalidRequestContent",
                &format!("The request content was invalid and could not be deserialized: {e}"),
            )
        })
    }
}

pub fn json_resp(status: u16, v: &Value) -> Response<Body> {
    json_bytes(status, serde_json::to_vec(v).unwrap_or_default())
}

/// A JSON response from already serialized bytes.
pub fn json_bytes(status: u16, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    r.headers_mut().insert("x-ms-request-id", hv(&uuid::Uuid::new_v4().to_string()));
    r
}

pub fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// ARM's error envelope.
pub fn arm_error(status: u16, code: &str, message: &str) -> Response<Body> {
    json_resp(status, &json!({"error": {"code": code, "message": message}}))
}

/// Key Vault's error envelope.
pub fn kv_error(status: u16, code: &str, message: &str) -> Response<Body> {
    json_resp(status, &json!({"error": {"code": code, "message": message}}))
}

/// Which service a fault answer imitates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Arm,
    Kv,
    Identity,
}

/// Apply a fault rule for `route`, if one is due.
pub fn fault_reply(w: &mut World, route: Route, flavor: Flavor) -> Option<Reply> {
    match w.take_fault(route)? {
        FaultKind::Drop => Some(Reply::Drop),
        FaultKind::Status { status, retry_after } => {
            let (code, msg) = match (status, flavor) {
                (429, Flavor::Kv) => {
                    ("Throttled", "Request was not processed because too many requests were received (azsim fault).")
                }
                (429, _) => (
                    "TooManyRequests",
                    "The request is throttled (azsim fault). Retry after the interval in Retry-After.",
                ),
                (500, _) => ("InternalServerError", "Encountered internal server error (azsim fault)."),
                (502, _) => ("BadGateway", "Bad gateway (azsim fault)."),
                (503, _) => ("ServiceUnavailable", "The service is temporarily unavailable (azsim fault)."),
                (504, _) => ("GatewayTimeout", "Gateway timeout (azsim fault)."),
                _ => ("InjectedFault", "azsim injected this failure."),
            };
            let mut r = match flavor {
                Flavor::Identity => json_resp(status, &json!({"error": code, "error_description": msg})),
                _ => arm_error(status, code, msg),
            };
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", hv(&s.to_string()));
            }
            if status == 429 && flavor == Flavor::Arm {
                r.headers_mut().insert("x-ms-ratelimit-remaining-subscription-reads", HeaderValue::from_static("0"));
            }
            Some(Reply::Resp(r))
        }
    }
}

/// The 401 every data-plane call without a valid token gets.
///
/// The `resource` carries azsim's port: Microsoft's Key Vault SDKs check that the vault's
/// `host:port` ends with `.` + the resource's `host:port` (real vaults are on 443, where
/// both have none). Token requests for it are accepted with or without the port.
pub fn kv_challenge(tenant: &str, detail: &str, port: u16) -> Response<Body> {
    let msg = match detail {
        "missing" => "AKV10000: Request is missing a Bearer or PoP token.",
        "expired" => "AKV10032: Token expired (azsim).",
        "audience" => "AKV10022: Invalid audience (azsim).",
        _ => "AKV10020: Invalid token (azsim).",
    };
    let mut r = kv_error(401, "Unauthorized", msg);
    let challenge = format!(
        "Bearer authorization=\"https://{LOGIN_HOST}/{tenant}\", resource=\"{}:{port}\"",
        crate::world::VAULT_AUDIENCE
    );
    r.headers_mut().insert("www-authenticate", hv(&challenge));
    r
}

/// ARM's 401 for a missing or bad token.
pub fn arm_unauthorized(tenant: &str, detail: &str, message: &str) -> Response<Body> {
    let code = match detail {
        "missing" => "AuthenticationFailed",
        "expired" => "ExpiredAuthenticationToken",
        "audience" => "InvalidAuthenticationTokenAudience",
        _ => "InvalidAuthenticationToken",
    };
    let mut r = arm_error(401, code, message);
    let challenge = format!(
        "Bearer authorization_uri=\"https://{LOGIN_HOST}/{tenant}\", error=\"invalid_token\", error_description=\"{message}\""
    );
    r.headers_mut().insert("www-authenticate", hv(&challenge));
    r
}

/// Check a bearer token; on failure the matching 401.
pub fn authorize(w: &World, ctx: &Ctx, aud: Audience) -> Result<crate::world::TokenInfo, Reply> {
    w.check_token(ctx.header("authorization"), aud.clone()).map_err(|(detail, msg)| match aud {
        Audience::Vault => Reply::Resp(kv_challenge(&w.tenant, detail, w.urls.port)),
        Audience::Arm => Reply::Resp(arm_unauthorized(&w.tenant, detail, msg)),
    })
}

const BODY_LIMIT: usize = 4 * 1024 * 1024;

async fn read_ctx(req: Request<Incoming>) -> Result<Ctx, Response<Body>> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, BODY_LIMIT)
        .collect()
        .await
        .map_err(|_| arm_error(413, "RequestEntityTooLarge", "The request body is too large or could not be read."))?
        .to_bytes();
    let query =
        parts.uri.query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    Ok(Ctx { method: parts.method, path: parts.uri.path().to_owned(), query, headers: parts.headers, body })
}

fn host_of(req: &Request<Incoming>) -> String {
    let raw = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| req.headers().get("host").and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let host = if raw.starts_with('[') { raw } else { raw.split(':').next().unwrap_or_default().to_owned() };
    host.to_ascii_lowercase()
}

/// The services one HTTPS port multiplexes by host name.
enum Service {
    Arm,
    Vault(String),
    Unknown(String),
}

fn service_for(host: &str) -> Service {
    if host == ARM_HOST || host == "localhost" || host == "127.0.0.1" {
        return Service::Arm;
    }
    if let Some(v) = host.strip_suffix(&format!(".{VAULT_SUFFIX}")).filter(|v| !v.is_empty() && !v.contains('.')) {
        return Service::Vault(v.to_owned());
    }
    if host.ends_with(&format!(".{HSM_SUFFIX}")) {
        return Service::Unknown(format!("{host} (Managed HSM is not simulated)"));
    }
    Service::Unknown(host.to_owned())
}

async fn handle_https(shared: Arc<Shared>, req: Request<Incoming>) -> Reply {
    let host = host_of(&req);
    let ctx = match read_ctx(req).await {
        Ok(c) => c,
        Err(r) => return Reply::Resp(r),
    };
    match service_for(&host) {
        Service::Arm => {
            let route = crate::arm::route_of(&ctx);
            run(&shared, route, &ctx, |w| crate::arm::handle(w, &shared.settings, &ctx, route)).await
        }
        Service::Vault(v) => {
            let route = crate::keyvault::route_of(&ctx);
            run(&shared, route, &ctx, |w| crate::keyvault::handle(w, &shared.settings, &ctx, route, &v)).await
        }
        Service::Unknown(h) => Reply::Resp(arm_error(404, "HostNotFound", &format!("azsim does not serve host {h}"))),
    }
}

async fn handle_identity(shared: Arc<Shared>, req: Request<Incoming>) -> Reply {
    let ctx = match read_ctx(req).await {
        Ok(c) => c,
        Err(r) => return Reply::Resp(r),
    };
    run(&shared, Route::Identity, &ctx, |w| crate::identity::handle(w, &shared.settings, &ctx)).await
}

/// Latency, the handler under the lock, the call log, event flush.
async fn run(shared: &Arc<Shared>, route: Route, ctx: &Ctx, f: impl FnOnce(&mut World) -> Reply) -> Reply {
    let delay = shared.lock().faults.latency(route);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let reply = {
        let mut w = shared.lock();
        let reply = f(&mut w);
        let status = match &reply {
            Reply::Resp(r) => r.status().as_u16(),
            Reply::Drop => 0,
        };
        w.record(crate::world::CallRecord { route, method: ctx.method.to_string(), path: ctx.path.clone(), status });
        reply
    };
    shared.flush_events();
    reply
}

/// Accept loop for one listener. `tls` None: plain HTTP.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    identity: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let Ok((tcp, _peer)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            let kill = Arc::new(Notify::new());
            let svc = {
                let kill = kill.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    let kill = kill.clone();
                    async move {
                        let reply =
                            if identity { handle_identity(shared, req).await } else { handle_https(shared, req).await };
                        match reply {
                            Reply::Resp(r) => Ok::<_, Infallible>(r),
                            Reply::Drop => {
                                kill.notify_one();
                                std::future::pending().await
                            }
                        }
                    }
                })
            };
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acc) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp)).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = kill.notified() => {}
                        _ = stop.changed() => {}
                    }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = kill.notified() => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}

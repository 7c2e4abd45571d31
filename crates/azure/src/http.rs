//! The shared HTTP core of every client: the TLS settings the process's HTTP clients
//! share ([`SharedTls`]: the platform's CA roots, read once), the reqwest client (a test
//! profile may add a CA and a loopback resolver), the outbound allowlist check, bearer
//! tokens (ARM) and Key Vault's 401 challenge flow, retries with jittered exponential
//! backoff and `Retry-After`, the per-invocation time [`Budget`], and the warm-up that
//! prepares the first call ([`AzureHttp::warm_up`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::cloud::{Allowlist, CloudProfile, Service};
use crate::credential::TokenCache;
use crate::error::{AzureError, is_retryable_status};

/// The time Azure calls may take within one invocation, retries included.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
    total: Duration,
}

impl Budget {
    pub fn new(total: Duration) -> Self {
        Self { deadline: Instant::now() + total, total }
    }
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
    pub fn total(&self) -> Duration {
        self.total
    }
    pub fn is_exhausted(&self) -> bool {
        self.remaining().is_zero()
    }
}

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First backoff; doubled per attempt, jittered (50–100 %), capped at `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of one attempt (further capped by the remaining budget).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max_backoff);
        // Jitter without a RNG crate: the std hasher is randomly keyed per process and call.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        let frac = (h.finish() % 1000) as f64 / 1000.0;
        exp.mul_f64(0.5 + 0.5 * frac)
    }
}

/// How a call authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Bearer token for the profile's ARM audience (ARM and Resource Graph).
    Arm,
    /// Key Vault / Managed HSM: start without a token (or with a cached challenge), read
    /// the 401 challenge, retry with a token for the resource it names.
    KeyVault,
}

/// One request to make.
#[derive(Debug)]
pub struct Call<'a> {
    pub operation: &'static str,
    pub method: Method,
    pub url: Url,
    pub body: Option<&'a Value>,
    pub auth: Auth,
    /// Retry retryable failures within the budget (false: one attempt, e.g. LRO polls).
    pub retry: bool,
}

impl<'a> Call<'a> {
    pub fn new(operation: &'static str, method: Method, url: Url, auth: Auth) -> Self {
        Self { operation, method, url, body: None, auth, retry: true }
    }
    pub fn body(mut self, body: &'a Value) -> Self {
        self.body = Some(body);
        self
    }
    pub fn once(mut self) -> Self {
        self.retry = false;
        self
    }
}

/// An answer with a non-retryable status (2xx, or a 4xx the caller interprets).
#[derive(Debug)]
pub struct Reply {
    pub operation: &'static str,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    /// Fails unless 2xx, with ARM/Key Vault's error envelope read into the error.
    pub fn success(self) -> Result<Reply, AzureError> {
        if self.status.is_success() { Ok(self) } else { Err(self.into_error()) }
    }

    pub fn into_error(self) -> AzureError {
        status_error(self.operation, self.status, &self.headers, &self.body)
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, AzureError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| AzureError::decode(self.operation, format!("body is not the documented JSON: {e}")))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }
}

/// `Retry-After`: whole seconds (ARM, Key Vault) or an HTTP date; also `retry-after-ms`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        headers.get("retry-after-ms").or_else(|| headers.get("x-ms-retry-after-ms")).and_then(|v| v.to_str().ok())
        && let Ok(ms) = ms.trim().parse::<u64>()
    {
        return Some(Duration::from_millis(ms));
    }
    parse_retry_after(headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?)
}

/// Parses a `Retry-After` value (seconds or an RFC 7231 date).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

fn status_error(operation: &'static str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> AzureError {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: Option<String>,
        message: Option<String>,
    }
    let (code, message) = match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { error: Some(Inner { code, message }) }) => (code, message.unwrap_or_default()),
        _ => (None, status.canonical_reason().unwrap_or("error").to_owned()),
    };
    // Bound what an error message may carry into logs.
    let message: String = message.chars().take(500).collect();
    AzureError::Status { operation, status: status.as_u16(), code, message, retry_after: retry_after(headers) }
}

/// A Key Vault challenge: the resource to get a token for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub resource: String,
    pub tenant: Option<String>,
}

/// Parses `WWW-Authenticate: Bearer authorization="https://login…/<tenant>", resource="https://vault.azure.net"`
/// (also `authorization_uri` and `scope` forms). `None` when it is not a Bearer challenge with a resource.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut map: HashMap<String, String> = HashMap::new();
    for part in split_params(params) {
        if let Some((k, v)) = part.split_once('=') {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_owned());
        }
    }
    let resource = map
        .get("resource")
        .cloned()
        .or_else(|| map.get("scope").map(|s| s.trim_end_matches("/.default").to_owned()))
        .filter(|r| !r.is_empty())?;
    let authority = map.get("authorization").or_else(|| map.get("authorization_uri"));
    let tenant =
        authority.and_then(|a| a.trim_end_matches('/').rsplit('/').next().map(str::to_owned)).filter(|t| !t.is_empty());
    Some(Challenge { resource: resource.trim_end_matches('/').to_owned(), tenant })
}

/// Splits `a="x, y", b=z` at commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The TLS client settings every outbound HTTP client of the process shares.
///
/// Reading and parsing the platform's CA roots (≈ 145 certificates, from the bundle file
/// and the certificate directory) is the slowest part of building an HTTP client: each
/// reqwest client used to do it again. One `SharedTls` loads them once; the Azure
/// clients, the policy fetcher and the chat notifier build their clients from it (one
/// rustls config: the same roots, crypto provider and TLS session cache). Verification is
/// what reqwest's default does on Linux: WebPKI against the platform's roots, honouring
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`.
#[derive(Clone)]
pub struct SharedTls {
    roots: Arc<rustls::RootCertStore>,
    config: rustls::ClientConfig,
}

impl std::fmt::Debug for SharedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTls").field("roots", &self.roots.len()).finish_non_exhaustive()
    }
}

impl SharedTls {
    /// Loads the platform's CA roots. Fails only when none can be found; roots that do not
    /// parse are skipped with a warning (as reqwest's default does).
    pub fn load() -> Result<Self, AzureError> {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "a platform CA root could not be loaded");
        }
        let mut store = rustls::RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::warn!(ignored, "platform CA roots that do not parse were ignored");
        }
        if store.is_empty() {
            return Err(AzureError::Invalid(
                "TLS: no CA root certificates were found on this system (install ca-certificates or set SSL_CERT_FILE)"
                    .into(),
            ));
        }
        tracing::debug!(roots = added, "loaded the platform CA roots");
        Self::from_roots(Arc::new(store))
    }

    fn from_roots(roots: Arc<rustls::RootCertStore>) -> Result<Self, AzureError> {
        // A provider the process installed wins; otherwise aws-lc-rs, as reqwest's default.
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AzureError::Invalid(format!("TLS: {e}")))?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        // What reqwest offers by default (HTTP/2 is negotiated when the server has it).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { roots, config })
    }

    /// These roots plus the PEM certificates of `pem` (a test cloud profile's CA).
    pub fn with_extra_roots(&self, pem: &[u8]) -> Result<Self, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no PEM certificate in it".into());
        }
        let mut store = (*self.roots).clone();
        for cert in certs {
            store.add(cert).map_err(|e| e.to_string())?;
        }
        Self::from_roots(Arc::new(store)).map_err(|e| e.to_string())
    }

    /// Number of trusted roots.
    pub fn roots(&self) -> usize {
        self.roots.len()
    }

    /// A reqwest client builder that uses these TLS settings.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().tls_backend_preconfigured(self.config.clone())
    }
}

/// Builds the reqwest client for a profile, loading the platform's CA roots for it alone
/// (tools and tests; a server shares one [`SharedTls`]: [`build_client_with`]).
pub fn build_client(profile: &CloudProfile) -> Result<reqwest::Client, AzureError> {
    build_client_with(profile, &SharedTls::load()?)
}

/// Builds the reqwest client for a profile from shared TLS settings (plus the test CA, if
/// the profile names one) and, for test profiles, every profile host resolved to loopback
/// inside the client.
pub fn build_client_with(profile: &CloudProfile, tls: &SharedTls) -> Result<reqwest::Client, AzureError> {
    let tls = match &profile.test.extra_ca_pem {
        None => tls.clone(),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                AzureError::Invalid(format!("cloud profile: cannot read CA file {}: {e}", path.display()))
            })?;
            tls.with_extra_roots(&pem).map_err(|e| {
                AzureError::Invalid(format!("cloud profile: {} is not a PEM certificate: {e}", path.display()))
            })?
        }
    };
    let mut b = tls
        .client_builder()
        .user_agent(concat!("cmkguard/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60));
    if profile.test.resolve_to_loopback {
        b = b.dns_resolver(Arc::new(LoopbackResolver { profile: profile.clone() }));
    }
    b.build().map_err(|e| AzureError::Invalid(format!("HTTP client: {e}")))
}

/// Resolves the profile's hosts to 127.0.0.1 and refuses every other name.
struct LoopbackResolver {
    profile: CloudProfile,
}

impl reqwest::dns::Resolve for LoopbackResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ok = self.profile.owns_host(name.as_str()) || name.as_str() == "localhost";
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if ok {
                let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))));
                Ok(addrs)
            } else {
                Err(format!("{host} is not a host of the test cloud profile").into())
            }
        })
    }
}

/// The HTTP core shared by the ARM, Key Vault and Resource Graph clients.
pub struct AzureHttp {
    client: reqwest::Client,
    allow: Allowlist,
    tokens: Arc<TokenCache>,
    retry: RetryPolicy,
    /// Key Vault challenges by host: later requests send a token straight away.
    challenges: Mutex<HashMap<String, Challenge>>,
}

impl std::fmt::Debug for AzureHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureHttp")
            .field("cloud", &self.allow.profile().name)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// Most bytes read from one answer (a Resource Graph page of 1000 registries fits easily).
const MAX_BODY: usize = 32 * 1024 * 1024;

impl AzureHttp {
    pub fn new(profile: CloudProfile, tokens: Arc<TokenCache>) -> Result<Self, AzureError> {
        let client = build_client(&profile)?;
        Ok(Self::with_client(profile, tokens, client))
    }

    pub fn with_client(profile: CloudProfile, tokens: Arc<TokenCache>, client: reqwest::Client) -> Self {
        Self {
            client,
            allow: Allowlist::new(profile),
            tokens,
            retry: RetryPolicy::default(),
            challenges: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn profile(&self) -> &CloudProfile {
        self.allow.profile()
    }
    pub fn allowlist(&self) -> &Allowlist {
        &self.allow
    }
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Prepares the first Azure call of a fresh process while nothing waits for it: fetches
    /// the ARM token, opens the ARM connection (TCP, TLS; kept in the pool) with one cheap
    /// authenticated read (list subscriptions: every identity may, whatever its roles),
    /// then fetches the Key Vault token. Run it after the server is ready, in the
    /// background. It never fails: what goes wrong is logged at debug, and the real calls
    /// retry it; an event that arrives meanwhile shares the token fetch in flight.
    pub async fn warm_up(&self, budget: &Budget) {
        let started = Instant::now();
        let p = self.profile();
        let mut url = p.arm_endpoint.clone();
        url.set_path("/subscriptions");
        url.set_query(Some("api-version=2022-12-01"));
        match self.send(Call::new("arm.warm_up", Method::GET, url, Auth::Arm).once(), budget).await {
            Ok(reply) => tracing::debug!(
                status = reply.status.as_u16(),
                took_ms = started.elapsed().as_millis() as u64,
                "warm-up: ARM token and connection ready"
            ),
            Err(e) => tracing::debug!(error = %e, "warm-up: ARM call failed; the first event's call will retry it"),
        }
        let vault = p.key_vault_audience.clone();
        match tokio::time::timeout(budget.remaining(), self.tokens.get(&vault)).await {
            Ok(Ok(_)) => {
                tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "warm-up: Key Vault token ready")
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "warm-up: no Key Vault token yet"),
            Err(_) => tracing::debug!("warm-up: Key Vault token not obtained within the warm-up budget"),
        }
    }

    /// Sends `call`, retrying retryable failures within `budget`. Returns any
    /// non-retryable answer (the caller decides what a 404 means); errors otherwise.
    pub async fn send(&self, call: Call<'_>, budget: &Budget) -> Result<Reply, AzureError> {
        let service = self.allow.check(call.operation, &call.url)?;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if budget.is_exhausted() {
                return Err(AzureError::BudgetExhausted {
                    operation: call.operation,
                    budget: budget.total(),
                    attempts: attempt - 1,
                    last: "no time left before this attempt".into(),
                });
            }
            let outcome = self.attempt(&call, service, budget).await;
            let (err, wait) = match outcome {
                Ok(reply) if !is_retryable_status(reply.status.as_u16()) => return Ok(reply),
                Ok(reply) => {
                    let wait = reply.retry_after();
                    (reply.into_error(), wait)
                }
                Err(e) if e.is_retryable() => (e, None),
                Err(e) => return Err(e),
            };
            if !call.retry || attempt >= self.retry.max_attempts {
                return Err(err);
            }
            let wait = wait.unwrap_or_else(|| self.retry.backoff(attempt));
            if wait >= budget.remaining() {
                return Err(AzureError::BudgetExhausted {
                    operation: call.operation,
                    budget: budget.total(),
                    attempts: attempt,
                    last: err.to_string(),
                });
            }
            tracing::debug!(operation = call.operation, attempt, wait_ms = wait.as_millis() as u64, error = %err, "retrying Azure call");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt, including the authentication round trips it needs.
    async fn attempt(&self, call: &Call<'_>, service: Service, budget: &Budget) -> Result<Reply, AzureError> {
        match call.auth {
            Auth::Arm => {
                let audience = self.profile().arm_audience.clone();
                let reply = self.with_token(call, &audience, budget).await?;
                if reply.status == StatusCode::UNAUTHORIZED {
                    // A token Azure no longer accepts: fetch a fresh one once.
                    self.tokens.invalidate(&audience).await;
                    return self.with_token(call, &audience, budget).await;
                }
                Ok(reply)
            }
            Auth::KeyVault => {
                let host = host_key(&call.url);
                let cached = self.challenges.lock().await.get(&host).cloned();
                let reply = match &cached {
                    Some(ch) => self.with_token(call, &ch.resource, budget).await?,
                    None => self.raw(call, None, budget).await?,
                };
                if reply.status != StatusCode::UNAUTHORIZED {
                    return Ok(reply);
                }
                let header = reply.header("www-authenticate").unwrap_or_default().to_owned();
                let Some(challenge) = parse_challenge(&header) else {
                    if cached.is_some() {
                        return Ok(reply);
                    }
                    return Err(AzureError::Challenge {
                        operation: call.operation,
                        message: "401 without a Bearer challenge naming a resource".into(),
                    });
                };
                let challenge = self.verify_challenge(call.operation, service, &challenge)?;
                if let Some(old) = &cached {
                    self.tokens.invalidate(&old.resource).await;
                }
                self.challenges.lock().await.insert(host, challenge.clone());
                self.with_token(call, &challenge.resource, budget).await
            }
        }
    }

    /// A challenge may only ask for this cloud's Key Vault (or Managed HSM) audience (a
    /// port on the resource is tolerated: local stand-ins add theirs): a server must not
    /// choose which token we send it. Returns the challenge with the profile's audience,
    /// which is what the token is then requested for.
    fn verify_challenge(
        &self,
        operation: &'static str,
        service: Service,
        ch: &Challenge,
    ) -> Result<Challenge, AzureError> {
        let p = self.profile();
        let expected = match service {
            Service::ManagedHsm => &p.managed_hsm_audience,
            _ => &p.key_vault_audience,
        };
        let refuse = || AzureError::Challenge {
            operation,
            message: format!("challenge asks for resource {:?}, expected {expected:?}", ch.resource),
        };
        let (Ok(got), Ok(want)) = (Url::parse(&ch.resource), Url::parse(expected)) else {
            return Err(refuse());
        };
        let port_ok = got.port().is_none() || got.port() == want.port() || got.port() == p.port;
        if got.scheme() == want.scheme()
            && got.host_str() == want.host_str()
            && port_ok
            && got.path().trim_end_matches('/') == want.path().trim_end_matches('/')
        {
            Ok(Challenge { resource: expected.trim_end_matches('/').to_owned(), tenant: ch.tenant.clone() })
        } else {
            Err(refuse())
        }
    }

    async fn with_token(&self, call: &Call<'_>, audience: &str, budget: &Budget) -> Result<Reply, AzureError> {
        let remaining = budget.remaining();
        let token = match tokio::time::timeout(remaining, self.tokens.get(audience)).await {
            Ok(t) => t?,
            Err(_) => {
                return Err(AzureError::BudgetExhausted {
                    operation: call.operation,
                    budget: budget.total(),
                    attempts: 0,
                    last: format!("token for {audience} not obtained in time"),
                });
            }
        };
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", token.secret())).map_err(|_| AzureError::Credential {
                audience: audience.to_owned(),
                message: "token is not a valid header value".into(),
                retryable: false,
            })?;
        value.set_sensitive(true);
        self.raw(call, Some(value), budget).await
    }

    async fn raw(
        &self,
        call: &Call<'_>,
        authorization: Option<HeaderValue>,
        budget: &Budget,
    ) -> Result<Reply, AzureError> {
        let host = host_key(&call.url);
        let timeout = self.retry.attempt_timeout.min(budget.remaining());
        if timeout.is_zero() {
            return Err(AzureError::BudgetExhausted {
                operation: call.operation,
                budget: budget.total(),
                attempts: 0,
                last: "no time left".into(),
            });
        }
        let mut req = self
            .client
            .request(call.method.clone(), call.url.clone())
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(a) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        if let Some(body) = call.body {
            req = req.json(body);
        } else if call.method == Method::POST || call.method == Method::PATCH || call.method == Method::PUT {
            req = req.header(reqwest::header::CONTENT_LENGTH, "0");
        }
        let map = |e: reqwest::Error| {
            if e.is_timeout() {
                AzureError::Timeout { operation: call.operation, host: host.clone(), timeout }
            } else {
                AzureError::Transport { operation: call.operation, host: host.clone(), message: error_chain(&e) }
            }
        };
        let mut resp = req.send().await.map_err(map)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(map)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(AzureError::decode(call.operation, format!("answer larger than {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        tracing::trace!(operation = call.operation, %host, status = status.as_u16(), "azure call");
        Ok(Reply { operation: call.operation, status, headers, body: body.into() })
    }
}

/// `host[:port]` of a URL (never the path or query).
pub fn host_key(url: &Url) -> String {
    match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    }
}

/// A reqwest error and its causes, without the URL (which reqwest would print).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    if parts.is_empty() {
        let kind = if e.is_connect() {
            "connect error"
        } else if e.is_body() || e.is_decode() {
            "body error"
        } else {
            "request error"
        };
        parts.push(kind.to_owned());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn challenge_forms() {
        let c = parse_challenge(r#"Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net""#).unwrap();
        assert_eq!(c.resource, "https://vault.azure.net");
        assert_eq!(c.tenant.as_deref(), Some("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        let c = parse_challenge(
            r#"Bearer authorization_uri="https://login.azsim.test/t1/", scope="https://vault.azsim.test/.default""#,
        )
        .unwrap();
        assert_eq!(c.resource, "https://vault.azsim.test");
        assert_eq!(c.tenant.as_deref(), Some("t1"));
        assert!(parse_challenge("Basic realm=x").is_none());
        assert!(parse_challenge("Bearer authorization=\"https://login/t\"").is_none());
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        h.insert("retry-after", HeaderValue::from_static("9"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for a in 1..20 {
            let b = p.backoff(a);
            assert!(b <= p.max_backoff, "{a}: {b:?}");
            assert!(b >= p.base_backoff / 2, "{a}: {b:?}");
        }
        assert!(p.backoff(6) >= Duration::from_secs(4));
    }

    #[test]
    fn error_envelope_is_read() {
        let body = br#"{"error":{"code":"ResourceNotFound","message":"The Resource 'x' was not found."}}"#;
        let e = status_error("arm.get_registry", StatusCode::NOT_FOUND, &HeaderMap::new(), body);
        assert!(e.is_not_found());
        assert!(e.to_string().contains("ResourceNotFound"), "{e}");
        let e = status_error("op", StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"<html>");
        assert!(e.is_retryable());
    }

    struct NoTokens;
    #[async_trait::async_trait]
    impl crate::credential::TokenSource for NoTokens {
        async fn fetch(&self, audience: &str) -> Result<crate::AccessToken, AzureError> {
            Err(AzureError::Credential { audience: audience.into(), message: "none".into(), retryable: false })
        }
        fn describe(&self) -> String {
            "none".into()
        }
    }

    #[test]
    fn challenges_for_foreign_resources_are_refused() {
        let http = AzureHttp::new(CloudProfile::public(), Arc::new(TokenCache::new(Arc::new(NoTokens)))).unwrap();
        let ch = |r: &str| Challenge { resource: r.into(), tenant: Some("t".into()) };
        let ok = http.verify_challenge("op", Service::KeyVault, &ch("https://vault.azure.net/")).unwrap();
        assert_eq!(ok.resource, "https://vault.azure.net");
        assert_eq!(ok.tenant.as_deref(), Some("t"));
        for bad in [
            "https://management.azure.com",
            "https://evil.example",
            "http://vault.azure.net",
            "https://vault.azure.net.evil.com",
            "https://vault.azure.net:8443",
            "not a url",
        ] {
            assert!(http.verify_challenge("op", Service::KeyVault, &ch(bad)).is_err(), "{bad}");
        }
        assert!(http.verify_challenge("op", Service::ManagedHsm, &ch("https://vault.azure.net")).is_err());
        assert!(http.verify_challenge("op", Service::ManagedHsm, &ch("https://managedhsm.azure.net")).is_ok());
    }

    proptest! {
        #[test]
        fn challenge_parser_never_panics(s in ".{0,200}") {
            let _ = parse_challenge(&s);
        }
        #[test]
        fn retry_after_parser_never_panics(s in ".{0,60}") {
            let _ = parse_retry_after(&s);
        }
    }
}

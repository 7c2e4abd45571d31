//! HTTP load generator for `cargo xtask load` and the throughput rows of `cargo xtask bench`:
//! N keep-alive HTTP/1.1 connections on one tokio thread (so it takes at most one core
//! from the server it measures), a fixed duration after a warm-up, every request with
//! distinct event ids so the server's ledger really writes. Reports requests/s, events/s
//! and latency percentiles.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The event id in `examples/invocations/KeyVaultEvents.key-near-expiry.json`, replaced per request.
const FIXTURE_EVENT_ID: &str = "00eccf70-95a7-4e7c-8299-2eb17ee9ad64";
/// The key the fixture's event is about (its subject and object name).
const FIXTURE_KEY_NAME: &str = "newsecret";
/// The invocation every shape is built from (the Functions host's real request shape).
pub const INVOCATION_FIXTURE: &str = "examples/invocations/KeyVaultEvents.key-near-expiry.json";
/// The direct-mode key `bench_serve` is started with.
pub const BENCH_WEBHOOK_KEY: &str = "bench-key-0123456789";

/// What one request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `POST /KeyVaultEvents`: one Functions invocation with one string-encoded event.
    Functions,
    /// `POST /api/events`: an Event Grid array of `n` events (direct webhook mode).
    Direct(usize),
}

impl Shape {
    pub fn events_per_request(self) -> usize {
        match self {
            Shape::Functions => 1,
            Shape::Direct(n) => n,
        }
    }

    pub fn label(self) -> String {
        match self {
            Shape::Functions => "Functions envelope, 1 event/request".into(),
            Shape::Direct(n) => format!("direct /api/events, {n} events/request"),
        }
    }
}

/// A request body cut around its event ids: `parts[0] id parts[1] id … parts[n]`.
#[derive(Debug, Clone)]
pub struct Template {
    path: &'static str,
    parts: Vec<String>,
    key: Option<String>,
}

impl Template {
    /// Builds the body for `shape` from the invocation fixture under `root`.
    pub fn new(root: &Path, shape: Shape) -> anyhow::Result<Self> {
        let file = root.join(INVOCATION_FIXTURE);
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        if !text.contains(FIXTURE_EVENT_ID) {
            bail!("{} no longer carries event id {FIXTURE_EVENT_ID}", file.display());
        }
        match shape {
            Shape::Functions => Ok(Self {
                path: "/KeyVaultEvents",
                parts: text.split(FIXTURE_EVENT_ID).map(str::to_owned).collect(),
                key: None,
            }),
            Shape::Direct(n) => {
                let inv: serde_json::Value = serde_json::from_str(&text)?;
                let event = inv["Data"]["event"].as_str().context("the invocation has no Data.event string")?;
                let event = event.trim();
                if !event.contains(FIXTURE_KEY_NAME) {
                    bail!("the fixture's event is no longer about key {FIXTURE_KEY_NAME:?}");
                }
                // Each event of a batch about its own key (same name length), as a vault with
                // many keys sends them; events about one key would be handled one by one.
                let nth = |i: usize| event.replace(FIXTURE_KEY_NAME, &format!("newsec{:03}", i % 1000));
                let mut parts = Vec::with_capacity(n + 1);
                let mut prev_post = String::from("[");
                for i in 0..n {
                    let e = nth(i);
                    let (pre, post) = e.split_once(FIXTURE_EVENT_ID).context("event id not in Data.event")?;
                    parts.push(format!("{prev_post}{}{pre}", if i > 0 { "," } else { "" }));
                    prev_post = post.to_owned();
                }
                parts.push(format!("{prev_post}]"));
                Ok(Self { path: "/api/events", parts, key: Some(BENCH_WEBHOOK_KEY.to_owned()) })
            }
        }
    }

    /// The body with fresh ids: `run` tells runs apart, `conn` connections, `seq` requests.
    fn body(&self, run: u32, conn: u16, seq: u64) -> Bytes {
        let ids = self.parts.len() - 1;
        let mut out = String::with_capacity(self.parts.iter().map(String::len).sum::<usize>() + 36 * ids);
        for (i, part) in self.parts.iter().enumerate() {
            out.push_str(part);
            if i < ids {
                // Same length as a GUID, so every body has the fixture's size.
                use std::fmt::Write;
                let _ = write!(out, "{run:08x}-{conn:04x}-4{:03x}-8000-{seq:012x}", i & 0xfff);
            }
        }
        Bytes::from(out)
    }

    fn request(&self, host: &str, body: Bytes) -> anyhow::Result<http::Request<Full<Bytes>>> {
        let mut b = http::Request::post(self.path)
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-azure-functions-invocationid", "bench");
        if let Some(k) = &self.key {
            b = b.header("x-cmkguard-key", k);
        }
        Ok(b.body(Full::new(body))?)
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: std::net::SocketAddr,
    pub shape: Shape,
    pub connections: u16,
    pub warmup: Duration,
    pub duration: Duration,
    /// Distinguishes the event ids of runs against one ledger.
    pub run: u32,
}

/// What a run measured (the warm-up excluded).
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub requests: u64,
    pub events: u64,
    /// Non-2xx answers and failed requests (counted, not timed).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Events answered 200 whose policy failed (answered fail-safe, e.g. past its deadline).
    pub degraded: u64,
    pub elapsed: Duration,
    /// Sorted request latencies in microseconds.
    latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn req_per_s(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
    /// Latency percentile (0.0–1.0) in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 * p) as usize).min(self.latencies_us.len() - 1);
        f64::from(self.latencies_us[i]) / 1000.0
    }
    pub fn summary(&self) -> String {
        format!(
            "{} requests in {:.1} s: {:.0} req/s, {:.0} events/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} policy failures; {} errors{}",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.req_per_s(),
            self.events_per_s(),
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(1.0),
            self.degraded,
            self.errors,
            self.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        )
    }
}

/// What the act stage records for an event whose policy failed.
const POLICY_FAILED: &[u8] = b"policy failed: no remediation";

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

#[derive(Default)]
struct ConnStats {
    requests: u64,
    degraded: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

/// Sends one request and returns the status and body (a probe before a run).
pub fn probe(addr: std::net::SocketAddr, template: &Template) -> anyhow::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut sender = connect(addr).await?;
        let req = template.request(&addr.to_string(), template.body(0xffff_fffe, 0, 0))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Runs the load on a single-threaded runtime and returns what it measured.
pub fn run(spec: &LoadSpec, template: &Template) -> anyhow::Result<LoadResult> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let start = Instant::now();
        let measure_from = start + spec.warmup;
        let end = measure_from + spec.duration;
        let mut tasks = Vec::new();
        for conn in 0..spec.connections {
            let template = template.clone();
            let spec = spec.clone();
            tasks.push(tokio::spawn(async move {
                let mut stats = ConnStats::default();
                let mut sender = connect(spec.addr).await?;
                let host = spec.addr.to_string();
                let mut seq = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    seq += 1;
                    let req = template.request(&host, template.body(spec.run, conn, seq))?;
                    let sent = Instant::now();
                    let result = async {
                        sender.ready().await?;
                        let resp = sender.send_request(req).await?;
                        let status = resp.status();
                        let body = resp.into_body().collect().await?.to_bytes();
                        anyhow::Ok((status, body))
                    }
                    .await;
                    let took = sent.elapsed();
                    let counted = sent >= measure_from && Instant::now() <= end;
                    match result {
                        Ok((status, body)) if status.is_success() => {
                            if counted {
                                stats.requests += 1;
                                stats.degraded += count(&body, POLICY_FAILED);
                                stats.latencies_us.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                            }
                        }
                        Ok((status, body)) => {
                            stats.errors += 1;
                            stats.first_error.get_or_insert_with(|| {
                                format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]))
                            });
                        }
                        Err(e) => {
                            stats.errors += 1;
                            stats.first_error.get_or_insert_with(|| format!("{e:#}"));
                            // The connection may be gone: open a new one.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            sender = connect(spec.addr).await?;
                        }
                    }
                }
                anyhow::Ok(stats)
            }));
        }
        let mut total = ConnStats::default();
        for t in tasks {
            let s = t.await??;
            total.requests += s.requests;
            total.errors += s.errors;
            total.degraded += s.degraded;
            if total.first_error.is_none() {
                total.first_error = s.first_error;
            }
            total.latencies_us.extend(s.latencies_us);
        }
        total.latencies_us.sort_unstable();
        let elapsed = Instant::now().saturating_duration_since(measure_from).min(spec.duration);
        Ok(LoadResult {
            requests: total.requests,
            events: total.requests * spec.shape.events_per_request() as u64,
            errors: total.errors,
            first_error: total.first_error,
            degraded: total.degraded,
            elapsed: elapsed.max(Duration::from_millis(1)),
            latencies_us: total.latencies_us,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        crate::repo_root()
    }

    #[test]
    fn functions_bodies_are_invocations_with_distinct_ids() {
        let t = Template::new(&root(), Shape::Functions).unwrap();
        let a = t.body(1, 2, 3);
        let b = t.body(1, 2, 4);
        assert_ne!(a, b);
        let inv: serde_json::Value = serde_json::from_slice(&a).unwrap();
        let event: serde_json::Value = serde_json::from_str(inv["Data"]["event"].as_str().unwrap()).unwrap();
        assert_eq!(event["id"], "00000001-0002-4000-8000-000000000003");
        assert_eq!(event["eventType"], "Microsoft.KeyVault.KeyNearExpiry");
    }

    #[test]
    fn direct_batches_hold_n_distinct_events() {
        let t = Template::new(&root(), Shape::Direct(100)).unwrap();
        let events: Vec<serde_json::Value> = serde_json::from_slice(&t.body(7, 1, 9)).unwrap();
        assert_eq!(events.len(), 100);
        let ids: std::collections::HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 100);
        assert!(events.iter().all(|e| e["eventType"] == "Microsoft.KeyVault.KeyNearExpiry"));
        let subjects: std::collections::HashSet<&str> = events.iter().map(|e| e["subject"].as_str().unwrap()).collect();
        assert_eq!(subjects.len(), 100, "one key per event");
    }
}

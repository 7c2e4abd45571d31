//! Shared helpers for the handler's integration tests: the Azure fixtures, events derived
//! from them, and an app whose pipeline records what reached it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cmkguard::AppState;
use cmkguard::config::Config;
use cmkguard::pipeline::{Act, ActionOutcome, Decided, EventOnly, NoPolicy, Pipeline, StageError};
use cmkguard_model::{Event, PolicyInput};
use serde_json::Value;

pub const WEBHOOK_KEY: &str = "test-key-0123456789abcdef";

/// `../shared/azure-fixtures` beside the repository (override with CMKGUARD_FIXTURES).
pub fn fixtures_dir() -> PathBuf {
    if let Ok(p) = std::env::var("CMKGUARD_FIXTURES") {
        return PathBuf::from(p);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/azure-fixtures");
    assert!(dir.is_dir(), "Azure fixtures not found at {} (set CMKGUARD_FIXTURES)", dir.display());
    dir
}

pub fn fixture(rel: &str) -> Value {
    let p = fixtures_dir().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Microsoft publishes no `Key*` event samples; the `Secret*` samples share their data
/// shape (FACTS.md §3). This derives a key event from a secret event by changing only the
/// event type, the object type and the object path (`/secrets/` → `/keys/`).
pub fn key_event_from_secret_sample(mut ev: Value, key_event_type: &str) -> Value {
    let type_field = if ev.get("specversion").is_some() { "type" } else { "eventType" };
    ev[type_field] = Value::String(key_event_type.to_owned());
    let data = ev.get_mut("data").and_then(Value::as_object_mut).expect("sample has data");
    for (k, v) in data.iter_mut() {
        match k.trim().to_ascii_lowercase().as_str() {
            "id" => *v = Value::String(v.as_str().unwrap().replace("/secrets/", "/keys/")),
            "objecttype" => *v = Value::String("Key".into()),
            _ => {}
        }
    }
    ev
}

pub const SAMPLE_REGISTRY: &str = "/subscriptions/{subscription-id}/resourcegroups/{resource-group}/providers/Microsoft.ContainerRegistry/registries/sampleregistry";

/// The published `ResourceWriteSuccess` samples are about a storage account; this makes the
/// same event about a container registry (operation, action, resource uri, subject).
pub fn registry_write_from_sample(mut ev: Value) -> Value {
    ev["subject"] = Value::String(SAMPLE_REGISTRY.into());
    let data = &mut ev["data"];
    data["operationName"] = Value::String("Microsoft.ContainerRegistry/registries/write".into());
    data["resourceProvider"] = Value::String("Microsoft.ContainerRegistry".into());
    data["resourceUri"] = Value::String(SAMPLE_REGISTRY.into());
    data["authorization"]["action"] = Value::String("Microsoft.ContainerRegistry/registries/write".into());
    data["authorization"]["scope"] = Value::String(SAMPLE_REGISTRY.into());
    ev
}

/// The single event of a fixture that is either an event or a one-element array.
pub fn single(v: Value) -> Value {
    match v {
        Value::Array(mut a) => {
            assert_eq!(a.len(), 1);
            a.remove(0)
        }
        other => other,
    }
}

/// Records every event that reaches the act stage.
#[derive(Default, Clone)]
pub struct Recorder(pub Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

#[async_trait]
impl Act for Recorder {
    async fn act(&self, event: &Event, _: &PolicyInput, _: &Decided) -> Result<Vec<ActionOutcome>, StageError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(Vec::new())
    }
}

/// An act stage that fails every event with the given error.
pub struct Failing(pub StageError);

#[async_trait]
impl Act for Failing {
    async fn act(&self, _: &Event, _: &PolicyInput, _: &Decided) -> Result<Vec<ActionOutcome>, StageError> {
        Err(self.0.clone())
    }
}

/// An act stage that panics.
pub struct Panicking;

#[async_trait]
impl Act for Panicking {
    async fn act(&self, _: &Event, _: &PolicyInput, _: &Decided) -> Result<Vec<ActionOutcome>, StageError> {
        panic!("boom: secret-token-in-panic");
    }
}

pub fn config(extra: &[&str]) -> Config {
    let mut args = vec!["--webhook-key", WEBHOOK_KEY, "--max-body-bytes", "65536"];
    args.extend_from_slice(extra);
    Config::from_args(args).expect("test config")
}

pub fn app_with_act(act: Arc<dyn Act>) -> axum::Router {
    let pipeline =
        Pipeline { enrich: Arc::new(EventOnly), decide: Arc::new(NoPolicy), act, clock: Arc::new(chrono::Utc::now) };
    cmkguard::api::router(AppState::with_pipeline(config(&[]), pipeline))
}

pub fn app() -> (axum::Router, Recorder) {
    let rec = Recorder::default();
    (app_with_act(Arc::new(rec.clone())), rec)
}

/// Sends a request through the router in-process and returns status and JSON body.
pub async fn send(
    app: &axum::Router,
    req: http::Request<axum::body::Body>,
) -> (http::StatusCode, http::HeaderMap, Value) {
    use tower::ServiceExt;
    let resp = app.clone().oneshot(req).await.expect("router answers");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, headers, body)
}

pub fn functions_request(function: &str, body: impl Into<axum::body::Body>) -> http::Request<axum::body::Body> {
    http::Request::post(format!("/{function}"))
        .header("content-type", "application/json")
        .header("x-azure-functions-invocationid", "11111111-2222-3333-4444-555555555555")
        .body(body.into())
        .unwrap()
}

pub fn invocation(trigger: Value) -> String {
    serde_json::json!({"Data": {"event": trigger}, "Metadata": {"sys": {"MethodName": "KeyVaultEvents"}}}).to_string()
}

pub fn direct_request(content_type: &str, body: impl Into<axum::body::Body>) -> http::Request<axum::body::Body> {
    http::Request::post("/api/events")
        .header("content-type", content_type)
        .header("x-cmkguard-key", WEBHOOK_KEY)
        .body(body.into())
        .unwrap()
}

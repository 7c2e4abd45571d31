//! Shared helpers for azsim's integration tests: start azsim, a client that trusts its
//! CA and resolves its host names to loopback, tokens, and fixture shape comparison.

#![allow(dead_code)]

use std::path::PathBuf;

use azsim::{Azsim, Options, Running, Scenario};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    std::env::var_os("AZURE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/azure-fixtures"))
}

pub fn fixture(rel: &str) -> Value {
    let p = fixtures().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

pub fn demo() -> Scenario {
    Scenario::from_json(include_str!("../../scenarios/demo.json")).expect("demo scenario")
}

pub async fn start(options: Options) -> (Running, reqwest::Client) {
    start_with(demo(), options).await
}

pub async fn start_with(scenario: Scenario, options: Options) -> (Running, reqwest::Client) {
    let sim = Azsim::start(scenario, options).await.expect("azsim starts");
    let client = client_for(&sim);
    (sim, client)
}

pub fn client_for(sim: &Running) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).expect("CA PEM");
    let mut b = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(std::time::Duration::from_secs(20))
        .redirect(reqwest::redirect::Policy::none());
    for h in sim.host_names() {
        b = b.resolve(&h, sim.https_addr());
    }
    b.build().expect("client")
}

/// A token for `resource` from azsim's App Service-style identity endpoint.
pub async fn token(sim: &Running, c: &reqwest::Client, resource: &str) -> String {
    let r = c
        .get(sim.identity_endpoint())
        .query(&[("resource", resource), ("api-version", "2019-08-01")])
        .header("X-IDENTITY-HEADER", sim.identity_header())
        .send()
        .await
        .expect("identity endpoint");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

pub async fn arm_token(sim: &Running, c: &reqwest::Client) -> String {
    token(sim, c, azsim::ARM_AUDIENCE).await
}

pub async fn kv_token(sim: &Running, c: &reqwest::Client) -> String {
    token(sim, c, azsim::VAULT_AUDIENCE).await
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Compare shapes: every key of `fixture` is in `ours` with the same JSON type (recursively);
/// keys only `ours` has must be listed in `extra_ok`. Objects under a key in `dynamic` are
/// maps with data-dependent keys: their values are compared against the fixture's first value.
pub fn assert_same_shape(fixture: &Value, ours: &Value, extra_ok: &[&str], dynamic: &[&str]) {
    let mut errs = Vec::new();
    walk(fixture, ours, "$", extra_ok, dynamic, &mut errs);
    assert!(errs.is_empty(), "shape differs from fixture:\n{}\nours: {ours:#}", errs.join("\n"));
}

fn walk(f: &Value, o: &Value, path: &str, extra_ok: &[&str], dynamic: &[&str], errs: &mut Vec<String>) {
    if kind(f) != kind(o) {
        errs.push(format!("{path}: fixture has {}, azsim has {}", kind(f), kind(o)));
        return;
    }
    match (f, o) {
        (Value::Object(fm), Value::Object(om)) => {
            let last = path.rsplit('.').next().unwrap_or("");
            if dynamic.contains(&last) {
                if let (Some(fv), Some(ov)) = (fm.values().next(), om.values().next()) {
                    walk(fv, ov, &format!("{path}.*"), extra_ok, dynamic, errs);
                }
                return;
            }
            for (k, fv) in fm {
                match om.get(k) {
                    Some(ov) => walk(fv, ov, &format!("{path}.{k}"), extra_ok, dynamic, errs),
                    None => errs.push(format!("{path}.{k}: missing in azsim's answer")),
                }
            }
            for k in om.keys() {
                if !fm.contains_key(k) && !extra_ok.contains(&k.as_str()) {
                    errs.push(format!("{path}.{k}: azsim has a key the fixture lacks"));
                }
            }
        }
        (Value::Array(fa), Value::Array(oa)) => {
            if let (Some(fv), Some(ov)) = (fa.first(), oa.first()) {
                walk(fv, ov, &format!("{path}[0]"), extra_ok, dynamic, errs);
            }
        }
        _ => {}
    }
}

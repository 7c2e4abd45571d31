//! azsim's control API under `/_azsim/` on the management host (no token needed): fault
//! injection, call counts, clock, out-of-band key changes and events, for tests that run
//! azsim as a separate process. Listed in README.md.

use std::time::Duration;

use serde_json::{Value, json};

use crate::faults::{FaultKind, Route};
use crate::http::{Ctx, Reply, arm_error, json_resp};
use crate::scenario::TimeSpec;
use crate::world::World;

fn bad(msg: &str) -> Reply {
    arm_error(400, "InvalidControlRequest", msg).into()
}

fn ok(v: Value) -> Reply {
    json_resp(200, &v).into()
}

fn route_field(body: &Value) -> Result<Route, Reply> {
    body["route"].as_str().unwrap_or("any").parse::<Route>().map_err(|e| bad(&e))
}

/// Apply a time spec (`now+10d` relative to scenario time) to Unix seconds.
fn time_field(w: &World, v: &Value, name: &str) -> Result<Option<Option<i64>>, Reply> {
    match v.get(name) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => Ok(Some(n.as_i64())),
        Some(Value::String(s)) => {
            TimeSpec::parse(s).map(|t| Some(Some(t.resolve(w.now()).timestamp()))).map_err(|e| bad(&e))
        }
        Some(_) => Err(bad(&format!("{name} must be Unix seconds, RFC 3339 or now±N[dhms]"))),
    }
}

pub fn handle(w: &mut World, ctx: &Ctx) -> Reply {
    let segs = ctx.segs();
    let body = if ctx.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&ctx.body) {
            Ok(b) => b,
            Err(e) => return bad(&format!("body is not JSON: {e}")),
        }
    };
    let m = ctx.method.as_str();
    match (m, &segs[1..]) {
        ("GET", ["health"]) => ok(json!({"status": "ok"})),
        ("GET", ["calls"]) => {
            let counts: serde_json::Map<String, Value> =
                w.call_counts.iter().map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect();
            ok(json!({"counts": counts, "log": w.calls}))
        }
        ("GET", ["writes"]) => ok(json!({"writes": w.writes})),
        ("POST", ["faults"]) => {
            let route = match route_field(&body) {
                Ok(r) => r,
                Err(r) => return r,
            };
            let count = body["count"].as_u64().unwrap_or(1).min(u32::MAX as u64) as u32;
            let kind = if body["drop"].as_bool() == Some(true) {
                FaultKind::Drop
            } else {
                match body["status"].as_u64() {
                    Some(s) if (400..600).contains(&s) => {
                        FaultKind::Status { status: s as u16, retry_after: body["retryAfter"].as_u64() }
                    }
                    _ => return bad("status must be an HTTP error status (400-599), or set drop: true"),
                }
            };
            w.faults.add(route, count, kind);
            ok(json!({"route": route.as_str(), "count": count}))
        }
        ("DELETE", ["faults"]) => {
            w.faults.clear();
            ok(json!({"cleared": true}))
        }
        ("POST", ["latency"]) => {
            let route = match route_field(&body) {
                Ok(r) => r,
                Err(r) => return r,
            };
            let ms = body["ms"].as_u64().unwrap_or(0).min(600_000);
            w.faults.set_latency(route, Duration::from_millis(ms));
            ok(json!({"route": route.as_str(), "ms": ms}))
        }
        ("POST", ["tokens", "expire"]) => {
            w.expire_tokens();
            ok(json!({"expired": w.tokens.len()}))
        }
        ("GET", ["clock"]) => ok(json!({"now": crate::world::rfc3339(w.now())})),
        ("POST", ["clock"]) => {
            if let Some(s) = body["now"].as_str() {
                match TimeSpec::parse(s) {
                    Ok(t) => {
                        let t = t.resolve(w.now());
                        w.clock.set(t);
                    }
                    Err(e) => return bad(&e),
                }
            }
            if let Some(secs) = body["advanceSeconds"].as_i64() {
                let t = w.now() + chrono::Duration::seconds(secs);
                w.clock.set(t);
            }
            ok(json!({"now": crate::world::rfc3339(w.now())}))
        }
        ("POST", ["keys", vault, key, "rotate"]) => {
            match w.rotate_key(&vault.to_ascii_lowercase(), &key.to_ascii_lowercase()) {
                Some(v) => ok(json!({"version": v})),
                None => arm_error(404, "KeyNotFound", &format!("no key {vault}/{key}")).into(),
            }
        }
        ("PATCH", ["keys", vault, key, version]) => {
            let exp = match time_field(w, &body, "exp") {
                Ok(x) => x,
                Err(r) => return r,
            };
            let nbf = match time_field(w, &body, "nbf") {
                Ok(x) => x,
                Err(r) => return r,
            };
            let Some(k) =
                w.vaults.get_mut(&vault.to_ascii_lowercase()).and_then(|v| v.keys.get_mut(&key.to_ascii_lowercase()))
            else {
                return arm_error(404, "KeyNotFound", &format!("no key {vault}/{key}")).into();
            };
            let v = if *version == "@latest" {
                k.versions.last_mut()
            } else {
                k.versions.iter_mut().find(|v| v.id.eq_ignore_ascii_case(version))
            };
            let Some(v) = v else {
                return arm_error(404, "KeyNotFound", &format!("no version {version} of {vault}/{key}")).into();
            };
            if let Some(e) = body["enabled"].as_bool() {
                v.enabled = e;
            }
            if let Some(e) = exp {
                v.exp = e;
            }
            if let Some(n) = nbf {
                v.nbf = n;
            }
            ok(json!({"version": v.id, "enabled": v.enabled, "exp": v.exp, "nbf": v.nbf}))
        }
        ("POST", ["events", "key"]) => {
            let (Some(vault), Some(key)) = (body["vault"].as_str(), body["key"].as_str()) else {
                return bad("vault and key are required");
            };
            let ty = body["eventType"].as_str().unwrap_or("KeyNearExpiry");
            let full = if ty.starts_with("Microsoft.") { ty.to_owned() } else { format!("Microsoft.KeyVault.{ty}") };
            if ![
                "Microsoft.KeyVault.KeyNearExpiry",
                "Microsoft.KeyVault.KeyExpired",
                "Microsoft.KeyVault.KeyNewVersionCreated",
            ]
            .contains(&full.as_str())
            {
                return bad("eventType must be KeyNearExpiry, KeyExpired or KeyNewVersionCreated");
            }
            let version = match body["version"].as_str() {
                Some(v) => v.to_owned(),
                None => match w
                    .vaults
                    .get(&vault.to_ascii_lowercase())
                    .and_then(|v| v.keys.get(&key.to_ascii_lowercase()))
                    .and_then(|k| k.versions.last())
                {
                    Some(v) => v.id.clone(),
                    None => return arm_error(404, "KeyNotFound", &format!("no key {vault}/{key}")).into(),
                },
            };
            let before = w.events.len();
            w.push_key_event(&full, vault, key, &version);
            ok(json!({"emitted": w.events.len() - before}))
        }
        ("GET", ["events"]) => ok(json!({"events": w.events})),
        ("POST", ["lro", "fail-next"]) => {
            let code = body["code"].as_str().unwrap_or("InternalServerError").to_owned();
            let message = body["message"].as_str().unwrap_or("The operation failed (azsim fault).").to_owned();
            w.lro_fail_next = Some((code, message));
            ok(json!({"armed": true}))
        }
        _ => arm_error(404, "NotFound", &format!("no control call {m} {}", ctx.path)).into(),
    }
}

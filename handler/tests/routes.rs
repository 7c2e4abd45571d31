//! Router behaviour in-process (`oneshot`): a table of bad inputs with the status and
//! message each must get, authentication, handshakes, error classes, panics.

mod common;

use std::sync::Arc;

use axum::body::Body;
use cmkguard::pipeline::StageError;
use common::*;
use http::{Request, StatusCode};
use serde_json::{Value, json};

fn key_event() -> Value {
    key_event_from_secret_sample(
        fixture("eventgrid/keyvault.SecretNewVersionCreated.eventgrid.json"),
        "Microsoft.KeyVault.KeyNearExpiry",
    )
}

fn with(mut ev: Value, path: &[&str], v: Value) -> Value {
    let mut cur = &mut ev;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = v;
    ev
}

fn without(mut ev: Value, path: &[&str]) -> Value {
    let mut cur = &mut ev;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur.as_object_mut().unwrap().remove(path[path.len() - 1]);
    ev
}

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// Malformed *events* inside a well-formed invocation: on the Functions route they are
/// acknowledged (200, rejected in ReturnValue); in direct mode they get a 400. Each case:
/// name, the event value (or raw trigger), the message fragment both answers must contain.
fn bad_events() -> Vec<(&'static str, Value, &'static str)> {
    let rw = registry_write_from_sample(fixture("eventgrid/resources.ResourceWriteSuccess.eventgrid.json"));
    vec![
        ("missing data", without(key_event(), &["data"]), "data is missing"),
        ("data not an object", with(key_event(), &["data"], json!("text")), "data must be an object"),
        ("missing data.Id", without(key_event(), &["data", "Id"]), "data.Id is missing"),
        ("Id not a key URL", with(key_event(), &["data", "Id"], json!("https://evil.example/secrets/x")), "data.Id"),
        (
            "Id over http",
            with(key_event(), &["data", "Id"], json!("http://sample-kv.vault.azure.net/keys/k/v")),
            "data.Id",
        ),
        ("ObjectType Secret on a key event", with(key_event(), &["data", "ObjectType"], json!("Secret")), "ObjectType"),
        ("Version mismatch", with(key_event(), &["data", "Version"], json!("other")), "does not match"),
        ("EXP not a number", with(key_event(), &["data", "EXP"], json!("soon")), "data.EXP"),
        ("EXP wrong type", with(key_event(), &["data", "EXP"], json!([1])), "data.EXP"),
        ("NBF out of range", with(key_event(), &["data", "NBF"], json!(1e300)), "data.NBF"),
        ("id not a string", with(key_event(), &["id"], json!(42)), "id must be a string"),
        ("missing id", without(key_event(), &["id"]), "id is missing"),
        ("missing eventTime", without(key_event(), &["eventTime"]), "eventTime is missing"),
        ("bad eventTime", with(key_event(), &["eventTime"], json!("yesterday")), "eventTime"),
        ("eventType not a string", with(key_event(), &["eventType"], json!({})), "eventType must be a string"),
        ("neither schema", json!({"hello": "world"}), "neither an Event Grid event"),
        ("event is a number", json!([42]), "must be a JSON object"),
        ("empty batch", json!([]), "empty array"),
        (
            "invalid registry resource id",
            with(rw.clone(), &["data", "resourceUri"], json!("/subscriptions/s/resourceGroups")),
            "resourceUri",
        ),
        (
            "registry id of another type",
            with(
                rw.clone(),
                &["data", "resourceUri"],
                json!("/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/x"),
            ),
            "Microsoft.Storage/storageAccounts",
        ),
        ("operationName wrong type", with(rw, &["data", "operationName"], json!(7)), "operationName must be a string"),
        (
            "CloudEvent without source",
            json!({"specversion": "1.0", "id": "x", "type": "Microsoft.KeyVault.KeyExpired"}),
            "not a valid CloudEvent",
        ),
        (
            "CloudEvent bad specversion",
            json!({"specversion": "0.1", "id": "x", "source": "/s", "type": "t"}),
            "not a valid CloudEvent",
        ),
        (
            "validation without code",
            json!({"id": "v", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "eventTime": "2024-01-01T00:00:00Z", "data": {}}),
            "validationCode",
        ),
    ]
}

#[tokio::test]
async fn bad_events_are_acknowledged_on_functions_routes_and_refused_in_direct_mode() {
    let (app, rec) = app();
    let cases = bad_events();
    assert!(cases.len() >= 20);
    for (name, ev, needle) in cases {
        // Functions route: 200, rejected, never redelivered.
        let (status, _, body) = send(&app, functions_request("RegistryEvents", invocation(ev.clone()))).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["ReturnValue"]["status"], "rejected", "{name}: {body}");
        let msg = body["ReturnValue"]["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{name}: {msg:?} should mention {needle:?}");
        assert!(body["Logs"][0].as_str().unwrap().contains(needle), "{name}: {body}");
        // Direct mode: 400 with a JSON error.
        let (status, _, body) = send(&app, direct_request("application/json", ev.to_string())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{name} (direct): {msg:?} should mention {needle:?}");
        assert!(body["error"]["code"].is_string(), "{name}");
        assert!(rec.take().is_empty(), "{name}: nothing may reach the pipeline");
    }
}

/// Requests refused before any event is looked at, with the status each must get.
#[tokio::test]
async fn bad_requests_table() {
    let (app, rec) = app();
    let big = "x".repeat(70_000);
    let fr = |body: String| functions_request("KeyVaultEvents", body);
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        ("functions: empty body", fr(String::new()), StatusCode::BAD_REQUEST, "empty"),
        ("functions: not JSON", fr("not json".into()), StatusCode::BAD_REQUEST, "not valid JSON"),
        ("functions: a JSON array", fr("[]".into()), StatusCode::BAD_REQUEST, "must be a JSON object"),
        ("functions: no Data", fr(r#"{"Metadata":{}}"#.into()), StatusCode::BAD_REQUEST, "no \"Data\""),
        (
            "functions: Data not an object",
            fr(r#"{"Data":"x"}"#.into()),
            StatusCode::BAD_REQUEST,
            "\"Data\" must be an object",
        ),
        ("functions: deep nesting", fr(deep(5000)), StatusCode::BAD_REQUEST, "nested too deeply"),
        ("functions: oversized", fr(big.clone()), StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit"),
        (
            "functions: unknown function",
            functions_request("DeleteEverything", "{}"),
            StatusCode::NOT_FOUND,
            "no function named",
        ),
        (
            "functions: invalid UTF-8",
            functions_request("KeyVaultEvents", vec![b'{', 0xff, 0xfe, b'}']),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        ("direct: empty body", direct_request("application/json", ""), StatusCode::BAD_REQUEST, "empty"),
        ("direct: not JSON", direct_request("application/json", "<xml/>"), StatusCode::BAD_REQUEST, "not valid JSON"),
        (
            "direct: wrong content type",
            direct_request("text/plain", "[]"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not accepted",
        ),
        (
            "direct: batch not an array",
            direct_request("application/cloudevents-batch+json", "{}"),
            StatusCode::BAD_REQUEST,
            "must be a JSON array",
        ),
        (
            "direct: deep nesting",
            direct_request("application/json", deep(5000)),
            StatusCode::BAD_REQUEST,
            "nested too deeply",
        ),
        (
            "direct: oversized",
            direct_request("application/json", big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than the limit",
        ),
        (
            "direct: a JSON string",
            direct_request("application/json", "\"hi\""),
            StatusCode::BAD_REQUEST,
            "found a string",
        ),
        (
            "direct: missing key",
            Request::post("/api/events").header("content-type", "application/json").body(Body::from("[]")).unwrap(),
            StatusCode::UNAUTHORIZED,
            "missing key",
        ),
        (
            "direct: wrong key",
            Request::post("/api/events")
                .header("x-cmkguard-key", "wrong-key-wrong-key")
                .body(Body::from("[]"))
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "wrong key",
        ),
        (
            "direct: wrong key in query",
            Request::post("/api/events?code=nope").body(Body::from("[]")).unwrap(),
            StatusCode::UNAUTHORIZED,
            "wrong key",
        ),
        (
            "direct: validation mixed into a batch",
            direct_request(
                "application/json",
                json!([
                    single(fixture("eventgrid/eventgrid.SubscriptionValidationEvent.docs-array.json")),
                    key_event()
                ])
                .to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "must come alone",
        ),
        (
            "GET on an event route",
            Request::get("/KeyVaultEvents").body(Body::empty()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "",
        ),
        ("unknown path", Request::post("/a/b/c").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND, "no such route"),
    ];
    assert!(cases.len() >= 20);
    for (name, req, want, needle) in cases {
        let (status, _, body) = send(&app, req).await;
        assert_eq!(status, want, "{name}: {body}");
        if !needle.is_empty() {
            let msg = body["error"]["message"].as_str().unwrap_or_default();
            assert!(msg.contains(needle), "{name}: {msg:?} should mention {needle:?}");
        }
    }
    assert!(rec.take().is_empty());
}

#[tokio::test]
async fn key_in_query_parameter_is_accepted() {
    let (app, rec) = app();
    let req = Request::post(format!("/api/events?code={WEBHOOK_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(json!([key_event()]).to_string()))
        .unwrap();
    let (status, _, body) = send(&app, req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(rec.take().len(), 1);
}

#[tokio::test]
async fn direct_mode_is_off_without_a_key() {
    let pipeline = cmkguard::pipeline::Pipeline::logging_only();
    let cfg = cmkguard::config::Config::from_args(["--port", "9"]).unwrap();
    let app = cmkguard::api::router(cmkguard::AppState::with_pipeline(cfg, pipeline));
    let (status, _, body) = send(&app, direct_request("application/json", "[]")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["message"].as_str().unwrap().contains("CMKGUARD_WEBHOOK_KEY"));
}

#[tokio::test]
async fn cloudevents_options_handshake() {
    let (app, _) = app();
    let req = Request::options(format!("/api/events?code={WEBHOOK_KEY}"))
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&app, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["webhook-allowed-origin"], "eventemitter.example.com");
    assert!(headers["allow"].to_str().unwrap().contains("POST"));
    // Without the origin header, or without the key, it is refused.
    let (status, _, _) =
        send(&app, Request::options(format!("/api/events?code={WEBHOOK_KEY}")).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) =
        send(&app, Request::options("/api/events").header("WebHook-Request-Origin", "x").body(Body::empty()).unwrap())
            .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn readiness_and_health() {
    let (app, _) = app();
    let (status, _, body) = send(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200);
    assert!(body.as_str().unwrap().contains("ready"));
    send(&app, functions_request("KeyVaultEvents", invocation(key_event()))).await;
    let (status, _, body) = send(&app, Request::get("/api/health").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["mode"], "monitor");
    assert_eq!(body["stats"]["events"], 1);
}

#[tokio::test]
async fn retryable_failures_ask_for_redelivery_terminal_ones_do_not() {
    let retry = app_with_act(Arc::new(Failing(StageError::retryable("enrich", "ARM answered 429"))));
    let (status, _, body) = send(&retry, functions_request("KeyVaultEvents", invocation(key_event()))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "retryable");
    let (status, _, _) = send(&retry, direct_request("application/json", json!([key_event()]).to_string())).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let terminal = app_with_act(Arc::new(Failing(StageError::terminal("act", "preflight failed: key disabled"))));
    let (status, _, body) = send(&terminal, functions_request("KeyVaultEvents", invocation(key_event()))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ReturnValue"]["failed"][0]["error"]["message"], "preflight failed: key disabled");
    let (status, _, body) = send(&terminal, direct_request("application/json", json!([key_event()]).to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["failed"], 1);
}

#[tokio::test]
async fn a_panic_is_a_bare_500() {
    let app = app_with_act(Arc::new(Panicking));
    let (status, _, body) = send(&app, functions_request("KeyVaultEvents", invocation(key_event()))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, json!({"error": {"code": "internal", "message": "internal error"}}));
    // The server keeps serving.
    let (status, _, _) = send(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sweep_function_answers() {
    let (app, _) = app();
    let body = json!({"Data": {"timer": {"Schedule": {"AdjustForDST": true}, "IsPastDue": false}}, "Metadata": {}})
        .to_string();
    let (status, _, resp) = send(&app, functions_request("Sweep", body)).await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp["Logs"].is_array());
}

#[tokio::test]
async fn event_values_that_are_not_json_are_acknowledged_with_a_reason() {
    let (app, rec) = app();
    for (name, trigger, needle) in [
        ("string that is not JSON", json!("{not json"), "string that is not valid JSON"),
        ("plain word", json!("hello"), "string that is not valid JSON"),
        ("a number", json!(5), "found a number"),
        ("string of a number", json!("5"), "found a number"),
        ("null", Value::Null, "found null"),
    ] {
        let (status, _, body) = send(&app, functions_request("KeyVaultEvents", invocation(trigger))).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        let msg = body["ReturnValue"]["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{name}: {msg:?} should mention {needle:?}");
    }
    assert!(rec.take().is_empty());
}

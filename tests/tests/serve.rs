//! The real `cmkguard serve` process over TCP: the Functions custom-handler protocol as the
//! host speaks it, direct webhook mode, JSON logs carrying the invocation id, and a
//! graceful exit on SIGTERM.

use cmkguard_e2e::{Server, fixture, key_near_expiry_event};
use serde_json::{Value, json};

const KEY: &str = "e2e-webhook-key-0123456789";

#[tokio::test]
async fn functions_host_protocol_end_to_end() {
    let mut server = Server::start(&["--log-format", "json"], &[("CMKGUARD_WEBHOOK_KEY", KEY)]);
    let client = reqwest::Client::new();

    // Readiness, as the host polls it.
    let ready = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // An invocation the way the host sends it: the event as a JSON string in Data. The
    // handler enriches from Azure, which this machine cannot reach (no identity, no
    // network): that is a failure a redelivery can fix, so the invocation fails with a 500
    // and Event Grid will send the event again — it is never dropped.
    let body = json!({
        "Data": {"event": key_near_expiry_event().to_string()},
        "Metadata": {"sys": {"MethodName": "KeyVaultEvents", "UtcNow": "2026-11-23T10:00:00Z"}}
    });
    let resp = client
        .post(server.url("/KeyVaultEvents"))
        .header("X-Azure-Functions-InvocationId", "e2e-invocation-42")
        .header("User-Agent", "Azure-Functions-Host/4.0")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "retryable", "{v}");

    // An event type cmkguard does not handle is acknowledged without touching Azure.
    let ignored =
        json!({"Data": {"event": fixture("eventgrid/containerregistry.ImagePushed.eventgrid.json")}, "Metadata": {}});
    let resp = client.post(server.url("/RegistryEvents")).json(&ignored).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["ReturnValue"]["ignored"][0]["event_type"], "Microsoft.ContainerRegistry.ImagePushed", "{v}");

    // Direct webhook mode with an Event Grid subscription handshake.
    let validation = fixture("eventgrid/eventgrid.SubscriptionValidationEvent.docs-array.json");
    let resp = client
        .post(server.url("/api/events"))
        .header("aeg-event-type", "SubscriptionValidation")
        .header("x-cmkguard-key", KEY)
        .json(&validation)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        fixture("eventgrid/eventgrid.SubscriptionValidationResponse.docs.json")
    );

    // A malformed body: a JSON error, and the server keeps serving.
    let resp = client.post(server.url("/RegistryEvents")).body("{nope").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(client.get(server.url("/")).send().await.unwrap().status(), 200);

    // SIGTERM: drain and exit 0; every log line is JSON, and the invocation's lines carry its id.
    let (code, logs) = server.terminate();
    assert_eq!(code, Some(0), "{logs}");
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let retry: Vec<&Value> =
        lines.iter().filter(|l| l["message"].as_str().is_some_and(|m| m.contains("retryable failure"))).collect();
    assert_eq!(retry.len(), 1, "{logs}");
    assert_eq!(retry[0]["span"]["invocation_id"], "e2e-invocation-42", "{logs}");
    assert!(lines.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("drained"))), "{logs}");
    assert!(!logs.contains(KEY), "the webhook key must never be logged");
}

#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    let out = std::process::Command::new(cmkguard_e2e::cmkguard_bin())
        .args(["serve", "--mode", "enforce"])
        .env("CMKGUARD_WEBHOOK_KEY", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CMKGUARD_WEBHOOK_KEY"), "{err}");
}

#[test]
fn help_documents_every_setting() {
    let out = std::process::Command::new(cmkguard_e2e::cmkguard_bin()).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in
        ["FUNCTIONS_CUSTOMHANDLER_PORT", "CMKGUARD_MODE", "CMKGUARD_WEBHOOK_KEY", "CMKGUARD_LEDGER", "CMKGUARD_POLICY"]
    {
        assert!(help.contains(var), "--help does not mention {var}");
    }
}

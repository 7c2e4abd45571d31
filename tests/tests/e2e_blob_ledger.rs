//! The real `cmkguard serve` with the production ledger backend — Azure Blob Storage,
//! here Azurite over HTTPS with `--oauth basic` — against the real azsim process and a
//! chat sink: a registry written without CMK is reported and notified, nothing changes,
//! the redelivery repeats nothing (the Blob conditional create), and `cmkguard audit`
//! reads the record back from the container.
//!
//! cmkguard authenticates to Blob Storage with its managed identity, like everywhere
//! else. azsim's identity endpoint only issues ARM and Key Vault tokens, so the test puts
//! a small identity endpoint in front of it: storage tokens are the unsigned JWTs Azurite
//! accepts, everything else is forwarded to azsim. The binary trusts Azurite's CA through
//! `SSL_CERT_FILE` (read by the platform certificate verifier), not through any test hook.

#[path = "../../crates/ledger/tests/common/azurite.rs"]
mod azurite;

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use cmkguard_e2e::{ChatSink, Guard, GuardOptions, Sim, chat_messages, registry_id, registry_write_event, scenario};
use serde_json::{Value, json};

#[derive(Clone)]
struct Upstream {
    azsim: String,
    http: reqwest::Client,
    storage_token: String,
}

async fn token(
    State(up): State<Upstream>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let resource = q.get("resource").cloned().unwrap_or_default();
    if resource.trim_end_matches('/') == "https://storage.azure.com" {
        let expires = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
        let body = json!({
            "access_token": up.storage_token, "expires_on": expires.to_string(),
            "resource": resource, "token_type": "Bearer"
        });
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let mut req = up.http.get(&up.azsim).query(&q);
    if let Some(h) = headers.get("x-identity-header") {
        req = req.header("x-identity-header", h);
    }
    match req.send().await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, axum::Json(body)).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_ledger_on_azurite_records_once_and_audit_reads_it() {
    let azurite = azurite::Azurite::start().await.expect("Azurite (scripts/setup.d/50-azurite.sh installs it)");
    let sim = Sim::start(&scenario("demo.json"), &[]);
    let sink = ChatSink::start().await.expect("chat sink");
    let dir = tempfile::tempdir().unwrap();

    // The identity endpoint in front of azsim's.
    let jwt = azurite.credential().get_token(&["https://storage.azure.com/.default"], None).await.unwrap();
    let upstream = Upstream {
        azsim: sim.info["identityEndpoint"].as_str().unwrap().to_owned(),
        http: reqwest::Client::new(),
        storage_token: jwt.token.secret().to_owned(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let identity = format!("http://{}/msi/token", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/msi/token", axum::routing::get(token)).with_state(upstream);
    let proxy = tokio::spawn(async move { axum::serve(listener, app).await });
    let profile = sim.profile_with_identity(&identity);
    let ca = dir.path().join("azurite-ca.pem");
    std::fs::write(&ca, azurite.ca_pem()).unwrap();

    let ledger = azurite.container_url("cmkguard-ledger");
    let guard = Guard::start(
        &sim,
        GuardOptions::new("enforce")
            .teams_channel(&sink, "ops")
            .ledger(ledger.clone())
            .env("CMKGUARD_CLOUD", profile.to_str().unwrap())
            .env("IDENTITY_ENDPOINT", &identity)
            .env("SSL_CERT_FILE", ca.to_str().unwrap()),
    );

    let id = registry_id("rg-registries", "acrnocmk");
    let before = sim.registry(&id).await;
    let event = registry_write_event("e2e-blob-nocmk-1", &id);
    let report = guard.deliver(&event).await;
    assert_eq!(report["decided"]["decision"]["findings"][0]["rule_id"], "CMK001", "{report}");
    assert!(
        report["actions"].as_array().unwrap().iter().any(|a| a["action"] == "notify" && a["status"] == "done"),
        "{report}"
    );
    let again = guard.deliver(&event).await;
    assert_eq!(again["actions"].as_array().map(Vec::len), Some(1), "{again}");
    assert_eq!(again["actions"][0]["action"], "redelivery", "{again}");

    // Azure unchanged; one chat message.
    assert_eq!(sim.registry(&id).await, before);
    assert_eq!(sim.calls("arm.registry.patch").await, 0);
    assert_eq!(chat_messages(&sink, "ops", 1).await.len(), 1);

    // The record is in the container, and the CLI reads it with the same settings.
    let rec = guard.audit_show("e2e-blob-nocmk-1");
    assert_eq!(rec["eventId"], "e2e-blob-nocmk-1", "{rec}");
    assert!(rec.to_string().contains("CMK001"), "{rec}");
    let list = guard.audit_list();
    assert_eq!(list.iter().filter(|r| r["eventId"] == "e2e-blob-nocmk-1").count(), 1, "{list:?}");
    proxy.abort();
}

//! A key event whose key id points outside the cloud profile is refused by the real
//! `cmkguard serve` (production credential path, azsim as Azure) and nothing is fetched:
//! a local listener stands where the key id points, and records every connection. The
//! profile resolves every host to loopback (as the test profile does), so a missed
//! allowlist check would reach that listener.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use azsim::{Azsim, Options, Route};
use common::WEBHOOK_KEY;
use serde_json::json;

/// A listener that counts the connections it is offered.
fn recorder() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (port, seen)
}

fn key_event(id: &str, key_id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-kv/providers/Microsoft.KeyVault/vaults/kv-demo",
        "subject": "cmk",
        "eventType": "Microsoft.KeyVault.KeyNearExpiry",
        "eventTime": "2026-11-23T12:00:00Z",
        "data": {"Id": key_id, "VaultName": "kv-demo", "ObjectType": "Key", "ObjectName": "cmk",
                 "Version": "0123abcd", "NBF": null, "EXP": "1790000000"},
        "dataVersion": "1",
        "metadataVersion": "1"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_id_outside_the_cloud_is_refused_and_nothing_is_fetched() {
    let sim = Azsim::start(
        azsim::scenario::Scenario::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../azsim/scenarios/demo.json"),
        )
        .unwrap(),
        Options::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sim.ca_pem()).unwrap();
    let info = sim.endpoints_json();
    let profile = json!({
        "name": "azsim",
        "armEndpoint": info["armEndpoint"],
        "keyVaultSuffix": info["vaultSuffix"],
        "managedHsmSuffix": info["hsmSuffix"],
        "armAudience": info["armAudience"],
        "keyVaultAudience": info["vaultAudience"],
        "managedHsmAudience": format!("https://{}", info["hsmSuffix"].as_str().unwrap()),
        "authorityHost": "https://login.azsim.test",
        "identityEndpoint": sim.identity_endpoint(),
        "port": sim.port(),
        "test": {"extraCaPemFile": ca, "resolveToLoopback": true}
    });
    let profile_path = dir.path().join("profile.json");
    std::fs::write(&profile_path, profile.to_string()).unwrap();

    let (rec_port, seen) = recorder();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cmkguard"))
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("CMKGUARD_WEBHOOK_KEY", WEBHOOK_KEY)
        .env("CMKGUARD_CLOUD", &profile_path)
        .env("IDENTITY_ENDPOINT", sim.identity_endpoint())
        .env("IDENTITY_HEADER", sim.identity_header())
        .env("CMKGUARD_LEDGER", format!("sqlite:{}", dir.path().join("ledger.db").display()))
        .env("CMKGUARD_POLICY_CACHE_DIR", dir.path().join("policy-cache"))
        .env("CMKGUARD_POLICY_RELOAD_SECS", "0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while http.get(&base).send().await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "not ready: {}", std::fs::read_to_string(&log).unwrap());
        assert!(child.try_wait().unwrap().is_none(), "exited: {}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut answers = String::new();
    let evil = [
        format!("https://kv-demo.attacker.test:{rec_port}/keys/cmk"),
        format!("https://127.0.0.1:{rec_port}/keys/cmk"),
        // The cloud's own vault suffix on another port is still outside the profile.
        format!("https://kv-demo.{}:{rec_port}/keys/cmk", azsim::VAULT_SUFFIX),
    ];
    for (i, key_id) in evil.iter().enumerate() {
        let resp = http
            .post(format!("{base}/api/events"))
            .header("x-cmkguard-key", WEBHOOK_KEY)
            .json(&json!([key_event(&format!("evil-{i}"), key_id)]))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        // Refused as terminal: not a retryable 5xx that would make Event Grid redeliver it.
        assert!(status < 500, "{key_id}: {status} {body}");
        answers.push_str(&body);
    }
    let logs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 0, "a connection reached the key id's host\n{logs}");
    assert_eq!(sim.calls(Route::KvGetKey), 0, "no key was read from azsim either");
    assert!(
        logs.contains("refused to call") || answers.contains("refused to call"),
        "the refusal is reported: {answers}\n{logs}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

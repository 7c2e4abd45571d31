//! The real `cmkguard serve` process against the real `azsim` process: a registry
//! written without CMK is reported (policy finding, audit record) and nothing in Azure
//! changes; a redelivery repeats nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use cmkguard_e2e::{Server, binary};
use serde_json::{Value, json};

struct Sim {
    child: Child,
    info: Value,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_azsim(dir: &std::path::Path) -> Sim {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ca = dir.join("azsim-ca.pem");
    let mut child = Command::new(binary("azsim", "azsim"))
        .arg("--scenario")
        .arg(root.join("azsim/scenarios/demo.json"))
        .arg("--write-ca")
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start azsim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("azsim endpoints line");
    let info: Value = serde_json::from_str(&line).expect("azsim prints its endpoints as JSON");
    Sim { child, info }
}

fn profile(dir: &std::path::Path, sim: &Sim) -> std::path::PathBuf {
    let i = &sim.info;
    let p = json!({
        "name": "azsim",
        "armEndpoint": i["armEndpoint"],
        "keyVaultSuffix": i["vaultSuffix"],
        "managedHsmSuffix": i["hsmSuffix"],
        "armAudience": i["armAudience"],
        "keyVaultAudience": i["vaultAudience"],
        "managedHsmAudience": format!("https://{}", i["hsmSuffix"].as_str().unwrap()),
        "authorityHost": "https://login.azsim.test",
        "identityEndpoint": i["identityEndpoint"],
        "port": i["port"],
        "test": {"extraCaPemFile": dir.join("azsim-ca.pem"), "resolveToLoopback": true}
    });
    let path = dir.join("azsim-profile.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&p).unwrap()).unwrap();
    path
}

fn registry_id(name: &str) -> String {
    format!(
        "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-registries/providers/Microsoft.ContainerRegistry/registries/{name}"
    )
}

fn write_event(id: &str, registry: &str) -> Value {
    json!({
        "id": id,
        "topic": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590",
        "subject": registry,
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": "2026-11-23T12:00:00Z",
        "dataVersion": "2",
        "metadataVersion": "1",
        "data": {
            "operationName": "Microsoft.ContainerRegistry/registries/write",
            "resourceUri": registry,
            "status": "Succeeded",
            "claims": {"appid": "someone"}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_without_cmk_is_reported_and_nothing_changes() {
    let dir = std::env::temp_dir().join(format!("cmkguard-e2e-actions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sim = start_azsim(&dir);
    let profile = profile(&dir, &sim);
    let ledger = format!("sqlite:{}", dir.join("ledger.db").display());
    let key = "e2e-actions-webhook-key-0123456789";
    let server = Server::start(
        &["--mode", "enforce"],
        &[
            ("CMKGUARD_CLOUD", profile.to_str().unwrap()),
            ("CMKGUARD_LEDGER", ledger.as_str()),
            ("CMKGUARD_WEBHOOK_KEY", key),
            ("IDENTITY_ENDPOINT", sim.info["identityEndpoint"].as_str().unwrap()),
            ("IDENTITY_HEADER", sim.info["identityHeader"].as_str().unwrap()),
        ],
    );
    let http = reqwest::Client::new();
    let event = write_event("e2e-nocmk-1", &registry_id("acrnocmk"));
    let mut answers = Vec::new();
    for _ in 0..2 {
        let r = http
            .post(server.url("/api/events"))
            .header("x-cmkguard-key", key)
            .json(&json!([event]))
            .send()
            .await
            .expect("POST /api/events");
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{body}");
        answers.push(body);
    }
    let report = &answers[0]["outcome"]["reports"][0];
    assert_eq!(report["decided"]["decision"]["findings"][0]["rule_id"], "CMK001", "{report}");
    // No channel is configured: the notification is refused and recorded, nothing else done.
    let actions = report["actions"].as_array().unwrap();
    assert!(actions.iter().any(|a| a["action"] == "notify" && a["status"] == "failed"), "{report}");
    assert!(actions.iter().all(|a| a["action"] != "rotate-registry-key"), "{report}");
    // The redelivery repeats nothing.
    let again = &answers[1]["outcome"]["reports"][0]["actions"];
    assert_eq!(again[0]["action"], "redelivery", "{again}");
    assert_eq!(again.as_array().unwrap().len(), 1);
    drop(server);
    // The audit record is durable and readable by the CLI.
    let out = Command::new(cmkguard_e2e::cmkguard_bin())
        .args(["audit", "show", "e2e-nocmk-1", "--output", "json", "--ledger", ledger.as_str()])
        .output()
        .expect("cmkguard audit show");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rec = String::from_utf8_lossy(&out.stdout);
    assert!(rec.contains("e2e-nocmk-1") && rec.contains("CMK001") && rec.contains("enforce"), "{rec}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! azsim over its real protocols (HTTPS + host names + tokens), with answers compared to
//! the published Azure fixtures field by field.

mod common;

use std::time::Duration;

use azsim::{Options, Route};
use common::*;
use serde_json::{Value, json};

const SUB: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";
const ACR_API: &str = "2025-04-01";

fn reg_url(sim: &azsim::Running, name: &str) -> String {
    format!(
        "{}/subscriptions/{SUB}/resourceGroups/rg-registries/providers/Microsoft.ContainerRegistry/registries/{name}?api-version={ACR_API}",
        sim.arm_endpoint()
    )
}

async fn get_json(c: &reqwest::Client, url: &str, token: &str) -> (u16, Value) {
    let r = c.get(url).bearer_auth(token).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn identity_endpoint_checks_header_and_resource() {
    let (sim, c) = start(Options::default()).await;
    let r = c
        .get(sim.identity_endpoint())
        .query(&[("resource", azsim::VAULT_AUDIENCE), ("api-version", "2019-08-01")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "missing X-IDENTITY-HEADER is refused");
    let r = c
        .get(sim.identity_endpoint())
        .query(&[("resource", "https://vault.azure.net"), ("api-version", "2019-08-01")])
        .header("X-IDENTITY-HEADER", sim.identity_header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a resource outside azsim's cloud is refused");
    let r = c
        .get(sim.identity_endpoint())
        .query(&[
            ("resource", azsim::VAULT_AUDIENCE),
            ("api-version", "2019-08-01"),
            ("client_id", "6f1c2a0e-5b8d-4c55-9d3e-1a2b3c4d5e6f"),
        ])
        .header("X-IDENTITY-HEADER", sim.identity_header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_same_shape(&fixture("identity/msi-token.response.app-service-2019-08-01.docs.json"), &body, &[], &[]);
    assert_eq!(body["client_id"], "6f1c2a0e-5b8d-4c55-9d3e-1a2b3c4d5e6f");
    assert!(body["expires_on"].as_str().unwrap().parse::<u64>().is_ok());
    // IMDS shape too.
    let r = c
        .get(sim.imds_endpoint())
        .query(&[("resource", azsim::ARM_AUDIENCE), ("api-version", "2018-02-01")])
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn registry_get_matches_fixture_and_needs_a_token() {
    let (sim, c) = start(Options::default()).await;
    let r = c.get(reg_url(&sim, "acrpinned")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let err: Value = r.json().await.unwrap();
    assert_same_shape(&json!({"error": {"code": "", "message": ""}}), &err, &[], &[]);
    let kv = kv_token(&sim, &c).await;
    let (s, _) = get_json(&c, &reg_url(&sim, "acrpinned"), &kv).await;
    assert_eq!(s, 401, "a Key Vault token is not accepted by ARM");

    let t = arm_token(&sim, &c).await;
    let (s, body) = get_json(&c, &reg_url(&sim, "acrpinned"), &t).await;
    assert_eq!(s, 200);
    let fx = fixture("arm/acr.cmk.3-rotate-key.registry.GET.200.response.json");
    assert_same_shape(&fx, &body, &[], &["userAssignedIdentities", "tags"]);
    let kvp = &body["properties"]["encryption"]["keyVaultProperties"];
    let pinned = sim.key_versions("kv-demo", "cmk-pinned");
    assert_eq!(kvp["keyIdentifier"], sim.key_id("kv-demo", "cmk-pinned", Some(&pinned[0])));
    assert_eq!(kvp["versionedKeyIdentifier"], kvp["keyIdentifier"]);
    assert_eq!(kvp["keyRotationEnabled"], false);
    assert_eq!(body["identity"]["type"], "userAssigned");

    // Versionless: versionedKeyIdentifier is the latest version.
    let (_, auto) = get_json(&c, &reg_url(&sim, "acrauto"), &t).await;
    let kvp = &auto["properties"]["encryption"]["keyVaultProperties"];
    let v = sim.key_versions("kv-demo", "cmk-auto");
    assert_eq!(kvp["keyIdentifier"], sim.key_id("kv-demo", "cmk-auto", None));
    assert_eq!(kvp["versionedKeyIdentifier"], sim.key_id("kv-demo", "cmk-auto", v.last().map(String::as_str)));
    assert_eq!(kvp["keyRotationEnabled"], true);

    let (_, none) = get_json(&c, &reg_url(&sim, "acrnocmk"), &t).await;
    assert_eq!(none["properties"]["encryption"], json!({"status": "disabled"}));

    let (s, nf) = get_json(&c, &reg_url(&sim, "acrmissing"), &t).await;
    assert_eq!((s, nf["error"]["code"].as_str()), (404, Some("ResourceNotFound")));
    let r =
        c.get(reg_url(&sim, "acrpinned").replace("?api-version=2025-04-01", "")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn vault_get_matches_fixture() {
    let (sim, c) = start(Options::default()).await;
    let t = arm_token(&sim, &c).await;
    let url = |name: &str| {
        format!(
            "{}/subscriptions/{SUB}/resourceGroups/rg-security/providers/Microsoft.KeyVault/vaults/{name}?api-version=2024-11-01",
            sim.arm_endpoint()
        )
    };
    let (s, body) = get_json(&c, &url("kv-demo"), &t).await;
    assert_eq!(s, 200);
    let fx = fixture("keyvault/kv.mgmt.Vaults_Get.purge-protection.GET.200.response.json");
    assert_same_shape(&fx, &body, &["enableRbacAuthorization"], &["tags"]);
    assert_eq!(body["properties"]["vaultUri"], sim.vault_uri("kv-demo"));
    let (_, weak) = get_json(&c, &url("kv-nopurge"), &t).await;
    assert_eq!(weak["properties"]["enableSoftDelete"], true);
    assert!(weak["properties"].get("enablePurgeProtection").is_none());
}

#[tokio::test]
async fn rotate_registry_key_round_trip_with_lro() {
    let (sim, c) = start(Options { lro_polls: 2, ..Options::default() }).await;
    let t = arm_token(&sim, &c).await;
    let (_, before) = get_json(&c, &reg_url(&sim, "acrpinned"), &t).await;
    let versions = sim.key_versions("kv-demo", "cmk-pinned");
    let new_kid = sim.key_id("kv-demo", "cmk-pinned", Some(&versions[1]));
    let patch = json!({"identity": before["identity"], "properties": {"encryption": {"status": "enabled",
        "keyVaultProperties": {"keyIdentifier": new_kid, "identity": "33b5bfe1-ff99-42ec-a264-a19d6bf8e4f7"}}}});
    let r = c.patch(reg_url(&sim, "acrpinned")).bearer_auth(&t).json(&patch).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let op_url = r.headers()["azure-asyncoperation"].to_str().unwrap().to_owned();
    assert!(op_url.starts_with(&sim.arm_endpoint()), "absolute URL with port: {op_url}");
    let body: Value = r.json().await.unwrap();
    assert_same_shape(
        &fixture("arm/acr.cmk.4-rotate-key.PATCH.201.response.json"),
        &body,
        &[],
        &["userAssignedIdentities", "tags"],
    );
    assert_eq!(body["properties"]["provisioningState"], "Updating");
    assert_eq!(
        body["properties"]["encryption"], before["properties"]["encryption"],
        "201 body still shows the old key"
    );

    let (_, during) = get_json(&c, &reg_url(&sim, "acrpinned"), &t).await;
    assert_eq!(during["properties"]["provisioningState"], "Updating");
    let mut statuses = Vec::new();
    loop {
        let (s, st) = get_json(&c, &op_url, &t).await;
        assert_eq!(s, 200);
        statuses.push(st["status"].as_str().unwrap().to_owned());
        if st["status"] != "InProgress" {
            assert_same_shape(
                &fixture("arm/acr.cmk.5-rotate-key.operationStatus.GET.200.response.json"),
                &st,
                &[],
                &[],
            );
            break;
        }
        assert!(statuses.len() < 10);
    }
    assert_eq!(statuses, ["InProgress", "InProgress", "Succeeded"]);
    let (_, after) = get_json(&c, &reg_url(&sim, "acrpinned"), &t).await;
    let kvp = &after["properties"]["encryption"]["keyVaultProperties"];
    assert_eq!(kvp["keyIdentifier"], new_kid.as_str());
    assert_eq!(kvp["versionedKeyIdentifier"], new_kid.as_str());
    assert!(kvp["lastKeyRotationTimestamp"].is_string());
    assert_eq!(after["properties"]["provisioningState"], "Succeeded");

    let events = sim.events();
    let write =
        events.iter().find(|e| e["eventType"] == "Microsoft.Resources.ResourceWriteSuccess").expect("write event");
    assert_same_shape(&fixture("eventgrid/resources.ResourceWriteSuccess.eventgrid.json"), write, &[], &[]);
    assert_eq!(write["data"]["operationName"], "Microsoft.ContainerRegistry/registries/write");
    assert_eq!(write["subject"], after["id"]);
    assert_eq!(sim.calls(Route::ArmOperationStatus), 3);

    // The accepted write is logged with the key it asked for (library and control API).
    let writes = sim.registry_writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!(writes[0].key_identifier.as_deref(), Some(new_kid.as_str()));
    assert!(writes[0].registry.ends_with("/acrpinned") && writes[0].key_changed, "{writes:?}");
    let listed: Value =
        c.get(format!("{}/_azsim/writes", sim.arm_endpoint())).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["writes"][0]["keyIdentifier"], new_kid.as_str(), "{listed}");
    assert_eq!(listed["writes"][0]["operation"], op_url.rsplit('/').next().unwrap().split('?').next().unwrap());
}

#[tokio::test]
async fn patch_to_unusable_keys_fails_like_arm() {
    let (sim, c) = start(Options::default()).await;
    let t = arm_token(&sim, &c).await;
    let cases = [
        (sim.key_id("kv-demo", "cmk-disabled", None), "KeyVaultKeyDisabled"),
        (sim.key_id("kv-demo", "ec-signing", None), "InvalidKeyVaultKeyType"),
        (sim.key_id("kv-demo", "nope", None), "KeyVaultKeyNotFound"),
        ("https://elsewhere.vault.azure.net/keys/k".to_owned(), "InvalidKeyVaultKeyIdentifier"),
    ];
    for (kid, code) in cases {
        let patch = json!({"properties": {"encryption": {"keyVaultProperties": {"keyIdentifier": kid, "identity": "33b5bfe1-ff99-42ec-a264-a19d6bf8e4f7"}}}});
        let r = c.patch(reg_url(&sim, "acrpinned")).bearer_auth(&t).json(&patch).send().await.unwrap();
        assert_eq!(r.status(), 400, "{kid}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{kid}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    // Expired: move the clock past the expiring key's end.
    sim.set_time(sim.now() + chrono::Duration::days(11));
    let patch = json!({"properties": {"encryption": {"keyVaultProperties": {"keyIdentifier": sim.key_id("kv-demo", "cmk-expiring", None), "identity": "33b5bfe1-ff99-42ec-a264-a19d6bf8e4f7"}}}});
    let r = c.patch(reg_url(&sim, "acrpinned")).bearer_auth(&t).json(&patch).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "KeyVaultKeyExpired");
    // CMK cannot be turned on after creation.
    let patch = json!({"properties": {"encryption": {"status": "enabled", "keyVaultProperties": {"keyIdentifier": sim.key_id("kv-demo", "cmk-auto", None)}}}});
    let r = c.patch(reg_url(&sim, "acrnocmk")).bearer_auth(&t).json(&patch).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "EncryptionCannotBeEnabledAfterCreation");
    // Nothing changed.
    assert_eq!(sim.registry("acrpinned").unwrap()["properties"]["provisioningState"], "Succeeded");
}

#[tokio::test]
async fn failed_operation_reports_error_and_keeps_old_key() {
    let (sim, c) = start(Options::default()).await;
    let t = arm_token(&sim, &c).await;
    sim.fail_next_operation("KeyVaultAccessDenied", "The identity cannot unwrap the key.");
    let versions = sim.key_versions("kv-demo", "cmk-pinned");
    let patch = json!({"properties": {"encryption": {"keyVaultProperties": {"keyIdentifier": sim.key_id("kv-demo", "cmk-pinned", Some(&versions[1]))}}}});
    let r = c.patch(reg_url(&sim, "acrpinned")).bearer_auth(&t).json(&patch).send().await.unwrap();
    let op_url = r.headers()["azure-asyncoperation"].to_str().unwrap().to_owned();
    let (_, st) = get_json(&c, &op_url, &t).await;
    assert_eq!(st["status"], "InProgress");
    let (_, st) = get_json(&c, &op_url, &t).await;
    assert_eq!(st["status"], "Failed");
    assert_eq!(st["error"]["code"], "KeyVaultAccessDenied");
    let reg = sim.registry("acrpinned").unwrap();
    assert_eq!(
        reg["properties"]["encryption"]["keyVaultProperties"]["keyIdentifier"],
        sim.key_id("kv-demo", "cmk-pinned", Some(&versions[0]))
    );
}

#[tokio::test]
async fn key_vault_challenge_get_versions_rotate() {
    let (sim, c) = start(Options { kv_page_size: 1, ..Options::default() }).await;
    let base = sim.vault_uri("kv-demo");
    let r = c.get(format!("{base}keys/cmk-pinned?api-version=7.5")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let chal = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        chal,
        format!(
            "Bearer authorization=\"https://login.azsim.test/{}\", resource=\"https://vault.azsim.test:{}\"",
            sim.tenant(),
            sim.port()
        )
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, fixture("keyvault/kv.data.401-challenge.POST-create.401.response.json"));

    let t = kv_token(&sim, &c).await;
    let (s, key) = get_json(&c, &format!("{base}keys/cmk-pinned/?api-version=7.5"), &t).await;
    assert_eq!(s, 200);
    let fx = fixture("keyvault/kv.data.GetKey.7.5.json");
    assert_same_shape(&fx["responses"]["200"]["body"], &key, &["exp", "nbf", "recoverableDays"], &["tags"]);
    let versions = sim.key_versions("kv-demo", "cmk-pinned");
    assert_eq!(key["key"]["kid"], sim.key_id("kv-demo", "cmk-pinned", versions.last().map(String::as_str)));
    assert_eq!(key["attributes"]["recoveryLevel"], "Recoverable");

    // Versions, one per page via nextLink.
    let mut url = format!("{base}keys/cmk-pinned/versions?api-version=7.5");
    let mut seen = Vec::new();
    let fxv = fixture("keyvault/kv.data.GetKeyVersions.7.5.json");
    loop {
        let (s, page) = get_json(&c, &url, &t).await;
        assert_eq!(s, 200);
        assert_same_shape(
            &fxv["responses"]["200"]["body"]["value"][0],
            &page["value"][0],
            &["exp", "nbf", "recoverableDays", "tags"],
            &["tags"],
        );
        seen.extend(page["value"].as_array().unwrap().iter().map(|v| v["kid"].as_str().unwrap().to_owned()));
        match page["nextLink"].as_str() {
            Some(n) => url = n.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), versions.len());

    // Rotating the versionless registry's key moves it to the new version.
    let r = c.post(format!("{base}keys/cmk-auto/rotate?api-version=7.5")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let rotated: Value = r.json().await.unwrap();
    assert_same_shape(
        &fixture("keyvault/kv.data.RotateKey.7.5.json")["responses"]["200"]["body"],
        &rotated,
        &["exp", "nbf", "recoverableDays"],
        &["tags"],
    );
    let new_kid = rotated["key"]["kid"].as_str().unwrap().to_owned();
    assert!(rotated["attributes"]["exp"].is_number(), "rotation policy expiryTime applies");
    let auto = sim.registry("acrauto").unwrap();
    assert_eq!(auto["properties"]["encryption"]["keyVaultProperties"]["versionedKeyIdentifier"], new_kid.as_str());
    let ev = sim
        .events()
        .into_iter()
        .find(|e| e["eventType"] == "Microsoft.KeyVault.KeyNewVersionCreated")
        .expect("key event");
    assert_same_shape(&fixture("eventgrid/keyvault.SecretNewVersionCreated.eventgrid.json"), &ev, &[], &[]);
    assert_eq!(ev["data"]["Id"], new_kid.as_str());
    assert_eq!(ev["data"]["ObjectType"], "Key");

    let (s, pol) = get_json(&c, &format!("{base}keys/cmk-auto/rotationpolicy?api-version=7.5"), &t).await;
    assert_eq!(s, 200);
    assert_same_shape(
        &fixture("keyvault/kv.data.GetKeyRotationPolicy.7.5.json")["responses"]["200"]["body"],
        &pol,
        &[],
        &[],
    );

    let (s, nf) = get_json(&c, &format!("{base}keys/none?api-version=7.5"), &t).await;
    assert_eq!((s, nf["error"]["code"].as_str()), (404, Some("KeyNotFound")));
    let arm = arm_token(&sim, &c).await;
    let r = c.get(format!("{base}keys/cmk-auto?api-version=7.5")).bearer_auth(arm).send().await.unwrap();
    assert_eq!(r.status(), 401, "an ARM token is not valid for Key Vault");
}

#[tokio::test]
async fn faults_throttle_fail_and_drop() {
    let (sim, c) = start(Options::default()).await;
    let t = arm_token(&sim, &c).await;
    sim.fail_next(Route::ArmRegistryGet, 2, 429, Some(7));
    for _ in 0..2 {
        let r = c.get(reg_url(&sim, "acrauto")).bearer_auth(&t).send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        let b: Value = r.json().await.unwrap();
        assert!(b["error"]["code"].is_string());
    }
    let r = c.get(reg_url(&sim, "acrauto")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 200);

    sim.fail_next(Route::KvGetKey, 1, 503, None);
    let kt = kv_token(&sim, &c).await;
    let url = format!("{}keys/cmk-auto?api-version=7.5", sim.vault_uri("kv-demo"));
    assert_eq!(c.get(&url).bearer_auth(&kt).send().await.unwrap().status(), 503);
    assert_eq!(c.get(&url).bearer_auth(&kt).send().await.unwrap().status(), 200);

    sim.drop_next(Route::KvGetKey, 1);
    let err = c.get(&url).bearer_auth(&kt).send().await.unwrap_err();
    assert!(!err.is_status(), "connection closed without a response: {err}");
    assert_eq!(c.get(&url).bearer_auth(&kt).send().await.unwrap().status(), 200);

    // Through the control API, as an out-of-process test would.
    let r = c
        .post(format!("{}/_azsim/faults", sim.arm_endpoint()))
        .json(&json!({"route": "kv.key.get", "count": 1, "status": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.get(&url).bearer_auth(&kt).send().await.unwrap().status(), 500);
    let r = c
        .post(format!("{}/_azsim/faults", sim.arm_endpoint()))
        .json(&json!({"route": "kv.nothing", "count": 1, "status": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let calls: Value =
        c.get(format!("{}/_azsim/calls", sim.arm_endpoint())).send().await.unwrap().json().await.unwrap();
    assert!(calls["counts"]["kv.key.get"].as_u64().unwrap() >= 5);

    // Latency is applied (not timed here: timing belongs in benchmarks).
    sim.set_latency(Route::KvGetKey, Duration::from_millis(5));
    assert_eq!(c.get(&url).bearer_auth(&kt).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let (sim, c) = start(Options::default()).await;
    let t = arm_token(&sim, &c).await;
    assert_eq!(get_json(&c, &reg_url(&sim, "acrauto"), &t).await.0, 200);
    sim.expire_tokens();
    let r = c.get(reg_url(&sim, "acrauto")).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "ExpiredAuthenticationToken");
    let t2 = arm_token(&sim, &c).await;
    assert_eq!(get_json(&c, &reg_url(&sim, "acrauto"), &t2).await.0, 200);
}

#[tokio::test]
async fn resource_graph_pages_and_filters() {
    let scenario = azsim::estate::generate(&azsim::estate::EstateSpec { registries: 2500, ..Default::default() });
    let (sim, c) = start_with(scenario, Options::default()).await;
    let t = arm_token(&sim, &c).await;
    let url = format!("{}/providers/Microsoft.ResourceGraph/resources?api-version=2024-04-01", sim.arm_endpoint());
    let q = "Resources | where type =~ 'microsoft.containerregistry/registries' | project id, name, type, location, properties";
    let mut opts = json!({"$top": 1000});
    let mut ids = Vec::new();
    let fx = fixture("arm/resourcegraph.Resources_FirstPageQuery.2024-04-01.json");
    loop {
        let r = c.post(&url).bearer_auth(&t).json(&json!({"query": q, "options": opts})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        let mut expected = fx["responses"]["200"]["body"].clone();
        if page.get("$skipToken").is_none() {
            // The last page carries no skip token.
            expected.as_object_mut().unwrap().remove("$skipToken");
        }
        assert_same_shape(&expected, &page, &["properties"], &[]);
        assert_eq!(page["totalRecords"], 2500);
        assert_eq!(page["resultTruncated"], "false");
        assert_eq!(page["data"][0]["type"], "microsoft.containerregistry/registries");
        ids.extend(page["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page.get("$skipToken").and_then(Value::as_str) {
            Some(tok) => opts = json!({"$top": 1000, "$skipToken": tok}),
            None => break,
        }
    }
    assert_eq!(ids.len(), 2500);
    let mut dedup = ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 2500, "pages do not overlap");

    // Registries using one key, versioned or versionless, case-insensitively.
    let kid = sim.key_id("estate-kv", "cmk03", None).to_uppercase();
    let q = format!(
        "Resources | where type =~ 'microsoft.containerregistry/registries' and tolower(tostring(properties.encryption.keyVaultProperties.keyIdentifier)) startswith tolower('{kid}') | project id, name, keyId = properties.encryption.keyVaultProperties.keyIdentifier | order by name asc"
    );
    let page: Value =
        c.post(&url).bearer_auth(&t).json(&json!({"query": q})).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["totalRecords"], 250);
    assert_eq!(page["count"], 100, "default page size");
    assert_eq!(page["data"][0]["name"], "reg00003");

    let bad = c
        .post(&url)
        .bearer_auth(&t)
        .json(&json!({"query": "Resources | summarize count() by type"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let b: Value = bad.json().await.unwrap();
    assert!(b["error"]["details"][0]["message"].as_str().unwrap().contains("summarize"));
    let bad = c
        .post(&url)
        .bearer_auth(&t)
        .json(&json!({"query": "Resources", "options": {"$top": 5000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn events_reach_a_webhook() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/api/events", listener.local_addr().unwrap());
    let (sim, _c) = start(Options { emit_events_to: Some(hook), ..Options::default() }).await;
    sim.rotate_key("kv-demo", "cmk-auto").unwrap();
    let (mut sock, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "webhook request ended early");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if body.len() >= len {
                assert!(head.to_ascii_lowercase().contains("aeg-event-type: notification"));
                break body[..len].to_owned();
            }
        }
    };
    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
    let events: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(events[0]["eventType"], "Microsoft.KeyVault.KeyNewVersionCreated");
}

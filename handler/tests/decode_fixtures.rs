//! Every event fixture under ../shared/azure-fixtures decodes to the right typed event, in
//! every envelope the Functions host or Event Grid may use: object, array, string-encoded
//! once and twice (Functions route), and direct webhook mode.

mod common;

use chrono::{DateTime, Utc};
use cmkguard_model::{Event, EventKind};
use common::*;
use serde_json::{Value, json};

/// What a fixture event must decode to.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Ignored,
    Validation,
    Key { kind: &'static str },
    Registry,
}

/// The events to test: each fixture file as published, plus the key and registry events
/// derived from the Secret* and storage-account samples (see `common`).
fn cases() -> Vec<(String, Value, Expect)> {
    let dir = fixtures_dir().join("eventgrid");
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let ev = single(fixture(&format!("eventgrid/{name}")));
        if name.starts_with("eventgrid.SubscriptionValidationResponse") {
            continue; // an answer we send, not an event we receive
        } else if name.starts_with("eventgrid.SubscriptionValidationEvent") {
            out.push((name, ev, Expect::Validation));
        } else if name.starts_with("keyvault.SecretNewVersionCreated") {
            out.push((name.clone(), ev.clone(), Expect::Ignored));
            for (ty, kind) in [
                ("Microsoft.KeyVault.KeyNearExpiry", "key-near-expiry"),
                ("Microsoft.KeyVault.KeyExpired", "key-expired"),
                ("Microsoft.KeyVault.KeyNewVersionCreated", "key-new-version-created"),
            ] {
                out.push((
                    format!("{name} as {ty}"),
                    key_event_from_secret_sample(ev.clone(), ty),
                    Expect::Key { kind },
                ));
            }
        } else if name.starts_with("resources.ResourceWriteSuccess") {
            out.push((name.clone(), ev.clone(), Expect::Ignored));
            out.push((format!("{name} as registry write"), registry_write_from_sample(ev), Expect::Registry));
        } else if name.starts_with("containerregistry.ImagePushed") || name.starts_with("storage.BlobCreated") {
            out.push((name, ev, Expect::Ignored));
        } else {
            panic!("fixture {name} has no expectation: add one to this test");
        }
    }
    assert!(out.len() >= 20, "expected the full fixture set, found {} cases", out.len());
    out
}

fn unix(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap()
}

fn check_event(case: &str, ev: &Event, expect: &Expect) {
    match (expect, &ev.kind) {
        (
            Expect::Key { kind },
            k @ (EventKind::KeyNearExpiry(d) | EventKind::KeyExpired(d) | EventKind::KeyNewVersionCreated(d)),
        ) => {
            assert_eq!(k.name(), *kind, "{case}");
            assert_eq!(ev.id, "00eccf70-95a7-4e7c-8299-2eb17ee9ad64", "{case}");
            assert_eq!(d.vault_name, "sample-kv", "{case}");
            assert_eq!(d.key_name, "newsecret", "{case}");
            assert_eq!(d.version, "ee059b2bb5bc48398a53b168c6cdcb10", "{case}: the leading space must be trimmed");
            assert_eq!(
                d.key_id.to_string(),
                "https://sample-kv.vault.azure.net/keys/newsecret/ee059b2bb5bc48398a53b168c6cdcb10"
            );
            assert_eq!(d.not_before, Some(unix(1_559_081_980)), "{case}");
            assert_eq!(d.expires, Some(unix(1_559_082_102)), "{case}");
            assert_eq!(d.vault_resource_id.as_ref().map(|r| r.name()), Some("sample-kv"), "{case}");
            assert_eq!(ev.time.to_rfc3339(), "2019-07-25T01:08:33.103673600+00:00", "{case}");
        }
        (Expect::Registry, EventKind::RegistryWritten(w)) => {
            assert_eq!(w.registry.name(), "sampleregistry", "{case}");
            assert_eq!(w.registry.subscription(), "{subscription-id}", "{case}");
            assert_eq!(w.registry.resource_group(), "{resource-group}", "{case}");
            assert_eq!(w.correlation_id.as_deref(), Some("{ID}"), "{case}");
            assert_eq!(ev.id, "4db48cba-50a2-455a-93b4-de41a3b5b7f6", "{case}");
        }
        (e, k) => panic!("{case}: expected {e:?}, decoded {k:?}"),
    }
}

#[test]
fn every_fixture_decodes_directly() {
    for (case, ev, expect) in cases() {
        for (variant, value) in [("object", ev.clone()), ("array", json!([ev.clone()]))] {
            let decoded =
                cmkguard::events::decode_events_value(value).unwrap_or_else(|e| panic!("{case} ({variant}): {e}"));
            assert_eq!(decoded.len(), 1);
            match (&decoded[0], &expect) {
                (cmkguard::events::Decoded::Event(e), _) => check_event(&case, e, &expect),
                (cmkguard::events::Decoded::Ignored(_), Expect::Ignored) => {}
                (cmkguard::events::Decoded::Validation { validation_code, .. }, Expect::Validation) => {
                    assert_eq!(validation_code, "512d38b6-c7b8-40c8-89fe-f46f9e9622b6")
                }
                (d, e) => panic!("{case} ({variant}): expected {e:?}, decoded {d:?}"),
            }
        }
    }
}

#[tokio::test]
async fn every_fixture_through_the_functions_route_in_every_encoding() {
    let (app, rec) = app();
    for (case, ev, expect) in cases() {
        let once = Value::String(ev.to_string());
        let pretty = Value::String(serde_json::to_string_pretty(&ev).unwrap());
        let twice = Value::String(once.to_string());
        for (variant, trigger) in [
            ("object", ev.clone()),
            ("array", json!([ev.clone()])),
            ("string", once),
            ("pretty string", pretty),
            ("string twice", twice),
        ] {
            let (status, _, body) = send(&app, functions_request("KeyVaultEvents", invocation(trigger))).await;
            assert_eq!(status, 200, "{case} ({variant}): {body}");
            assert!(body.get("Outputs").is_some() && body["Logs"].is_array(), "{case} ({variant}): {body}");
            let got = rec.take();
            match &expect {
                Expect::Key { .. } | Expect::Registry => {
                    assert_eq!(got.len(), 1, "{case} ({variant}): {body}");
                    check_event(&case, &got[0], &expect);
                    assert_eq!(body["ReturnValue"]["reports"][0]["event_id"], got[0].id, "{case}");
                }
                Expect::Ignored => {
                    assert!(got.is_empty(), "{case} ({variant})");
                    assert_eq!(
                        body["ReturnValue"]["ignored"].as_array().map(Vec::len),
                        Some(1),
                        "{case} ({variant}): {body}"
                    );
                }
                Expect::Validation => assert!(got.is_empty(), "{case} ({variant})"),
            }
        }
    }
}

#[tokio::test]
async fn every_fixture_through_direct_mode() {
    let (app, rec) = app();
    for (case, ev, expect) in cases() {
        let is_ce = ev.get("specversion").is_some();
        let mut variants = vec![("application/json; charset=utf-8", json!([ev.clone()]))];
        if is_ce {
            variants.push(("application/cloudevents+json; charset=utf-8", ev.clone()));
            variants.push(("application/cloudevents+json", json!([ev.clone()])));
            variants.push(("application/cloudevents-batch+json", json!([ev.clone()])));
        } else {
            variants.push(("application/json", ev.clone()));
        }
        for (ct, body) in variants {
            let (status, _, resp) = send(&app, direct_request(ct, body.to_string())).await;
            assert_eq!(status, 200, "{case} ({ct}): {resp}");
            let got = rec.take();
            match &expect {
                Expect::Key { .. } | Expect::Registry => {
                    assert_eq!(got.len(), 1, "{case} ({ct})");
                    check_event(&case, &got[0], &expect);
                }
                Expect::Ignored => assert_eq!(resp["ignored"], 1, "{case} ({ct}): {resp}"),
                Expect::Validation => {
                    assert_eq!(resp, fixture("eventgrid/eventgrid.SubscriptionValidationResponse.docs.json"), "{case}")
                }
            }
        }
    }
}

#[tokio::test]
async fn binary_mode_cloudevent() {
    let (app, rec) = app();
    let ev = key_event_from_secret_sample(
        fixture("eventgrid/keyvault.SecretNewVersionCreated.cloudevents.json"),
        "Microsoft.KeyVault.KeyExpired",
    );
    let mut req = http::Request::post("/api/events")
        .header("content-type", "application/json")
        .header("x-cmkguard-key", WEBHOOK_KEY)
        .header("ce-specversion", "1.0");
    for attr in ["id", "source", "type", "subject", "time"] {
        req = req.header(format!("ce-{attr}"), ev[attr].as_str().unwrap());
    }
    let (status, _, body) = send(&app, req.body(ev["data"].to_string().into()).unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let got = rec.take();
    assert_eq!(got.len(), 1);
    check_event("binary", &got[0], &Expect::Key { kind: "key-expired" });
}

#[test]
fn camel_case_and_numeric_fields_are_accepted() {
    // The 2020 revision of the Key Vault event doc used camelCase data keys; the spec types
    // NBF/EXP as numbers.
    let ev = json!({
        "id": "e1", "topic": "/subscriptions/s/resourceGroups/r/providers/Microsoft.KeyVault/vaults/kv",
        "subject": "k", "eventType": "Microsoft.KeyVault.KeyNearExpiry", "eventTime": "2024-01-01T00:00:00Z",
        "data": {"Id": "https://kv.vault.azure.net/keys/k/v1", "vaultName": "kv", "objectType": "Key",
                 "objectName": "k", "version": "v1", "nbf": 1700000000, "exp": 1800000000}
    });
    let d = cmkguard::events::decode_events_value(ev).unwrap();
    let cmkguard::events::Decoded::Event(e) = &d[0] else { panic!("{d:?}") };
    let EventKind::KeyNearExpiry(k) = &e.kind else { panic!() };
    assert_eq!(k.expires, Some(unix(1_800_000_000)));
}

//! Regression tests for what the fuzz targets (fuzz/) found; each input is the minimal
//! form of a crash artifact.

use cmkguard_events::{Decoded, code, decode_events_json, functions::parse_invocation};

fn key_event(data_id: &str, version: &str) -> String {
    serde_json::json!({
        "id": "e1",
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv",
        "subject": "k",
        "eventType": "Microsoft.KeyVault.KeyNearExpiry",
        "eventTime": "2026-11-23T12:00:00Z",
        "data": {"Id": data_id, "VaultName": "kv", "ObjectType": "Key", "ObjectName": "k", "Version": version}
    })
    .to_string()
}

/// fuzz/artifacts/invocation/crash-3f624e74: a versionless `data.Id` took an unchecked
/// `data.Version`, giving a key id that does not parse back (and could carry `/`, `?`).
#[test]
fn a_bad_version_beside_a_versionless_id_is_refused() {
    for version in ["ee059b2bb5bc48398a53b168c6cdcb1;", "v1/../../secrets/x", "v1?api-version=1", "a b"] {
        let body = key_event("https://kv.vault.azure.net/keys/k", version);
        let e = decode_events_json(body.as_bytes()).expect_err(version);
        assert_eq!(e.code, code::BAD_DATA, "{version}: {e}");
        assert!(e.message.contains("data.Version") && e.message.contains("not a key version"), "{e}");
    }
    // A good version still completes a versionless id, and the event round-trips.
    let body = key_event("https://kv.vault.azure.net/keys/k", "0123abcd");
    let Decoded::Event(ev) = decode_events_json(body.as_bytes()).unwrap().remove(0) else { panic!() };
    let back: cmkguard_model::Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
    assert_eq!(*ev, back);
}

/// fuzz/artifacts/decode_events/crash-3d966df3: invalid UTF-8 inside a field the decoder
/// skips was accepted (serde_json does not check skipped strings).
#[test]
fn invalid_utf8_anywhere_is_refused() {
    let good = key_event("https://kv.vault.azure.net/keys/k/0123abcd", "0123abcd");
    assert!(decode_events_json(good.as_bytes()).is_ok());
    let mut body = good.replacen("\"topic\"", "\"vopic\"", 1).into_bytes();
    let at = body.windows(9).position(|w| w == b"resourceG").unwrap();
    body[at] = 0xac;
    let e = decode_events_json(&body).unwrap_err();
    assert_eq!(e.code, code::NOT_JSON);
    assert!(e.message.contains("not UTF-8"), "{e}");

    let mut inv = format!(r#"{{"Data":{{"event":{good}}},"Metadata":{{"x":"ab"}}}}"#).into_bytes();
    let n = inv.len();
    inv[n - 4] = 0xff;
    let e = parse_invocation(&inv).unwrap_err();
    assert!(e.message.contains("not UTF-8"), "{e}");
}

/// The hostile-input test: a 4 MiB body of `{},{},…` (1.4 M items) was split into that many
/// envelopes before the first was refused. A batch is now bounded.
#[test]
fn batches_are_bounded() {
    let many = format!("[{}{{}}]", "{},".repeat(cmkguard_events::MAX_BATCH));
    let e = decode_events_json(many.as_bytes()).unwrap_err();
    assert_eq!(e.code, code::BAD_ENVELOPE, "{e}");
    assert!(e.message.contains("more than 5000 events"), "{e}");
    // Syntax errors still come first, and are found without building the document.
    let e = decode_events_json(format!("[{}", "{},".repeat(10)).as_bytes()).unwrap_err();
    assert_eq!(e.code, code::NOT_JSON, "{e}");
    let e = decode_events_json("[".repeat(1000).as_bytes()).unwrap_err();
    assert_eq!(e.code, code::TOO_DEEP, "{e}");
    // Below the bound, the first bad item is named as before.
    let e = decode_events_json(b"[{},{}]").unwrap_err();
    assert!(e.message.starts_with("event 0: neither an Event Grid event"), "{e}");
}

/// fuzz/artifacts/cloudevents_binary/crash-d89d5551: a binary-mode CloudEvent with a blank
/// `ce-id` decoded to an event with an empty idempotency key.
#[test]
fn a_cloudevent_without_an_id_is_refused() {
    let mut h = http::HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", " "),
        ("ce-source", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv"),
        ("ce-type", "Microsoft.KeyVault.KeyNearExpiry"),
        ("content-type", "application/json"),
    ] {
        h.insert(k, http::HeaderValue::from_static(v));
    }
    let body = br#"{"Id":"https://kv.vault.azure.net/keys/k/0123abcd","ObjectName":"k","Version":"0123abcd"}"#;
    let e = cmkguard_events::cloudevents::decode_binary(&h, body.to_vec()).unwrap_err();
    assert!(e.message.contains("id is empty"), "{e}");
    h.insert("ce-id", http::HeaderValue::from_static("e1"));
    assert!(cmkguard_events::cloudevents::decode_binary(&h, body.to_vec()).is_ok());
}

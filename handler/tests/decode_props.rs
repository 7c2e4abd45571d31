//! Property tests of the decoder: arbitrary input never panics, and the quirks Azure
//! sends (key casing, stray whitespace, numbers as strings, string-encoding layers) never
//! change what an event decodes to.

mod common;

use cmkguard::events::{self, Decoded, functions};
use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,20}".prop_map(Value::String),
        Just(json!("Microsoft.KeyVault.KeyNearExpiry")),
        Just(json!("https://kv.vault.azure.net/keys/k/v1")),
        Just(json!("1.0")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("eventType".to_owned()),
                    Just("eventTime".to_owned()),
                    Just("data".to_owned()),
                    Just("specversion".to_owned()),
                    Just("source".to_owned()),
                    Just("type".to_owned()),
                    Just("Id".to_owned()),
                    Just("EXP".to_owned()),
                    "[a-zA-Z ]{1,10}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key_event() -> Value {
    key_event_from_secret_sample(
        fixture("eventgrid/keyvault.SecretNewVersionCreated.eventgrid.json"),
        "Microsoft.KeyVault.KeyNearExpiry",
    )
}

fn decoded_event(v: Value) -> cmkguard_model::Event {
    match events::decode_events_value(v).expect("decodes").remove(0) {
        Decoded::Event(e) => *e,
        other => panic!("{other:?}"),
    }
}

/// Changes the case of every letter chosen by `mask` and pads with whitespace.
fn recase(key: &str, mask: u64, pad: bool) -> String {
    let k: String = key
        .chars()
        .enumerate()
        .map(|(i, c)| if mask >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
        .collect();
    if pad { format!(" {k} ") } else { k }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = events::decode_events_json(&bytes);
        let _ = functions::parse_invocation(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let _ = events::decode_events_value(v.clone());
        let _ = functions::unwrap_strings(v.clone());
        let body = json!({"Data": {"event": v}}).to_string();
        if let Ok(inv) = functions::parse_invocation(body.as_bytes()) {
            let _ = inv.decode_trigger();
        }
    }

    #[test]
    fn key_casing_whitespace_and_number_forms_do_not_matter(mask in any::<u64>(), pad in any::<bool>(), exp_as_number in any::<bool>(), pad_values in any::<bool>()) {
        let want = decoded_event(key_event());
        let mut ev = key_event();
        let data = ev["data"].as_object().unwrap().clone();
        let mut out = serde_json::Map::new();
        for (k, v) in data {
            let v = match (k.as_str(), v) {
                ("EXP", Value::String(s)) if exp_as_number => json!(s.parse::<i64>().unwrap()),
                (_, Value::String(s)) if pad_values => Value::String(format!("  {s} ")),
                (_, v) => v,
            };
            out.insert(recase(&k, mask, pad), v);
        }
        ev["data"] = Value::Object(out);
        prop_assert_eq!(decoded_event(ev), want);
    }

    #[test]
    fn string_encoding_layers_are_unwrapped(layers in 0usize..=4) {
        let mut v = key_event();
        for _ in 0..layers {
            v = Value::String(v.to_string());
        }
        prop_assert_eq!(functions::unwrap_strings(v).unwrap(), key_event());
    }
}

#[test]
fn five_string_layers_are_refused() {
    let mut v = key_event();
    for _ in 0..6 {
        v = Value::String(v.to_string());
    }
    let e = functions::unwrap_strings(v).unwrap_err();
    assert!(e.message.contains("more than"), "{e}");
}

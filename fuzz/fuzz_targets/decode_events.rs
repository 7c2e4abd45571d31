//! `decode_events_json` (a direct-mode body: one event or a batch, Event Grid or
//! CloudEvents). Beyond "no panic": decoding is deterministic, decoded events survive the
//! ledger's JSON round trip, and the same document delivered through the Functions
//! envelope (as a value and as a JSON string) decodes to the same events.
#![no_main]

use cmkguard_events::{decode_events_json, functions::parse_invocation};
use cmkguard_fuzz::{assert_round_trips, identity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let direct = decode_events_json(data);
    let again = decode_events_json(data);
    match (&direct, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.iter().map(identity).collect::<Vec<_>>(), b.iter().map(identity).collect::<Vec<_>>());
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "decoding is deterministic"),
        _ => panic!("decoding is deterministic: {direct:?} vs {again:?}"),
    }
    let Ok(decoded) = direct else { return };
    assert!(!decoded.is_empty(), "Ok means at least one item");
    assert_round_trips(&decoded);
    let want: Vec<String> = decoded.iter().map(identity).collect();

    let text = std::str::from_utf8(data).expect("a decoded body is UTF-8 JSON");
    let as_string = serde_json::to_string(text.trim()).expect("a string serializes");
    for value in [text.trim(), as_string.as_str()] {
        let envelope = format!(r#"{{"Data":{{"event":{value}}},"Metadata":{{}}}}"#);
        let inv = parse_invocation(envelope.as_bytes()).expect("a valid event in an envelope parses");
        match inv.decode_trigger() {
            Ok(via) => assert_eq!(via.iter().map(identity).collect::<Vec<_>>(), want, "envelope vs direct"),
            // Two more levels of nesting can cross serde_json's depth limit.
            Err(e) if e.code == cmkguard_events::code::TOO_DEEP => {}
            Err(e) => panic!("direct decoding succeeded but the envelope failed: {e:?}"),
        }
    }
});

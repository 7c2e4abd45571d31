//! Binary-mode CloudEvents (`ce-*` headers + body), as the webhook route receives them.
//! The input is header lines (`name: value`), a blank line, then the body. No panic;
//! decoded events survive the ledger's JSON round trip.
#![no_main]

use cmkguard_events::cloudevents::decode_binary;
use cmkguard_fuzz::assert_round_trips;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = http::HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    if let Ok(d) = decode_binary(&headers, body.to_vec()) {
        assert_round_trips(std::slice::from_ref(&d));
    }
});

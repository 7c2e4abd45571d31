//! The Functions custom-handler envelope: `parse_invocation` + `decode_trigger` (the
//! trigger may be an object, an array, or JSON strings of either). No panic; decoded
//! events survive the ledger's JSON round trip.
#![no_main]

use cmkguard_events::functions::parse_invocation;
use cmkguard_fuzz::assert_round_trips;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(inv) = parse_invocation(data) else { return };
    if let Ok(decoded) = inv.decode_trigger() {
        assert!(!decoded.is_empty(), "Ok means at least one item");
        assert_round_trips(&decoded);
    }
});

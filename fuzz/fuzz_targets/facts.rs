//! The documented facts / test-case format: a `PolicyInput` (`cmkguard eval --facts`, the
//! policy test cases) and a `Decision` (a policy's answer, a test case's expectation).
//! No panic; whatever parses survives a JSON round trip unchanged.
#![no_main]

use cmkguard_model::{Decision, PolicyInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = serde_json::from_slice::<PolicyInput>(data) {
        let json = serde_json::to_string(&input).expect("serializes");
        let back: PolicyInput = serde_json::from_str(&json).expect("round trip parses");
        assert_eq!(input, back, "PolicyInput round trip");
    }
    if let Ok(decision) = serde_json::from_slice::<Decision>(data) {
        let json = serde_json::to_string(&decision).expect("serializes");
        let back: Decision = serde_json::from_str(&json).expect("round trip parses");
        assert_eq!(decision, back, "Decision round trip");
    }
});

//! Shared pieces of the fuzz targets: azsim's scenario loader compiled from its source,
//! the fixture policy inputs, and the properties the targets check beyond "no panic".

use cmkguard_events::Decoded;

/// azsim's scenario loader, compiled from its own source file: the azsim crate would
/// bring its HTTP and TLS stack into every instrumented fuzz build.
#[path = "../../azsim/src/scenario.rs"]
#[allow(dead_code, unreachable_pub)]
pub mod scenario;

/// What identifies a decoded item, without fields a decoder may fill from the clock (a
/// CloudEvent without `time` gets "now").
pub fn identity(d: &Decoded) -> String {
    match d {
        Decoded::Event(e) => format!("event {:?} {:?} {:?} {:?}", e.id, e.event_type, e.subject, e.kind),
        Decoded::Ignored(i) => format!("ignored {:?} {:?} {:?}", i.id, i.event_type, i.reason),
        Decoded::Validation { id, validation_code } => format!("validation {id:?} {validation_code:?}"),
    }
}

/// Every decoded event survives the ledger's serde round trip unchanged.
pub fn assert_round_trips(decoded: &[Decoded]) {
    for d in decoded {
        if let Decoded::Event(e) = d {
            let json = serde_json::to_string(e).expect("a decoded event serializes");
            let back: cmkguard_model::Event = serde_json::from_str(&json).expect("a serialized event parses");
            assert_eq!(**e, back, "event round trip through JSON");
            assert!(!e.id.trim().is_empty(), "a decoded event has an id");
        }
    }
}

/// The policy inputs of the repository's policy test cases (policy-wasm/testcases).
pub fn fixture_inputs() -> &'static [cmkguard_model::PolicyInput] {
    static INPUTS: std::sync::OnceLock<Vec<cmkguard_model::PolicyInput>> = std::sync::OnceLock::new();
    INPUTS.get_or_init(|| {
        [
            include_str!("../../policy-wasm/testcases/cmk003-rotate-vault-key.json"),
            include_str!("../../policy-wasm/testcases/cmk001-registry-without-cmk.json"),
            include_str!("../../policy-wasm/testcases/cmk002-pinned-prefers-versionless.json"),
            include_str!("../../policy-wasm/testcases/cmk004-new-version.json"),
            include_str!("../../policy-wasm/testcases/cmk001-sweep-standard-sku.json"),
            include_str!("../../policy-wasm/testcases/healthy-versionless-registry.json"),
        ]
        .iter()
        .map(|text| {
            let case: serde_json::Value = serde_json::from_str(text).expect("test case JSON");
            serde_json::from_value(case["input"].clone()).expect("test case input is a PolicyInput")
        })
        .collect()
    })
}

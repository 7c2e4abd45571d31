//! azsim's scenario loader (azsim/SCENARIO.md): `Scenario::from_json` parses and validates.
//! No panic; a scenario that loads, written back out, loads again.
#![no_main]

use cmkguard_fuzz::scenario::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(s) = Scenario::from_json(text) {
        let json = serde_json::to_string(&s).expect("a scenario serializes");
        if let Err(e) = Scenario::from_json(&json) {
            panic!("a loaded scenario does not load again: {e}\n{json}");
        }
    }
});

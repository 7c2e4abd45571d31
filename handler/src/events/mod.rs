//! Wire formats → typed domain events: the decoders live in the light `cmkguard-events`
//! crate (so the fuzz targets build without wasmtime) and are re-exported here unchanged.

pub use cmkguard_events::*;

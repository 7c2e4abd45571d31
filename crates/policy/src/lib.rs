//! The sandboxed WebAssembly policy engine: loads a policy component, evaluates
//! [`cmkguard_model::PolicyInput`] into a validated [`cmkguard_model::Decision`].
//!
//! - [`engine`]: wasmtime configuration and the per-evaluation sandbox (fresh store,
//!   pooled instance, epoch deadline, memory/stack caps) and the loaded [`Policy`].
//! - [`cache`]: precompiled artifacts on disk, verified before use.
//! - [`source`]: file / pinned https URL / manifest; HTTP is the caller's ([`Fetch`]).
//! - [`reload`]: the serving policy and hot reload ([`PolicyHost`]).
//! - [`validate`]: the host's checks of every decision.
//!
//! The contract is `wit/` at the workspace root: `cmkguard:policy@2.0.0` (`wit/v2`, the
//! input's strings in one string table, decisions naming input resources by position)
//! for new policies, and `@1.0.0` (`wit/policy.wit`,
//! one string per field), which the host keeps loading and running.

pub mod cache;
mod convert;
pub mod engine;
pub mod error;
pub mod reload;
pub mod sample;
pub mod source;
pub mod testcase;
pub mod validate;

pub use engine::{CONTRACT_VERSION, CONTRACT_VERSIONS, Limits, LoadInfo, Policy, PolicyEngine};
pub use error::{EvalError, LoadError};
pub use reload::{PolicyHost, Refresh};
pub use source::{Fetch, Manifest, PolicySource};

/// The default policy (`policy-wasm/default`), built into a component by `build.rs`.
pub const DEFAULT_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-policy.wasm"));

/// Where `build.rs` put the built policy components (default and template).
pub const COMPONENTS_DIR: &str = env!("CMKGUARD_POLICY_COMPONENTS");

/// Contract 1.0.0 (`wit/policy.wit`).
#[allow(missing_docs)]
mod bindings {
    // Borrowing: the input is lowered straight from the model's strings (no copy of
    // every string into an owned contract value first). Results stay owned.
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "policy",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// Contract 2.0.0 (`wit/v2/policy.wit`): the input's strings in one string table.
#[allow(missing_docs)]
mod bindings_v2 {
    wasmtime::component::bindgen!({
        path: "../../wit/v2",
        world: "policy",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

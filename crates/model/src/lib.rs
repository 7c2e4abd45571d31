//! cmkguard's domain vocabulary, shared by every other crate.
//!
//! - [`event`]: the typed domain [`Event`](event::Event) that wire formats decode into.
//! - [`resource`]: Azure resource ids and Key Vault key ids, parsed and compared the way Azure does.
//! - [`facts`]: what the host knows about a key and its registries: the policy input
//!   (its JSON form is the documented `--facts` / test-case format).
//! - [`decision`]: what a policy answers: findings and actions from a closed set.
//! - [`outcome`]: what became of an event: the policy that decided, each action's fate.
//! - [`validate`]: checks a policy's decision against its input before anyone acts on it.
//!
//! Nothing here does I/O.

pub mod decision;
pub mod event;
pub mod facts;
pub mod outcome;
pub mod resource;
pub mod validate;

pub use decision::{Action, Decision, Finding, RotateTarget, Severity};
pub use event::{Event, EventKind, KeyEvent, RegistryWrite};
pub use facts::{KeyFacts, PolicyInput, RegistryFacts, Shared, VaultFacts};
pub use resource::{KeyId, ResourceId};

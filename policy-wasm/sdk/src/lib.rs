//! Bindings to the cmkguard policy contract (`wit/`, `cmkguard:policy@1.0.0`) and small
//! helpers for policy authors: key-id parsing, tags, time arithmetic and a decision
//! builder that keeps actions unique.
//!
//! A policy implements [`Policy`] and exports it:
//!
//! ```ignore
//! struct Mine;
//! impl cmkguard_policy_sdk::Policy for Mine { /* metadata, validate_settings, evaluate */ }
//! cmkguard_policy_sdk::export_policy!(Mine);
//! ```

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "export_policy",
    default_bindings_module: "cmkguard_policy_sdk",
});

pub use cmkguard::policy::log::Level;
pub use cmkguard::policy::types::{
    Action, Decision, EventInfo, EventKind, Finding, KeyFacts, PolicyMetadata, Notify, PolicyInput, RegistryFacts,
    RotateRegistryKey, RotateTarget, RotateVaultKey, Severity, Timestamp, VaultFacts,
};
pub use exports::cmkguard::policy::evaluator::Guest as Policy;

/// The contract version this SDK binds to; report it from `metadata`.
pub const CONTRACT_VERSION: &str = "1.0.0";

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Sends a log line to the host (bounded there: 1 KiB per line, 32 lines per evaluation).
pub fn log(level: Level, message: &str) {
    cmkguard::policy::log::log(level, message);
}

/// A severity's contract name (`info` … `critical`).
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// Parses a severity name (case-insensitive).
pub fn parse_severity(s: &str) -> Option<Severity> {
    [Severity::Info, Severity::Low, Severity::Medium, Severity::High, Severity::Critical]
        .into_iter()
        .find(|v| severity_name(*v).eq_ignore_ascii_case(s.trim()))
}

/// Orders severities (`info` = 0 … `critical` = 4).
pub fn severity_rank(s: Severity) -> u8 {
    s as u8
}

/// Whole days from `now` until `t` (negative when `t` is past), rounded down.
pub fn days_until(now: Timestamp, t: Timestamp) -> i64 {
    (t - now).div_euclid(DAY)
}

/// A Key Vault key id split into its parts: `https://{host}/keys/{name}[/{version}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef<'a> {
    pub host: &'a str,
    pub name: &'a str,
    pub version: Option<&'a str>,
}

impl<'a> KeyRef<'a> {
    /// Parses a key id; `None` when it is not one.
    pub fn parse(id: &'a str) -> Option<Self> {
        let rest = id.trim().strip_prefix("https://")?;
        let mut parts = rest.trim_end_matches('/').split('/');
        let host = parts.next().filter(|h| !h.is_empty())?;
        if !parts.next()?.eq_ignore_ascii_case("keys") {
            return None;
        }
        let name = parts.next().filter(|n| !n.is_empty())?;
        let version = parts.next().filter(|v| !v.is_empty());
        if parts.next().is_some() {
            return None;
        }
        Some(Self { host: host.trim_end_matches(":443"), name, version })
    }

    /// Same vault and key name (versions aside); Azure compares these case-insensitively.
    pub fn same_key(&self, other: &KeyRef<'_>) -> bool {
        self.host.eq_ignore_ascii_case(other.host) && self.name.eq_ignore_ascii_case(other.name)
    }
}

/// The value of a registry's tag (tag names compare case-insensitively, as in Azure).
pub fn tag<'a>(registry: &'a RegistryFacts, name: &str) -> Option<&'a str> {
    registry.tags.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Builds a decision; repeated identical actions are kept once.
#[derive(Default)]
pub struct DecisionBuilder {
    findings: Vec<Finding>,
    actions: Vec<Action>,
}

impl DecisionBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn finding(&mut self, rule_id: &str, severity: Severity, resource: &str, message: impl Into<String>) -> &mut Self {
        self.findings.push(Finding {
            rule_id: rule_id.to_owned(),
            severity,
            resource: resource.to_owned(),
            message: message.into(),
        });
        self
    }

    pub fn audit(&mut self) -> &mut Self {
        if !self.actions.iter().any(|a| matches!(a, Action::Audit)) {
            self.actions.push(Action::Audit);
        }
        self
    }

    /// Asks to rotate a registry's key; a second request for the same registry is dropped.
    pub fn rotate_registry(&mut self, registry: &str, target: RotateTarget) -> &mut Self {
        let dup = self.actions.iter().any(|a| matches!(a, Action::RotateRegistryKey(r) if r.registry.eq_ignore_ascii_case(registry)));
        if !dup {
            self.actions.push(Action::RotateRegistryKey(RotateRegistryKey { registry: registry.to_owned(), target }));
        }
        self
    }

    pub fn rotate_vault_key(&mut self, key: &str) -> &mut Self {
        let dup = self.actions.iter().any(|a| matches!(a, Action::RotateVaultKey(k) if k.key == key));
        if !dup {
            self.actions.push(Action::RotateVaultKey(RotateVaultKey { key: key.to_owned() }));
        }
        self
    }

    pub fn notify(&mut self, channel: &str, severity: Severity, title: impl Into<String>, text: impl Into<String>) -> &mut Self {
        self.actions.push(Action::Notify(Notify { channel: channel.to_owned(), severity, title: title.into(), text: text.into() }));
        self
    }

    pub fn has_findings(&self) -> bool {
        !self.findings.is_empty()
    }

    pub fn build(self) -> Decision {
        Decision { findings: self.findings, actions: self.actions }
    }
}

/// The allocator of policies built with the SDK (feature `bump`, on by default): a bump
/// allocator over the linear memory above the data (`__heap_base` up to the current
/// memory size), growing memory only when that is used up.
///
/// The host gives every evaluation a fresh instance, so nothing lives longer than one
/// call: freeing memory is needless work (only the most recent block is given back, which
/// lets a growing `String` or `Vec` extend in place). Compared with the default allocator
/// this removes the allocator's bookkeeping from every string the host passes in and the
/// `memory.grow` (an `mprotect` in the host, and page faults after each reset) from a
/// typical evaluation. A policy that keeps state across calls cannot exist under this
/// host, but one that allocates a lot within a call should turn the feature off.
#[cfg(all(target_arch = "wasm32", feature = "bump"))]
mod bump {
    use core::alloc::{GlobalAlloc, Layout};
    use core::arch::wasm32;
    use core::cell::Cell;

    const PAGE: usize = 65_536;

    pub struct Bump {
        next: Cell<usize>,
        end: Cell<usize>,
    }

    // SAFETY: wasm32-unknown-unknown components run on one thread.
    unsafe impl Sync for Bump {}

    unsafe extern "C" {
        /// Start of the heap, provided by the linker (wasm-ld).
        static __heap_base: u8;
    }

    #[global_allocator]
    static ALLOCATOR: Bump = Bump { next: Cell::new(0), end: Cell::new(0) };

    impl Bump {
        /// Makes room for `size` bytes at alignment `align`; the block's address or 0.
        fn take(&self, size: usize, align: usize) -> usize {
            if self.end.get() == 0 {
                self.next.set(&raw const __heap_base as usize);
                self.end.set(wasm32::memory_size(0) * PAGE);
            }
            let Some(start) = self.next.get().checked_next_multiple_of(align) else { return 0 };
            let Some(end) = start.checked_add(size) else { return 0 };
            if end > self.end.get() && !self.grow(end) {
                return 0;
            }
            self.next.set(end);
            start
        }

        /// Grows memory so that it reaches at least `to`.
        fn grow(&self, to: usize) -> bool {
            let pages = (to - self.end.get()).div_ceil(PAGE);
            let old = wasm32::memory_grow(0, pages);
            if old == usize::MAX {
                return false;
            }
            if old * PAGE != self.end.get() {
                // Someone else grew memory: continue in the new pages only.
                self.next.set(old * PAGE);
                self.end.set((old + pages) * PAGE);
                return to <= self.end.get() || self.grow(to);
            }
            self.end.set((old + pages) * PAGE);
            true
        }
    }

    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.take(layout.size(), layout.align()) as *mut u8
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // Only the most recent block is given back.
            if ptr as usize + layout.size() == self.next.get() {
                self.next.set(ptr as usize);
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let at = ptr as usize;
            if at + layout.size() == self.next.get() {
                // The most recent block: extend (or shrink) it in place.
                let Some(end) = at.checked_add(new_size) else { return core::ptr::null_mut() };
                if end <= self.end.get() || self.grow(end) {
                    self.next.set(end);
                    return ptr;
                }
                return core::ptr::null_mut();
            }
            if new_size <= layout.size() {
                return ptr;
            }
            let new = self.take(new_size, layout.align()) as *mut u8;
            if !new.is_null() {
                // SAFETY: both blocks are valid for `layout.size()` bytes and distinct.
                unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
            }
            new
        }
    }
}

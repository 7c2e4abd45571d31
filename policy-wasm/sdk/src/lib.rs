//! Bindings to the cmkguard policy contract (`wit/v2`, `cmkguard:policy@2.0.0`) and small
//! helpers for policy authors: a borrowed view of the input, key-id parsing, tags, time
//! arithmetic and a decision builder that keeps actions unique.
//!
//! A policy implements [`Policy`] and exports it:
//!
//! ```text
//! struct Mine;
//! impl cmkguard_policy_sdk::Policy for Mine { /* metadata, validate_settings, evaluate */ }
//! cmkguard_policy_sdk::export_policy!(Mine);
//! ```
//!
//! Contract 2 passes the input's strings as one string plus spans (see `wit/v2`);
//! [`Input`] resolves them, so a policy reads `registry.id` as a `&str` as before. Its
//! decisions name input resources by position: [`DecisionBuilder`] takes the
//! [`Registry`] (which knows its index), [`ResourceRef::Key`] or [`ResourceRef::Vault`]
//! where version 1 took an id string.

wit_bindgen::generate!({
    path: "../../wit/v2",
    world: "policy",
    pub_export_macro: true,
    export_macro_name: "__export_raw",
    default_bindings_module: "cmkguard_policy_sdk",
});

pub use cmkguard::policy::log::Level;
pub use cmkguard::policy::types::{
    Action, Decision, EventKind, Finding, Notify, PolicyMetadata, ResourceRef, RotateRegistryKey, RotateTarget,
    Severity, Timestamp, VaultFacts,
};

/// The contract's input and exports as generated (spans and rows, not strings): what
/// [`export_policy!`] adapts. Policies use [`Input`] and [`Policy`] instead.
pub mod raw {
    pub use crate::cmkguard::policy::types::{EventInfo, KeyFacts, PolicyInput, Span};
    pub use crate::exports::cmkguard::policy::evaluator::Guest;

    /// `u32`s per tag row of `PolicyInput::tags`: name span, value span.
    pub const TAG_WORDS: usize = 4;

    const ENCRYPTION_ENABLED: u32 = 1 << 0;
    const KEY_ROTATION_ENABLED: u32 = 1 << 1;
    const HAS_KEY_IDENTIFIER: u32 = 1 << 2;
    const HAS_VERSIONED_KEY_IDENTIFIER: u32 = 1 << 3;
    const HAS_IDENTITY: u32 = 1 << 4;
    const HAS_PROVISIONING_STATE: u32 = 1 << 5;
    const HAS_LAST_ROTATION: u32 = 1 << 6;

    /// One registry row of `PolicyInput::registries`, decoded (layout: `wit/v2/policy.wit`).
    #[derive(Debug, Clone, Copy)]
    pub struct RegistryRow {
        pub id: Span,
        pub name: Span,
        pub sku: Span,
        pub location: Span,
        pub encryption_enabled: bool,
        pub key_identifier: Option<Span>,
        pub versioned_key_identifier: Option<Span>,
        pub identity: Option<Span>,
        pub key_rotation_enabled: bool,
        pub last_rotation: Option<i64>,
        pub provisioning_state: Option<Span>,
        /// (first, count) in tag rows of `PolicyInput::tags`.
        pub tags: Span,
    }

    impl RegistryRow {
        /// `u32`s per registry row.
        pub const WORDS: usize = 21;

        /// Decodes a row.
        pub fn read(w: &[u32; Self::WORDS]) -> Self {
            let flags = w[20];
            let span = |i: usize| Span { offset: w[i], len: w[i + 1] };
            let opt = |i: usize, bit: u32| (flags & bit != 0).then(|| span(i));
            Self {
                id: span(0),
                name: span(2),
                sku: span(4),
                location: span(6),
                key_identifier: opt(8, HAS_KEY_IDENTIFIER),
                versioned_key_identifier: opt(10, HAS_VERSIONED_KEY_IDENTIFIER),
                identity: opt(12, HAS_IDENTITY),
                provisioning_state: opt(14, HAS_PROVISIONING_STATE),
                tags: span(16),
                last_rotation: (flags & HAS_LAST_ROTATION != 0)
                    .then(|| (u64::from(w[18]) | (u64::from(w[19]) << 32)) as i64),
                encryption_enabled: flags & ENCRYPTION_ENABLED != 0,
                key_rotation_enabled: flags & KEY_ROTATION_ENABLED != 0,
            }
        }

        /// Appends the row to `out` (what the host does; for tests and native harnesses).
        pub fn write(&self, out: &mut Vec<u32>) {
            let mut flags = 0;
            let mut opt = |s: Option<Span>, bit: u32| match s {
                Some(s) => {
                    flags |= bit;
                    [s.offset, s.len]
                }
                None => [0, 0],
            };
            let words = [
                [self.id.offset, self.id.len],
                [self.name.offset, self.name.len],
                [self.sku.offset, self.sku.len],
                [self.location.offset, self.location.len],
                opt(self.key_identifier, HAS_KEY_IDENTIFIER),
                opt(self.versioned_key_identifier, HAS_VERSIONED_KEY_IDENTIFIER),
                opt(self.identity, HAS_IDENTITY),
                opt(self.provisioning_state, HAS_PROVISIONING_STATE),
                [self.tags.offset, self.tags.len],
            ];
            let at = self.last_rotation.unwrap_or(0) as u64;
            if self.last_rotation.is_some() {
                flags |= HAS_LAST_ROTATION;
            }
            if self.encryption_enabled {
                flags |= ENCRYPTION_ENABLED;
            }
            if self.key_rotation_enabled {
                flags |= KEY_ROTATION_ENABLED;
            }
            out.extend(words.into_iter().flatten());
            out.extend([at as u32, (at >> 32) as u32, flags]);
        }
    }
}

/// The contract version this SDK binds to; report it from `metadata`.
pub const CONTRACT_VERSION: &str = "2.0.0";

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// What a policy implements.
pub trait Policy {
    /// Name, version and [`CONTRACT_VERSION`]; called once when the policy is loaded.
    fn metadata() -> PolicyMetadata;
    /// Checks the settings JSON; the error says what is wrong.
    fn validate_settings(settings: &str) -> Result<(), String>;
    /// Decides. An error is a policy error: the host fails safe (no remediation).
    fn evaluate(input: &Input<'_>) -> Result<Decision, String>;
}

/// Exports a [`Policy`] as the component's `evaluator`. Only on wasm32: a native build of
/// a policy crate (tests, the profiling harness in `policy-wasm/profile`) exports nothing.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct CmkguardPolicyExport;
            impl $crate::raw::Guest for CmkguardPolicyExport {
                fn metadata() -> $crate::PolicyMetadata {
                    <$policy as $crate::Policy>::metadata()
                }
                fn validate_settings(settings: String) -> Result<(), String> {
                    <$policy as $crate::Policy>::validate_settings(&settings)
                }
                fn evaluate(input: $crate::raw::PolicyInput) -> Result<$crate::Decision, String> {
                    let input = $crate::Input::new(&input)?;
                    <$policy as $crate::Policy>::evaluate(&input)
                }
            }
            $crate::__export_raw!(CmkguardPolicyExport);
        };
    };
}

/// The event, strings borrowed from the input.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub kind: EventKind,
    /// The Event Grid event id (a synthetic id per run and resource for a sweep).
    pub id: &'a str,
    pub time: Timestamp,
    pub subject: &'a str,
}

/// A Key Vault key, as of its current version.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// Versioned key id of the current version.
    pub key_id: &'a str,
    pub vault_uri: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    /// `RSA`, `RSA-HSM`, `EC`, `EC-HSM`, `oct-HSM`, ...
    pub key_type: &'a str,
    /// Modulus size in bits for RSA keys.
    pub key_size: Option<u32>,
    pub enabled: bool,
    pub expires: Option<Timestamp>,
    pub not_before: Option<Timestamp>,
    pub created: Option<Timestamp>,
    /// The key has a rotation policy with a `Rotate` lifetime action.
    pub has_rotation_policy: bool,
    pub vault: VaultFacts,
}

/// One container registry and its encryption settings.
#[derive(Debug, Clone, Copy)]
pub struct Registry<'a> {
    /// Its position in the input: how the decision names it (`ResourceRef::Registry`,
    /// `RotateRegistryKey::registry`); [`DecisionBuilder`] reads it from the `Registry`.
    pub index: u32,
    /// ARM resource id: the only way an action can name this registry.
    pub id: &'a str,
    pub name: &'a str,
    /// `Basic`, `Standard`, `Premium`.
    pub sku: &'a str,
    pub location: &'a str,
    pub encryption_enabled: bool,
    /// The configured key id (versioned or versionless).
    pub key_identifier: Option<&'a str>,
    /// The key version in use.
    pub versioned_key_identifier: Option<&'a str>,
    /// Client id of the user-assigned identity that reaches the key.
    pub identity: Option<&'a str>,
    pub key_rotation_enabled: bool,
    pub last_rotation: Option<Timestamp>,
    pub provisioning_state: Option<&'a str>,
    pub tags: Tags<'a>,
}

/// A registry's tags as (name, value).
#[derive(Clone, Copy)]
pub struct Tags<'a> {
    strings: &'a str,
    /// The registry's tag rows ([`raw::TAG_WORDS`] each).
    rows: &'a [u32],
}

impl std::fmt::Debug for Tags<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> Tags<'a> {
    /// (name, value) pairs, in the order the host gave them.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let strings = self.strings;
        let text = move |offset: u32, len: u32| slice(strings, raw::Span { offset, len }).unwrap_or("");
        self.rows.chunks_exact(raw::TAG_WORDS).map(move |t| (text(t[0], t[1]), text(t[2], t[3])))
    }

    /// The value of a tag (names compare case-insensitively, as in Azure).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(k, _)| eq_ignore_case(k, name)).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.rows.len() / raw::TAG_WORDS
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The policy input with every string borrowed from the contract's string table.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub event: Event<'a>,
    /// The evaluation's "now" (policies have no clock).
    pub now: Timestamp,
    /// Absent when unknown (e.g. a registry written without CMK).
    pub key: Option<Key<'a>>,
    /// The registries in scope.
    pub registries: Vec<Registry<'a>>,
    /// The policy's settings, a JSON document the policy validates itself.
    pub settings: &'a str,
}

fn slice(strings: &str, s: raw::Span) -> Option<&str> {
    let start = s.offset as usize;
    strings.get(start..start.checked_add(s.len as usize)?)
}

impl<'a> Input<'a> {
    /// Resolves the spans of `raw`; an error names a span outside the string table (a
    /// host bug: the policy then reports a policy error instead of guessing).
    pub fn new(raw: &'a raw::PolicyInput) -> Result<Self, String> {
        let strings = raw.strings.as_str();
        let text = |s: raw::Span| {
            slice(strings, s).ok_or_else(|| {
                format!("input: span {}+{} outside the {} bytes of strings", s.offset, s.len, strings.len())
            })
        };
        let opt = |s: Option<raw::Span>| s.map(text).transpose();
        let key = match &raw.key {
            Some(k) => Some(Key {
                key_id: text(k.key_id)?,
                vault_uri: text(k.vault_uri)?,
                name: text(k.name)?,
                version: text(k.version)?,
                key_type: text(k.key_type)?,
                key_size: k.key_size,
                enabled: k.enabled,
                expires: k.expires,
                not_before: k.not_before,
                created: k.created,
                has_rotation_policy: k.has_rotation_policy,
                vault: k.vault,
            }),
            None => None,
        };
        const ROW: usize = raw::RegistryRow::WORDS;
        if !raw.registries.len().is_multiple_of(ROW) || !raw.tags.len().is_multiple_of(raw::TAG_WORDS) {
            return Err(format!(
                "input: {} registry words and {} tag words are not whole rows of {ROW} and {}",
                raw.registries.len(),
                raw.tags.len(),
                raw::TAG_WORDS
            ));
        }
        let mut registries = Vec::with_capacity(raw.registries.len() / ROW);
        for (index, row) in raw.registries.chunks_exact(ROW).enumerate() {
            let r = raw::RegistryRow::read(row.try_into().expect("chunks_exact yields whole rows"));
            let start = r.tags.offset as usize;
            let rows = start
                .checked_add(r.tags.len as usize)
                .and_then(|end| raw.tags.get(start.checked_mul(raw::TAG_WORDS)?..end.checked_mul(raw::TAG_WORDS)?))
                .ok_or_else(|| {
                    format!(
                        "input: tags {}+{} outside the {} tags",
                        r.tags.offset,
                        r.tags.len,
                        raw.tags.len() / raw::TAG_WORDS
                    )
                })?;
            registries.push(Registry {
                // The host's list has at most u32::MAX entries (its length is a u32).
                index: index as u32,
                id: text(r.id)?,
                name: text(r.name)?,
                sku: text(r.sku)?,
                location: text(r.location)?,
                encryption_enabled: r.encryption_enabled,
                key_identifier: opt(r.key_identifier)?,
                versioned_key_identifier: opt(r.versioned_key_identifier)?,
                identity: opt(r.identity)?,
                key_rotation_enabled: r.key_rotation_enabled,
                last_rotation: r.last_rotation,
                provisioning_state: opt(r.provisioning_state)?,
                tags: Tags { strings, rows },
            });
        }
        Ok(Self {
            event: Event {
                kind: raw.event.kind,
                id: text(raw.event.id)?,
                time: raw.event.time,
                subject: text(raw.event.subject)?,
            },
            now: raw.now,
            key,
            registries,
            settings: text(raw.settings)?,
        })
    }
}

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

/// The parts joined into one string: one allocation and copies, none of `format!`'s
/// machinery (which, per message, costs more than the copying in a policy; BENCHMARKS.md,
/// "Policy"). For messages built from strings only.
pub fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| s.push_str(p));
    s
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
    /// Parses a key id; `None` when it is not one. Surrounding whitespace and trailing
    /// slashes are ignored, `:443` after the host is dropped.
    pub fn parse(id: &'a str) -> Option<Self> {
        // One pass over the bytes for the slashes: policies parse a key id per registry
        // and evaluation; the iterator-and-pattern version cost ≈ 170 ns a call, `split_once`
        // (a `memchr` per slash) still ≈ 140 ns in wasm (BENCHMARKS.md, "Policy").
        let rest = id.trim().strip_prefix("https://")?.trim_end_matches('/');
        let mut slashes = [0usize; 3];
        let mut found = 0;
        for (i, b) in rest.bytes().enumerate() {
            if b == b'/' {
                if found == slashes.len() {
                    return None;
                }
                slashes[found] = i;
                found += 1;
            }
        }
        if found < 2 {
            return None;
        }
        // '/' is ASCII: every cut is on a character boundary.
        let mut host = &rest[..slashes[0]];
        let keys = &rest[slashes[0] + 1..slashes[1]];
        if host.is_empty() || !keys.eq_ignore_ascii_case("keys") {
            return None;
        }
        let (name, version) = if found == 3 {
            (&rest[slashes[1] + 1..slashes[2]], Some(&rest[slashes[2] + 1..]))
        } else {
            (&rest[slashes[1] + 1..], None)
        };
        if name.is_empty() {
            return None;
        }
        while let Some(h) = host.strip_suffix(":443") {
            host = h;
        }
        Some(Self { host, name, version })
    }

    /// Same vault and key name (versions aside); Azure compares these case-insensitively.
    pub fn same_key(&self, other: &KeyRef<'_>) -> bool {
        eq_ignore_case(self.host, other.host) && eq_ignore_case(self.name, other.name)
    }
}

/// `a.eq_ignore_ascii_case(b)`, eight bytes at a time while they are equal as they are.
/// In a policy `eq_ignore_ascii_case` compares byte by byte, and ids are long and mostly
/// alike: comparing registry ids this way was 10 % of an evaluation's time, before
/// decisions named registries by index (BENCHMARKS.md, "Policy").
pub fn eq_ignore_case(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    for (p, q) in (&mut x).zip(&mut y) {
        if p != q && !p.eq_ignore_ascii_case(q) {
            return false;
        }
    }
    x.remainder().eq_ignore_ascii_case(y.remainder())
}

/// The value of a registry's tag (tag names compare case-insensitively, as in Azure).
pub fn tag<'a>(registry: &Registry<'a>, name: &str) -> Option<&'a str> {
    registry.tags.get(name)
}

impl From<&Registry<'_>> for ResourceRef {
    fn from(r: &Registry<'_>) -> Self {
        ResourceRef::Registry(r.index)
    }
}

impl From<&Key<'_>> for ResourceRef {
    fn from(_: &Key<'_>) -> Self {
        ResourceRef::Key
    }
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

    /// A finding about `resource`: a `&Registry`, the `&Key` (or [`ResourceRef::Key`]), or
    /// [`ResourceRef::Vault`] (the key's vault).
    pub fn finding(
        &mut self,
        rule_id: &str,
        severity: Severity,
        resource: impl Into<ResourceRef>,
        message: impl Into<String>,
    ) -> &mut Self {
        self.findings.push(Finding {
            rule_id: rule_id.to_owned(),
            severity,
            resource: resource.into(),
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
    pub fn rotate_registry(&mut self, registry: &Registry<'_>, target: RotateTarget) -> &mut Self {
        let index = registry.index;
        let dup = self.actions.iter().any(|a| matches!(a, Action::RotateRegistryKey(r) if r.registry == index));
        if !dup {
            self.actions.push(Action::RotateRegistryKey(RotateRegistryKey { registry: index, target }));
        }
        self
    }

    /// Asks for a new version of the input's key (once).
    pub fn rotate_vault_key(&mut self) -> &mut Self {
        if !self.actions.iter().any(|a| matches!(a, Action::RotateVaultKey)) {
            self.actions.push(Action::RotateVaultKey);
        }
        self
    }

    pub fn notify(
        &mut self,
        channel: &str,
        severity: Severity,
        title: impl Into<String>,
        text: impl Into<String>,
    ) -> &mut Self {
        self.actions.push(Action::Notify(Notify {
            channel: channel.to_owned(),
            severity,
            title: title.into(),
            text: text.into(),
        }));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_ignore_case_agrees_with_std() {
        let words = [
            "",
            "a",
            "A",
            "abcdefgh",
            "ABCDEFGH",
            "abcdefgh1",
            "ABCDEFGH1",
            "abcdefgi",
            "/subscriptions/X/acr01",
            "/SUBSCRIPTIONS/x/ACR01",
            "/subscriptions/x/acr02",
            "é",
            "É",
        ];
        for a in words {
            for b in words {
                assert_eq!(eq_ignore_case(a, b), a.eq_ignore_ascii_case(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn key_ids_parse_like_azure_writes_them() {
        let k = |host, name, version| Some(KeyRef { host, name, version });
        let cases = [
            ("https://kv.vault.azure.net/keys/k", k("kv.vault.azure.net", "k", None)),
            ("https://kv.vault.azure.net/keys/k/", k("kv.vault.azure.net", "k", None)),
            ("https://kv.vault.azure.net/keys/k/v1", k("kv.vault.azure.net", "k", Some("v1"))),
            (" https://kv.vault.azure.net:443/KEYS/k/v1// ", k("kv.vault.azure.net", "k", Some("v1"))),
            ("https://kv.vault.azure.net/secrets/k/v1", None),
            ("https://kv.vault.azure.net/keys/k/v1/x", None),
            ("https://kv.vault.azure.net/keys/k//v1", None),
            ("https://kv.vault.azure.net/keys//v1", None),
            ("https://kv.vault.azure.net/keys", None),
            ("https://kv.vault.azure.net", None),
            ("https:///keys/k", None),
            ("http://kv.vault.azure.net/keys/k", None),
            ("", None),
        ];
        for (id, want) in cases {
            assert_eq!(KeyRef::parse(id), want, "{id:?}");
        }
        let a = KeyRef::parse("https://KV.vault.azure.net/keys/K/1").unwrap();
        assert!(a.same_key(&KeyRef::parse("https://kv.vault.azure.net/keys/k").unwrap()));
    }

    #[test]
    fn input_resolves_spans_and_refuses_ones_outside_the_table() {
        let span = |offset, len| raw::Span { offset, len };
        let strings = "evt-1subjregacr{}ownerteam".to_owned();
        let mut raw = raw::PolicyInput {
            strings,
            event: raw::EventInfo { kind: EventKind::Sweep, id: span(0, 5), time: 1, subject: span(5, 4) },
            now: 2,
            key: None,
            registries: rows(&[raw::RegistryRow {
                id: span(9, 3),
                name: span(12, 3),
                sku: span(0, 0),
                location: span(0, 0),
                encryption_enabled: false,
                key_identifier: None,
                versioned_key_identifier: None,
                identity: None,
                key_rotation_enabled: false,
                last_rotation: None,
                provisioning_state: None,
                tags: span(0, 1),
            }]),
            tags: vec![17, 5, 22, 4],
            settings: span(15, 2),
        };
        let input = Input::new(&raw).unwrap();
        assert_eq!((input.event.id, input.event.subject, input.settings), ("evt-1", "subj", "{}"));
        let r = &input.registries[0];
        assert_eq!((r.index, r.id, r.name, r.tags.get("OWNER")), (0, "reg", "acr", Some("team")));
        raw.registries[16] = 1;
        assert!(Input::new(&raw).unwrap_err().contains("tags 1+1"));
        raw.registries[16] = 0;
        raw.registries.push(0);
        assert!(Input::new(&raw).unwrap_err().contains("22 registry words"));
        raw.registries.pop();
        raw.settings = span(20, 10);
        assert!(Input::new(&raw).unwrap_err().contains("span 20+10"));
    }

    fn rows(registries: &[raw::RegistryRow]) -> Vec<u32> {
        let mut words = Vec::new();
        registries.iter().for_each(|r| r.write(&mut words));
        words
    }

    #[test]
    fn registry_rows_follow_the_documented_layout() {
        let span = |offset, len| raw::Span { offset, len };
        let row = raw::RegistryRow {
            id: span(1, 2),
            name: span(3, 4),
            sku: span(5, 6),
            location: span(7, 8),
            encryption_enabled: true,
            key_identifier: None,
            versioned_key_identifier: Some(span(11, 12)),
            identity: None,
            key_rotation_enabled: false,
            last_rotation: Some(-2),
            provisioning_state: Some(span(15, 16)),
            tags: span(17, 18),
        };
        let words = rows(&[row]);
        // wit/v2/policy.wit, `policy-input.registries`.
        assert_eq!(
            words,
            [
                1,
                2,
                3,
                4,
                5,
                6,
                7,
                8,
                0,
                0,
                11,
                12,
                0,
                0,
                15,
                16,
                17,
                18,
                u32::MAX - 1,
                u32::MAX,
                1 | 1 << 3 | 1 << 5 | 1 << 6
            ]
        );
        let back = raw::RegistryRow::read(words[..].try_into().unwrap());
        assert_eq!(format!("{back:?}"), format!("{row:?}"));
    }

    #[test]
    fn decisions_name_registries_by_index_and_keep_actions_unique() {
        let span = raw::Span { offset: 0, len: 0 };
        let facts = raw::RegistryRow {
            id: span,
            name: span,
            sku: span,
            location: span,
            encryption_enabled: true,
            key_identifier: None,
            versioned_key_identifier: None,
            identity: None,
            key_rotation_enabled: false,
            last_rotation: None,
            provisioning_state: None,
            tags: span,
        };
        let raw = raw::PolicyInput {
            strings: String::new(),
            event: raw::EventInfo { kind: EventKind::Sweep, id: span, time: 0, subject: span },
            now: 0,
            key: None,
            registries: rows(&[facts; 3]),
            tags: vec![],
            settings: span,
        };
        let input = Input::new(&raw).unwrap();
        assert_eq!(input.registries.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2]);
        let mut d = DecisionBuilder::new();
        d.finding("X1", Severity::Low, &input.registries[2], "m")
            .finding("X2", Severity::Low, ResourceRef::Vault, "m")
            .rotate_registry(&input.registries[2], RotateTarget::Versionless)
            .rotate_registry(&input.registries[1], RotateTarget::Versionless)
            .rotate_registry(&input.registries[2], RotateTarget::LatestVersion)
            .rotate_vault_key()
            .rotate_vault_key();
        let d = d.build();
        assert!(matches!(
            d.findings.iter().map(|f| f.resource).collect::<Vec<_>>()[..],
            [ResourceRef::Registry(2), ResourceRef::Vault]
        ));
        let rotated: Vec<u32> = d
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::RotateRegistryKey(r) => Some(r.registry),
                _ => None,
            })
            .collect();
        assert_eq!(rotated, [2, 1]);
        assert_eq!(d.actions.iter().filter(|a| matches!(a, Action::RotateVaultKey)).count(), 1);
    }

    /// The parser as it was before it was rewritten for speed: the reference.
    fn reference_parse(id: &str) -> Option<KeyRef<'_>> {
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
        Some(KeyRef { host: host.trim_end_matches(":443"), name, version })
    }

    /// Key-id-like text: the grammar's pieces, each sometimes bent out of shape.
    fn key_id_like() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = "[a-zA-Z0-9./:-]{0,6}";
        (
            prop::sample::select(vec!["", " ", "\t"]),
            prop::sample::select(vec!["https://", "http://", "HTTPS://", ""]),
            piece,
            prop::sample::select(vec!["", ":443", ":443:443", ":8443"]),
            prop::sample::select(vec!["/keys/", "/KEYS/", "/secrets/", "/keys//", "/", "//keys/"]),
            piece,
            proptest::option::of(piece),
            prop::sample::select(vec!["", "/", "//"]),
        )
            .prop_map(|(lead, scheme, host, port, keys, name, version, trail)| {
                let version = version.map(|v| format!("/{v}")).unwrap_or_default();
                format!("{lead}{scheme}{host}{port}{keys}{name}{version}{trail}{lead}")
            })
    }

    proptest::proptest! {
        #[test]
        fn eq_ignore_case_is_std_on_any_text(a in "[a-zA-Z0-9/éÉ_.-]{0,40}", flip in proptest::collection::vec(proptest::bool::ANY, 40)) {
            // b: a with some letters' case flipped, so equal-ignoring-case pairs are common.
            let b: String = a.chars().zip(flip.iter().chain(std::iter::repeat(&false)))
                .map(|(c, f)| if *f { if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() } } else { c })
                .collect();
            proptest::prop_assert_eq!(eq_ignore_case(&a, &b), a.eq_ignore_ascii_case(&b));
            proptest::prop_assert_eq!(eq_ignore_case(&a, ""), a.is_empty());
        }

        #[test]
        fn key_ref_parse_is_the_reference_on_key_id_like_text(id in key_id_like()) {
            proptest::prop_assert_eq!(KeyRef::parse(&id), reference_parse(&id), "{:?}", id);
        }

        #[test]
        fn key_ref_parse_is_the_reference_on_any_text(id in "\\PC{0,40}") {
            proptest::prop_assert_eq!(KeyRef::parse(&id), reference_parse(&id), "{:?}", id);
        }

        #[test]
        fn spans_outside_the_table_are_errors_never_panics(
            strings in "\\PC{0,24}",
            spans in proptest::collection::vec((0u32..40, 0u32..40), 6),
            big in proptest::bool::ANY,
        ) {
            let span = |i: usize| {
                let (o, l) = spans[i];
                raw::Span { offset: if big && i == 5 { u32::MAX } else { o }, len: l }
            };
            let raw = raw::PolicyInput {
                strings,
                event: raw::EventInfo { kind: EventKind::Sweep, id: span(0), time: 0, subject: span(1) },
                now: 0,
                key: None,
                registries: rows(&[raw::RegistryRow {
                    id: span(2),
                    name: span(3),
                    sku: span(4),
                    location: span(4),
                    encryption_enabled: true,
                    key_identifier: Some(span(5)),
                    versioned_key_identifier: None,
                    identity: None,
                    key_rotation_enabled: false,
                    last_rotation: None,
                    provisioning_state: None,
                    tags: raw::Span { offset: 0, len: 0 },
                }]),
                tags: vec![],
                settings: span(0),
            };
            if let Ok(input) = Input::new(&raw) {
                // Whatever resolved is a slice of the table.
                proptest::prop_assert!(raw.strings.contains(input.registries[0].id));
            }
        }
    }
}

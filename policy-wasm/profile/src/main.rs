//! A native harness for profiling the default policy's own work (no wasmtime, no host):
//! evaluates the sample input of `crates/policy/src/sample.rs` (a key near expiry used by
//! 10 registries, half pinned to an older version, two tags each) in a loop.
//!
//! ```text
//! cd policy-wasm && cargo build --release -p cmkguard-policy-profile --target-dir ../target/policy-native
//! perf record -g ../target/policy-native/release/cmkguard-policy-profile 2000000
//! ```
//!
//! Natively the policy uses the system allocator instead of the SDK's bump allocator,
//! and code runs as native code instead of Cranelift's: the proportions carry over to
//! the component, the absolute times do not.

use std::time::Instant;

use cmkguard_default_policy::DefaultPolicy;
use cmkguard_policy_sdk::raw::{EventInfo, KeyFacts, PolicyInput, RegistryRow, Span, TAG_WORDS};
use cmkguard_policy_sdk::{EventKind, Input, Policy, VaultFacts};

struct Table(String);

impl Table {
    fn span(&mut self, s: &str) -> Span {
        let offset = self.0.len() as u32;
        self.0.push_str(s);
        Span { offset, len: s.len() as u32 }
    }
}

/// The host's encoding of `sample_input(n)`.
fn sample(n: usize) -> PolicyInput {
    let mut t = Table(String::new());
    let vault = "https://kv-prod.vault.azure.net";
    let key = format!("{vault}/keys/acr-cmk");
    let now = 1_795_435_200; // 2026-11-23T12:00:00Z
    let event =
        EventInfo { kind: EventKind::KeyNearExpiry, id: t.span("evt-1"), time: now - 60, subject: t.span("acr-cmk") };
    let key_facts = KeyFacts {
        key_id: t.span(&format!("{key}/a1b2c3d4e5f60718293a4b5c6d7e8f90")),
        vault_uri: t.span(&format!("{vault}/")),
        name: t.span("acr-cmk"),
        version: t.span("a1b2c3d4e5f60718293a4b5c6d7e8f90"),
        key_type: t.span("RSA"),
        key_size: Some(3072),
        enabled: true,
        expires: Some(now + 20 * 86_400),
        not_before: None,
        created: Some(now - 300 * 86_400),
        has_rotation_policy: false,
        vault: VaultFacts { soft_delete: Some(true), purge_protection: Some(true) },
    };
    let mut tags = Vec::new();
    let registries = (0..n)
        .map(|i| {
            let kid = if i % 2 == 0 { key.clone() } else { format!("{key}/0f1e2d3c4b5a69788796a5b4c3d2e1f0") };
            let first = (tags.len() / TAG_WORDS) as u32;
            for (name, value) in [("owner", format!("team-{}", i % 3)), ("env", "prod".to_owned())] {
                let (name, value) = (t.span(name), t.span(&value));
                tags.extend([name.offset, name.len, value.offset, value.len]);
            }
            RegistryRow {
                id: t.span(&format!(
                    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-acr/providers/Microsoft.ContainerRegistry/registries/acr{i:02}"
                )),
                name: t.span(&format!("acr{i:02}")),
                sku: t.span("Premium"),
                location: t.span("westeurope"),
                encryption_enabled: true,
                key_identifier: Some(t.span(&kid)),
                versioned_key_identifier: Some(t.span(&format!("{key}/0f1e2d3c4b5a69788796a5b4c3d2e1f0"))),
                identity: Some(t.span("11111111-2222-3333-4444-555555555555")),
                key_rotation_enabled: i % 2 == 0,
                last_rotation: None,
                provisioning_state: None,
                tags: Span { offset: first, len: 2 },
            }
        })
        .fold(Vec::new(), |mut words, row: RegistryRow| {
            row.write(&mut words);
            words
        });
    let settings = t.span("{}");
    PolicyInput { strings: t.0, event, now, key: Some(key_facts), registries, tags, settings }
}

fn main() {
    let iterations: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let raw = sample(10);
    let first = DefaultPolicy::evaluate(&Input::new(&raw).unwrap()).unwrap();
    println!("{} findings, {} actions", first.findings.len(), first.actions.len());
    let started = Instant::now();
    let mut n = 0;
    for _ in 0..iterations {
        let input = Input::new(std::hint::black_box(&raw)).unwrap();
        let d = DefaultPolicy::evaluate(&input).unwrap();
        n += d.findings.len() + d.actions.len();
    }
    let per = started.elapsed() / iterations as u32;
    println!("{iterations} evaluations: {per:?} each ({n} outputs)");
    if std::env::args().nth(2).is_some() {
        pieces(&raw);
    }
}

#[allow(dead_code)]
fn pieces(raw: &PolicyInput) {
    let n = 200_000u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Input::new(std::hint::black_box(raw)).unwrap());
    }
    println!("Input::new {:?}", t.elapsed() / n);
    let input = Input::new(raw).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        for r in &input.registries {
            std::hint::black_box(r.key_identifier.and_then(cmkguard_policy_sdk::KeyRef::parse));
        }
    }
    println!("10 KeyRef::parse {:?}", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(DefaultPolicy::validate_settings(std::hint::black_box("{}")).unwrap());
    }
    println!("settings {{}} {:?}", t.elapsed() / n);
}

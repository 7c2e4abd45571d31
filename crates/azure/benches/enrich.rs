//! Benchmark: enrich one Key Vault key event whose key is used by 50 registries, against
//! azsim in-process on loopback (real HTTPS, real token and challenge flow already warm).
//!
//! `cold`: no vault cache (every event reads key, rotation policy, vault and Resource
//! Graph); `warm`: the vault's safety net cached as in a long-running handler.
//! Results and method: BENCHMARKS.md, "Azure enrichment".

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use chrono::Utc;
use cmkguard_azure::Enricher;
use cmkguard_model::{Event, EventKind, KeyEvent, KeyId, ResourceId};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let spec =
        azsim::estate::EstateSpec { registries: 56, subscriptions: 1, resource_groups_per_subscription: 1, keys: 1 };
    let sim = rt.block_on(common::start_with(azsim::estate::generate(&spec), azsim::Options::default()));
    let version = sim.key_versions("estate-kv", "cmk00").pop().expect("key version");
    let vault_id = {
        let reg = sim.registry_id("reg00001").expect("registry");
        let sub = reg.split('/').nth(2).expect("subscription").to_owned();
        ResourceId::parse(&format!(
            "/subscriptions/{sub}/resourceGroups/rg00/providers/Microsoft.KeyVault/vaults/estate-kv"
        ))
        .expect("vault id")
    };
    let event = Event {
        id: "bench".into(),
        time: Utc::now(),
        subject: "cmk00".into(),
        event_type: "Microsoft.KeyVault.KeyNewVersionCreated".into(),
        kind: EventKind::KeyNewVersionCreated(KeyEvent {
            vault_resource_id: Some(vault_id),
            vault_name: "estate-kv".into(),
            key_name: "cmk00".into(),
            version: version.clone(),
            key_id: KeyId::parse(&sim.key_id("estate-kv", "cmk00", Some(&version))).expect("key id"),
            not_before: None,
            expires: None,
        }),
    };
    let env = common::clients(sim);
    let budget = Duration::from_secs(25);
    let cold = Enricher::new(env.clients.clone(), Vec::new(), budget, "{}".into()).with_cache_ttl(Duration::ZERO);
    let warm = Enricher::new(env.clients.clone(), Vec::new(), budget, "{}".into());
    // Warm up tokens, challenge and connections; check the setup is what we claim.
    let input = rt.block_on(cold.enrich(&event, Utc::now())).expect("enrich");
    assert_eq!(input.registries.len(), 50, "the key must be used by 50 registries");
    assert!(input.key.as_ref().is_some_and(|k| k.vault.purge_protection == Some(true)));
    rt.block_on(warm.enrich(&event, Utc::now())).expect("enrich");

    let mut g = c.benchmark_group("enrich_key_event_50_registries");
    g.sample_size(100).measurement_time(Duration::from_secs(8));
    g.bench_function("cold", |b| b.iter(|| rt.block_on(cold.enrich(&event, Utc::now())).expect("enrich")));
    g.bench_function("warm", |b| b.iter(|| rt.block_on(warm.enrich(&event, Utc::now())).expect("enrich")));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

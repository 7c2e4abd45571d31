//! Decode throughput: a 100-event Event Grid batch (mixed key and registry events) and the
//! same events inside Functions invocations (string-encoded, as the host sends them).
//! Run: `cargo bench -p cmkguard --bench decode`. Results go to BENCHMARKS.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

fn fixtures() -> std::path::PathBuf {
    std::env::var("CMKGUARD_FIXTURES")
        .map(Into::into)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/azure-fixtures"))
}

fn load(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(rel)).unwrap()).unwrap()
}

fn batch() -> Vec<Value> {
    let mut key = load("eventgrid/keyvault.SecretNewVersionCreated.eventgrid.json");
    key["eventType"] = "Microsoft.KeyVault.KeyNearExpiry".into();
    key["data"]["ObjectType"] = "Key".into();
    key["data"]["Id"] = key["data"]["Id"].as_str().unwrap().replace("/secrets/", "/keys/").into();
    let mut reg = load("eventgrid/resources.ResourceWriteSuccess.eventgrid.json");
    let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/reg";
    reg["data"]["operationName"] = "Microsoft.ContainerRegistry/registries/write".into();
    reg["data"]["resourceUri"] = id.into();
    (0..100)
        .map(|i| {
            let mut e = if i % 2 == 0 { key.clone() } else { reg.clone() };
            e["id"] = format!("event-{i}").into();
            e
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = batch();
    let body = serde_json::to_vec(&events).unwrap();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(100));
    let keys_only: Vec<Value> = events.iter().step_by(2).chain(events.iter().step_by(2)).cloned().collect();
    let keys_body = serde_json::to_vec(&keys_only).unwrap();
    g.bench_function("event-grid batch of 100 key events", |b| {
        b.iter(|| {
            let d = cmkguard::events::decode_events_json(std::hint::black_box(&keys_body)).unwrap();
            assert_eq!(d.len(), 100);
        })
    });
    g.bench_function("event-grid batch of 100 (half registry writes with claims)", |b| {
        b.iter(|| {
            let d = cmkguard::events::decode_events_json(std::hint::black_box(&body)).unwrap();
            assert_eq!(d.len(), 100);
        })
    });
    let invocations: Vec<Vec<u8>> = events
        .iter()
        .map(|e| serde_json::to_vec(&json!({"Data": {"event": e.to_string()}, "Metadata": {}})).unwrap())
        .collect();
    g.bench_function("100 functions invocations (string-encoded)", |b| {
        b.iter(|| {
            for inv in &invocations {
                let i = cmkguard::events::functions::parse_invocation(std::hint::black_box(inv)).unwrap();
                i.decode_trigger().unwrap();
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

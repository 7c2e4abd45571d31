//! Resource Graph throughput of azsim over HTTPS on loopback: one 1000-row page and a full
//! 10,000-registry sweep through `$skipToken` paging (results in BENCHMARKS.md, "azsim").

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};

const SWEEP: &str = "Resources | where type =~ 'microsoft.containerregistry/registries' | project id, name, location, tags, identity, properties";

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let scenario = azsim::estate::generate(&azsim::estate::EstateSpec::default());
    let sim = rt.block_on(azsim::Azsim::start(scenario, azsim::Options::default())).expect("azsim");
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).expect("ca");
    let mut b = reqwest::Client::builder().tls_certs_only([ca]);
    for h in sim.host_names() {
        b = b.resolve(&h, sim.https_addr());
    }
    let client = b.build().expect("client");
    let token: String = rt.block_on(async {
        let v: Value = client
            .get(sim.identity_endpoint())
            .query(&[("resource", azsim::ARM_AUDIENCE), ("api-version", "2019-08-01")])
            .header("X-IDENTITY-HEADER", sim.identity_header())
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        v["access_token"].as_str().expect("access_token").to_owned()
    });
    let url = format!("{}/providers/Microsoft.ResourceGraph/resources?api-version=2024-04-01", sim.arm_endpoint());
    let page = |options: Value| {
        let (client, url, token) = (&client, &url, &token);
        async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"query": SWEEP, "options": options}))
                .send()
                .await
                .expect("query");
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("page json")
        }
    };

    let mut g = c.benchmark_group("azsim_resource_graph");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("page_1000_rows", |b| {
        b.iter(|| rt.block_on(page(json!({"$top": 1000}))));
    });
    g.bench_function("sweep_10000_registries", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut opts = json!({"$top": 1000});
                let mut rows = 0;
                loop {
                    let p = page(opts).await;
                    rows += p["count"].as_u64().unwrap_or(0);
                    match p.get("$skipToken").and_then(Value::as_str) {
                        Some(t) => opts = json!({"$top": 1000, "$skipToken": t}),
                        None => break,
                    }
                }
                assert_eq!(rows, 10_000);
            })
        });
    });
    let kid = sim.key_id("estate-kv", "cmk03", None);
    g.bench_function("registries_using_one_key", |b| {
        b.iter(|| {
            rt.block_on(async {
                let q = format!(
                    "Resources | where type =~ 'microsoft.containerregistry/registries' and tolower(tostring(properties.encryption.keyVaultProperties.keyIdentifier)) startswith '{kid}' | project id, name, properties"
                );
                let r = client.post(&url).bearer_auth(&token).json(&json!({"query": q, "options": {"$top": 1000}})).send().await.expect("query");
                let v: Value = r.json().await.expect("json");
                assert_eq!(v["totalRecords"], 1000);
            })
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

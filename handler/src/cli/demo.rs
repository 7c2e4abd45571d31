//! `cmkguard demo`: the whole pipeline on one machine, no Azure account needed.
//!
//! Starts the local Azure emulator (azsim) in-process with the demo estate, a local chat
//! sink, a SQLite ledger in a temporary directory and the default policy in `enforce`
//! mode; serves the real HTTP router on a loopback port and drives a scenario through
//! it (a registry created without CMK, a key near expiry, a new key version, cmkguard's
//! own write coming back, a rotation refused by preflight, and a redelivery); prints the
//! timeline and the estate before and after. Only built with the `demo` cargo feature
//! (on by default; the production package leaves it out). The helpers here also serve the
//! in-process tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azsim::{Azsim, Options, Running, Scenario};
use chrono::{DateTime, Utc};
use cmkguard_azure::cloud::{CloudProfile, TestExtras};
use cmkguard_azure::http::{AzureHttp, build_client};
use cmkguard_azure::{AccessToken, AzureClients, AzureError, Enricher, TokenCache, TokenSource};
use cmkguard_ledger::Ledger;
use cmkguard_notify::sink::ChatSink;
use serde_json::{Value, json};

use super::{CliError, exit};
use crate::config::{Channel, ChannelKind, Config};
use crate::pipeline::Pipeline;
use crate::{AppState, act, decide, enrich};

/// The demo estate (azsim scenario format, see azsim/SCENARIO.md).
pub const DEMO_SCENARIO: &str = include_str!("../../../azsim/scenarios/demo.json");

#[derive(Debug, clap::Args)]
#[command(long_about = "Run cmkguard end to end on this machine against a local Azure emulator.\n\n\
Starts azsim (registries, a vault, keys) in-process, a local chat sink, a SQLite ledger in a \
temporary directory and the default policy in enforce mode, then sends events through the real \
HTTP route and prints what was decided and done, and the estate before and after.")]
pub struct Args {
    /// Print each step's full answer as JSON as well.
    #[arg(long)]
    pub verbose: bool,
}

/// The demo scenario, parsed.
pub fn scenario() -> Result<Scenario, String> {
    Scenario::from_json(DEMO_SCENARIO).map_err(|e| format!("demo scenario: {e}"))
}

/// The estate `cmkguard demo` runs on: the demo scenario plus `acrpinnedweak`, pinned to a
/// key in `kv-nopurge` (no purge protection), so the timeline can show preflight refusing
/// a rotation the policy asked for.
pub fn demo_estate() -> Result<Scenario, String> {
    let mut doc: Value = serde_json::from_str(DEMO_SCENARIO).map_err(|e| format!("demo scenario: {e}"))?;
    let registries = doc["registries"].as_array_mut().ok_or("demo scenario: no registries")?;
    registries.push(json!({
        "name": "acrpinnedweak", "resourceGroup": "rg-registries", "identities": ["id-acr-cmk"],
        "encryption": { "key": "kv-nopurge/cmk-weak/@0", "identity": "id-acr-cmk" },
        "tags": { "team": "ml" }
    }));
    Scenario::from_json(&doc.to_string()).map_err(|e| format!("demo estate: {e}"))
}

/// Tokens from azsim's managed-identity endpoint (App Service protocol).
#[derive(Debug)]
pub struct SimTokens {
    endpoint: String,
    header: String,
    client: reqwest::Client,
}

#[async_trait]
impl TokenSource for SimTokens {
    async fn fetch(&self, audience: &str) -> Result<AccessToken, AzureError> {
        let err = |m: String| AzureError::Credential { audience: audience.to_owned(), message: m, retryable: true };
        let r = self
            .client
            .get(&self.endpoint)
            .query(&[("resource", audience), ("api-version", "2019-08-01")])
            .header("X-IDENTITY-HEADER", &self.header)
            .send()
            .await
            .map_err(|e| err(e.without_url().to_string()))?;
        if !r.status().is_success() {
            return Err(err(format!("HTTP {}", r.status())));
        }
        let v: Value = r.json().await.map_err(|e| err(e.without_url().to_string()))?;
        let token = v["access_token"].as_str().ok_or_else(|| err("no access_token".into()))?;
        let exp =
            v["expires_on"].as_str().and_then(|s| s.parse::<i64>().ok()).ok_or_else(|| err("no expires_on".into()))?;
        Ok(AccessToken::new(token, DateTime::<Utc>::from_timestamp(exp, 0).unwrap_or_else(Utc::now)))
    }

    fn describe(&self) -> String {
        "azsim managed identity".into()
    }
}

/// Azure clients for a running azsim: its CA (written under `dir`) trusted, every host
/// resolved to loopback, tokens from its identity endpoint.
pub fn azsim_clients(sim: &Running, dir: &Path) -> Result<AzureClients, String> {
    let ca = dir.join(format!("azsim-ca-{}.pem", sim.port()));
    std::fs::write(&ca, sim.ca_pem()).map_err(|e| format!("writing azsim's CA: {e}"))?;
    let url = |s: &str| reqwest::Url::parse(s).map_err(|e| format!("azsim URL {s:?}: {e}"));
    let profile = CloudProfile {
        name: "azsim".into(),
        arm_endpoint: url(&sim.arm_endpoint())?,
        resource_graph_endpoint: url(&sim.arm_endpoint())?,
        key_vault_suffix: azsim::VAULT_SUFFIX.into(),
        managed_hsm_suffix: azsim::HSM_SUFFIX.into(),
        arm_audience: azsim::ARM_AUDIENCE.into(),
        key_vault_audience: azsim::VAULT_AUDIENCE.into(),
        managed_hsm_audience: format!("https://{}", azsim::HSM_SUFFIX),
        authority_host: url(&format!("https://{}", azsim::LOGIN_HOST))?,
        identity_endpoint: Some(url(&sim.identity_endpoint())?),
        port: Some(sim.port()),
        test: TestExtras { extra_ca_pem: Some(ca), resolve_to_loopback: true },
    };
    let client = build_client(&profile).map_err(|e| e.to_string())?;
    let tokens = SimTokens {
        endpoint: sim.identity_endpoint(),
        header: sim.identity_header().to_owned(),
        client: client.clone(),
    };
    let http = AzureHttp::with_client(profile, Arc::new(TokenCache::new(Arc::new(tokens))), client);
    Ok(AzureClients::from_http(http))
}

/// Configuration for a local run: `mode`, a SQLite ledger at `ledger`, no listener of its own.
pub fn local_config(mode: crate::config::Mode, ledger: &Path) -> Result<Config, String> {
    let ledger = format!("sqlite:{}", ledger.display());
    Config::from_args(["--mode", mode.as_str(), "--ledger", ledger.as_str(), "--port", "7071", "--bind", "127.0.0.1"])
}

/// A Teams chat channel on the sink (registered there), as configuration names it.
pub fn sink_channel(sink: &ChatSink, name: &str) -> Channel {
    if let Err(e) = sink.channel(name, cmkguard_notify::ChannelKind::Teams, None) {
        tracing::warn!(error = %e, "chat sink refused the channel");
    }
    Channel {
        name: name.to_owned(),
        kind: ChannelKind::Teams,
        url: sink.url(cmkguard_notify::ChannelKind::Teams, name),
        secret: None,
    }
}

/// The real pipeline (Azure enrich, the configured policy, the act stage) over `clients`.
pub async fn pipeline(config: &Config, clients: AzureClients, ledger: Arc<dyn Ledger>) -> Result<Pipeline, String> {
    let enricher = Enricher::new(
        clients.clone(),
        config.azure.subscriptions.clone(),
        config.azure.budget,
        config.policy.settings.clone(),
    );
    let mut p = Pipeline::logging_only();
    p.enrich = Arc::new(enrich::AzureEnrich::new(enricher));
    p.decide = Arc::new(decide::PolicyDecide::from_config(&config.policy).await?);
    p.act = Arc::new(act::ActStage::new(config, ledger, Some(clients))?);
    Ok(p)
}

/// An Event Grid `ResourceWriteSuccess` for a registry (what ARM sends after a create or update).
pub fn registry_write_event(registry_id: &str, caller: &str, time: DateTime<Utc>) -> Value {
    let sub = registry_id.split('/').nth(2).unwrap_or_default();
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "topic": format!("/subscriptions/{sub}"),
        "subject": registry_id,
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": time.to_rfc3339(),
        "dataVersion": "2",
        "metadataVersion": "1",
        "data": {
            "operationName": "Microsoft.ContainerRegistry/registries/write",
            "resourceUri": registry_id,
            "status": "Succeeded",
            "correlationId": uuid::Uuid::new_v4().to_string(),
            "subscriptionId": sub,
            "claims": {"appid": caller},
        }
    })
}

/// The key id a registry is configured with, as azsim holds it.
fn registry_key(sim: &Running, name: &str) -> String {
    let doc = sim.registry(name).unwrap_or(Value::Null);
    let enc = &doc["properties"]["encryption"];
    if enc["status"].as_str() != Some("enabled") {
        return "no customer-managed key".into();
    }
    enc["keyVaultProperties"]["keyIdentifier"].as_str().unwrap_or("?").to_owned()
}

fn print_estate(sim: &Running, title: &str, names: &[String]) {
    println!("\n== Estate {title} ==");
    for n in names {
        println!("  {n:<14} {}", registry_key(sim, n));
    }
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_owned() } else { format!("{}…", s.chars().take(max - 1).collect::<String>()) }
}

/// Prints what the answer says was decided and done.
fn print_answer(answer: &Value) {
    let answer = answer.get("outcome").unwrap_or(answer);
    for r in answer["reports"].as_array().into_iter().flatten() {
        let decided = &r["decided"];
        if decided["outcome"] == "policy-error" {
            println!("    policy error: {}", decided["error"].as_str().unwrap_or_default());
        } else {
            let policy = &decided["policy"];
            println!(
                "    decided by {} {} (sha256 {})",
                policy["name"].as_str().unwrap_or("?"),
                policy["version"].as_str().unwrap_or("?"),
                short(policy["digest"].as_str().unwrap_or(""), 13)
            );
            for f in decided["decision"]["findings"].as_array().into_iter().flatten() {
                println!(
                    "    finding  {} {:<8} {}",
                    f["rule_id"].as_str().unwrap_or("?"),
                    f["severity"].as_str().unwrap_or("?"),
                    short(f["message"].as_str().unwrap_or(""), 110)
                );
            }
        }
        let actions = r["actions"].as_array().cloned().unwrap_or_default();
        if actions.is_empty() {
            println!("    no action");
        }
        for a in actions {
            let target = a["target"].as_str().unwrap_or("");
            let target = target.rsplit('/').next().unwrap_or(target);
            println!(
                "    action   {:<20} {:<9} {:<14} {}",
                a["action"].as_str().unwrap_or("?"),
                a["status"].as_str().unwrap_or("?"),
                target,
                short(a["detail"].as_str().unwrap_or(""), 90)
            );
        }
    }
    for i in answer["ignored"].as_array().into_iter().flatten() {
        println!("    ignored: {}", i["reason"].as_str().unwrap_or(""));
    }
    for f in answer["failed"].as_array().into_iter().flatten() {
        println!("    failed: {}", f["error"]["message"].as_str().unwrap_or(""));
    }
}

pub async fn run(args: Args) -> Result<u8, CliError> {
    crate::logging::init(crate::config::LogFormat::Text, "warn");
    let err = |m: String| CliError { code: 1, message: m };
    let dir = tempfile::tempdir().map_err(|e| err(format!("temp dir: {e}")))?;
    let scenario = demo_estate().map_err(err)?;
    let sim = Azsim::start(scenario, Options::default()).await.map_err(|e| err(format!("azsim: {e}")))?;
    let sink = ChatSink::start().await.map_err(|e| err(format!("chat sink: {e}")))?;
    let mut config = local_config(crate::config::Mode::Enforce, &dir.path().join("ledger.db")).map_err(err)?;
    config.channels = vec![sink_channel(&sink, "ops")];
    let key = uuid::Uuid::new_v4().simple().to_string();
    config.webhook_key = Some(crate::config::Secret::new(key.clone()));
    let ledger = cmkguard_ledger::open(&format!("sqlite:{}", dir.path().join("ledger.db").display()), None)
        .await
        .map_err(|e| err(format!("ledger: {e}")))?;
    let clients = azsim_clients(&sim, dir.path()).map_err(err)?;
    let pipeline = pipeline(&config, clients, ledger.clone()).await.map_err(err)?;
    let state = AppState::with_pipeline(config, pipeline);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| err(format!("listen: {e}")))?;
    let addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
    let server = tokio::spawn(async move { axum::serve(listener, crate::api::router(state)).await });
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/api/events");

    let names: Vec<String> =
        ["acrnocmk", "acrpinned", "acrauto", "acrexpiring", "acrweakvault", "acrpinnedweak"].map(String::from).to_vec();
    println!(
        "cmkguard demo: azsim on {}, cmkguard on http://{addr}, ledger {}, mode enforce, policy default",
        sim.https_addr(),
        dir.path().join("ledger.db").display()
    );
    print_estate(&sim, "before", &names);
    println!("\n== Timeline ==");

    let post = |event: Value| {
        let http = http.clone();
        let url = url.clone();
        let key = key.clone();
        async move {
            let r = http
                .post(&url)
                .header("x-cmkguard-key", key)
                .json(&json!([event]))
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| format!("POST /api/events: {e}"))?;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            Ok::<_, String>((status, body))
        }
    };
    let mut step = 0;
    let mut show = |title: &str, event: &Value, (status, body): (reqwest::StatusCode, Value)| {
        step += 1;
        println!("\n{step}. {title}");
        println!(
            "    event    {} {} → HTTP {}",
            event["eventType"].as_str().unwrap_or("?"),
            short(event["id"].as_str().unwrap_or(""), 13),
            status.as_u16()
        );
        print_answer(&body);
        if args.verbose {
            println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        }
    };

    let nocmk = sim.registry_id("acrnocmk").ok_or_else(|| err("demo estate has no acrnocmk".into()))?;
    let e1 = registry_write_event(&nocmk, "platform-team", sim.now());
    show("Registry acrnocmk is created without a customer-managed key", &e1, post(e1.clone()).await.map_err(err)?);

    let before = sim.events().len();
    sim.emit_key_event("Microsoft.KeyVault.KeyNearExpiry", "kv-demo", "cmk-expiring");
    let e2 = sim.events().get(before).cloned().ok_or_else(|| err("azsim emitted no near-expiry event".into()))?;
    show("Key cmk-expiring is ten days from expiry", &e2, post(e2.clone()).await.map_err(err)?);

    let before = sim.events().len();
    sim.rotate_key("kv-demo", "cmk-pinned");
    let e3 = sim.events().get(before).cloned().ok_or_else(|| err("azsim emitted no new-version event".into()))?;
    show("A new version of cmk-pinned is created", &e3, post(e3.clone()).await.map_err(err)?);

    let writes: Vec<Value> = sim
        .events()
        .into_iter()
        .skip(before + 1)
        .filter(|e| e["eventType"] == "Microsoft.Resources.ResourceWriteSuccess")
        .collect();
    for w in writes {
        let name = w["subject"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_owned();
        show(
            &format!("cmkguard's own change to {name} comes back as an event"),
            &w,
            post(w.clone()).await.map_err(err)?,
        );
    }

    let before = sim.events().len();
    sim.rotate_key("kv-nopurge", "cmk-weak");
    let e4 = sim.events().get(before).cloned().ok_or_else(|| err("azsim emitted no new-version event".into()))?;
    show(
        "A new version of cmk-weak, in vault kv-nopurge without purge protection: preflight refuses to rotate acrpinnedweak onto it",
        &e4,
        post(e4.clone()).await.map_err(err)?,
    );

    show("Event Grid redelivers the near-expiry event", &e2, post(e2.clone()).await.map_err(err)?);

    print_estate(&sim, "after", &names);
    println!("\n== Chat messages ({}) ==", sink.received().len());
    for m in sink.received() {
        println!("  {}", m.summary());
    }
    let records = ledger.list(&Default::default()).await.map_err(|e| err(format!("ledger: {e}")))?;
    println!("\n== Audit trail: {} record(s) in {} ==", records.len(), dir.path().join("ledger.db").display());
    for r in records.iter().rev() {
        let n = r.actions.len();
        println!("  {}  {:<44} {n} action outcome(s)", r.recorded_at.format("%H:%M:%S%.3f"), r.event_type);
    }
    server.abort();
    sim.shutdown().await;
    Ok(exit::OK)
}

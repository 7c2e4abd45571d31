//! Shared helpers for the Azure clients' integration tests: start azsim in-process, a
//! cloud profile for it (CA file + loopback resolution inside the client), and a test
//! token source that speaks the App Service managed-identity protocol to azsim.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use azsim::{Azsim, Options, Running, Scenario};
use chrono::{DateTime, Utc};
use cmkguard_azure::cloud::{CloudProfile, TestExtras};
use cmkguard_azure::http::{AzureHttp, RetryPolicy, build_client};
use cmkguard_azure::{AccessToken, AzureClients, AzureError, TokenCache, TokenSource};
use reqwest::Url;

pub fn demo() -> Scenario {
    Scenario::from_json(include_str!("../../../../azsim/scenarios/demo.json")).expect("demo scenario")
}

pub async fn start(options: Options) -> Running {
    start_with(demo(), options).await
}

pub async fn start_with(scenario: Scenario, options: Options) -> Running {
    Azsim::start(scenario, options).await.expect("azsim starts")
}

/// azsim's CA written to a unique temp file (profiles name a CA by path).
pub fn ca_file(sim: &Running) -> PathBuf {
    let p = std::env::temp_dir().join(format!("cmkguard-azure-test-ca-{}-{}.pem", std::process::id(), sim.port()));
    std::fs::write(&p, sim.ca_pem()).expect("write CA");
    p
}

/// The cloud profile of a running azsim.
pub fn profile(sim: &Running) -> CloudProfile {
    CloudProfile {
        name: "azsim".into(),
        arm_endpoint: Url::parse(&sim.arm_endpoint()).unwrap(),
        resource_graph_endpoint: Url::parse(&sim.arm_endpoint()).unwrap(),
        key_vault_suffix: azsim::VAULT_SUFFIX.into(),
        managed_hsm_suffix: azsim::HSM_SUFFIX.into(),
        arm_audience: azsim::ARM_AUDIENCE.into(),
        key_vault_audience: azsim::VAULT_AUDIENCE.into(),
        managed_hsm_audience: format!("https://{}", azsim::HSM_SUFFIX),
        authority_host: Url::parse(&format!("https://{}", azsim::LOGIN_HOST)).unwrap(),
        identity_endpoint: Some(Url::parse(&sim.identity_endpoint()).unwrap()),
        port: Some(sim.port()),
        test: TestExtras { extra_ca_pem: Some(ca_file(sim)), resolve_to_loopback: true },
    }
}

/// App Service managed identity (2019-08-01) against azsim's identity endpoint: a test
/// token source (production uses azure_identity's ManagedIdentityCredential).
pub struct MsiSource {
    pub endpoint: String,
    pub header: String,
    pub client: reqwest::Client,
    pub fetches: AtomicU32,
}

#[async_trait]
impl TokenSource for MsiSource {
    async fn fetch(&self, audience: &str) -> Result<AccessToken, AzureError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let err = |m: String| AzureError::Credential { audience: audience.to_owned(), message: m, retryable: true };
        let r = self
            .client
            .get(&self.endpoint)
            .query(&[("resource", audience), ("api-version", "2019-08-01")])
            .header("X-IDENTITY-HEADER", &self.header)
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !r.status().is_success() {
            let retryable = r.status().is_server_error();
            return Err(AzureError::Credential {
                audience: audience.to_owned(),
                message: format!("HTTP {}", r.status()),
                retryable,
            });
        }
        let v: serde_json::Value = r.json().await.map_err(|e| err(e.to_string()))?;
        let token = v["access_token"].as_str().ok_or_else(|| err("no access_token".into()))?;
        let exp: i64 =
            v["expires_on"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| err("no expires_on".into()))?;
        Ok(AccessToken::new(token, DateTime::<Utc>::from_timestamp(exp, 0).unwrap()))
    }
    fn describe(&self) -> String {
        "azsim managed identity (test)".into()
    }
}

pub struct Env {
    pub sim: Running,
    pub clients: AzureClients,
    pub source: Arc<MsiSource>,
}

/// Clients for `sim` with a fast retry policy.
pub fn clients(sim: Running) -> Env {
    clients_with(
        sim,
        RetryPolicy { base_backoff: std::time::Duration::from_millis(20), ..RetryPolicy::default() },
        std::time::Duration::from_secs(300),
    )
}

pub fn clients_with(sim: Running, retry: RetryPolicy, refresh_margin: std::time::Duration) -> Env {
    let profile = profile(&sim);
    let client = build_client(&profile).expect("client");
    let source = Arc::new(MsiSource {
        endpoint: sim.identity_endpoint(),
        header: sim.identity_header().to_owned(),
        client: client.clone(),
        fetches: AtomicU32::new(0),
    });
    let tokens = Arc::new(TokenCache::with_margin(source.clone(), refresh_margin));
    let http = AzureHttp::with_client(profile, tokens, client).with_retry(retry);
    Env { sim, clients: AzureClients::from_http(http), source }
}

pub fn sub() -> String {
    "0b1f6471-1bf0-4dda-aec3-cb9272f09590".into()
}

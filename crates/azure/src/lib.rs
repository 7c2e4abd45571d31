//! Azure clients (managed identity, ARM, Key Vault, Resource Graph) and the enrich stage.
//!
//! - [`cloud`]: cloud profiles and the outbound allowlist (SSRF guard);
//! - [`credential`]: tokens (azure_identity behind a small trait) cached per audience;
//! - [`http`]: the shared HTTP core: retries, `Retry-After`, the time [`Budget`], the Key
//!   Vault 401 challenge;
//! - [`arm`], [`keyvault`], [`graph`]: the clients;
//! - [`facts`]: Azure documents → the policy's facts;
//! - [`enrich`]: event → policy input;
//! - [`permissions`]: the RBAC actions each call needs;
//! - [`doctor`]: post-deployment checks of all of the above.

use std::sync::Arc;
use std::time::Duration;

pub mod arm;
pub mod cloud;
pub mod credential;
pub mod doctor;
pub mod enrich;
pub mod error;
pub mod facts;
pub mod graph;
pub mod http;
pub mod keyvault;
pub mod permissions;

pub use arm::Arm;
pub use cloud::{Allowlist, CloudProfile};
pub use credential::{AccessToken, TokenCache, TokenSource};
pub use enrich::Enricher;
pub use error::{AzureError, Class};
pub use graph::ResourceGraph;
pub use http::{AzureHttp, Budget, SharedTls};
pub use keyvault::KeyVault;

/// The Azure part of the configuration.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// `public`, `usgov`, `china` or a JSON profile path.
    pub cloud: String,
    /// Client id of the user-assigned managed identity.
    pub client_id: Option<String>,
    /// Subscriptions in scope (empty: all the identity can see).
    pub subscriptions: Vec<String>,
    /// Time budget for Azure calls per invocation.
    pub budget: Duration,
}

/// The three clients over one HTTP core and token cache.
#[derive(Debug, Clone)]
pub struct AzureClients {
    pub http: Arc<AzureHttp>,
    pub arm: Arm,
    pub keyvault: KeyVault,
    pub graph: ResourceGraph,
}

impl AzureClients {
    /// Clients for `profile` with tokens from `source`.
    pub fn new(profile: CloudProfile, source: Arc<dyn TokenSource>) -> Result<Self, AzureError> {
        let client = http::build_client(&profile)?;
        Ok(Self::from_http(AzureHttp::with_client(profile, Arc::new(TokenCache::new(source)), client)))
    }

    pub fn from_http(http: AzureHttp) -> Self {
        let http = Arc::new(http);
        Self {
            arm: Arm::new(http.clone()),
            keyvault: KeyVault::new(http.clone()),
            graph: ResourceGraph::new(http.clone()),
            http,
        }
    }

    /// Production wiring: the profile named by `settings.cloud`, credentials chosen from
    /// the environment (`env` looks variables up; see
    /// [`credential::IdentitySource::from_environment`]). Nothing is contacted yet.
    pub fn from_settings(settings: &AzureSettings, env: impl Fn(&str) -> Option<String>) -> Result<Self, AzureError> {
        Self::from_settings_with(settings, env, &http::SharedTls::load()?)
    }

    /// [`AzureClients::from_settings`] with the process's shared TLS settings (a server
    /// loads the CA roots once for all its HTTP clients).
    pub fn from_settings_with(
        settings: &AzureSettings,
        env: impl Fn(&str) -> Option<String>,
        tls: &http::SharedTls,
    ) -> Result<Self, AzureError> {
        let profile = CloudProfile::load(&settings.cloud)?;
        let client = http::build_client_with(&profile, tls)?;
        // The credential shares the client: same roots, and a test profile's resolver.
        let source = credential::IdentitySource::from_environment(
            &profile,
            settings.client_id.as_deref(),
            env,
            Some(client.clone()),
        )?;
        let tokens = Arc::new(TokenCache::new(Arc::new(source)));
        Ok(Self::from_http(AzureHttp::with_client(profile, tokens, client)))
    }
}

//! azsim: a local Azure stand-in for tests and the demo — ARM registries with LROs, vault
//! management, Key Vault keys, Resource Graph (a KQL subset) and a managed-identity
//! endpoint, over HTTPS with a generated CA, seeded from a scenario file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), azsim::AzsimError> {
//! let scenario = azsim::Scenario::from_file("azsim/scenarios/demo.json".as_ref())?;
//! let sim = azsim::Azsim::start(scenario, azsim::Options::default()).await?;
//! println!("ARM at {}, identity at {}", sim.arm_endpoint(), sim.identity_endpoint());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

// Handlers return ready HTTP responses as their error values; they are built once per
// request, so boxing them would only add noise.
#![allow(clippy::result_large_err)]

mod arm;
mod control;
pub mod estate;
mod events;
pub mod faults;
mod http;
mod identity;
mod keyvault;
pub mod kql;
pub mod scenario;
pub mod tls;
mod world;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{FaultKind, Route};
pub use scenario::{Scenario, ScenarioError};
pub use world::{
    ARM_AUDIENCE, ARM_HOST, CallRecord, HSM_SUFFIX, LOGIN_HOST, RegistryWrite, VAULT_AUDIENCE, VAULT_SUFFIX,
};

/// Host names a client must resolve to azsim's address (plus one per vault:
/// `<vault>.vault.azsim.test`; see [`Running::host_names`]).
pub const FIXED_HOSTS: &[&str] = &[ARM_HOST, LOGIN_HOST];

/// Why azsim could not start.
#[derive(Debug, thiserror::Error)]
pub enum AzsimError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Run settings (the scenario holds the data).
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to listen on (loopback by default).
    pub bind: IpAddr,
    /// HTTPS port for every Azure host (0 = pick a free one).
    pub https_port: u16,
    /// Plain-HTTP port of the managed-identity endpoint (0 = pick a free one).
    pub identity_port: u16,
    /// Lifetime of issued tokens (short values let clients' refresh be tested).
    pub token_lifetime: Duration,
    /// `X-IDENTITY-HEADER` value; random when None.
    pub identity_header: Option<String>,
    /// Times an operation-status poll answers `InProgress` before `Succeeded`.
    pub lro_polls: u32,
    /// `Retry-After` seconds on LRO responses (real ARM: 10+; 0 keeps tests fast).
    pub lro_retry_after: u64,
    /// Key Vault page size when the client sends no `maxresults` (Key Vault's max is 25).
    pub kv_page_size: usize,
    /// Resource Graph page size when the request has no `$top` (ARG's default is 100).
    pub rg_default_top: usize,
    /// Webhook that receives the Event Grid events azsim's changes cause.
    pub emit_events_to: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            https_port: 0,
            identity_port: 0,
            token_lifetime: Duration::from_secs(3600),
            identity_header: None,
            lro_polls: 1,
            lro_retry_after: 0,
            kv_page_size: 25,
            rg_default_top: 100,
            emit_events_to: None,
        }
    }
}

/// Entry point.
#[derive(Debug)]
pub struct Azsim;

impl Azsim {
    /// Bind both listeners, generate the PKI, seed the state and start serving.
    pub async fn start(scenario: Scenario, options: Options) -> Result<Running, AzsimError> {
        scenario.validate()?;
        let https_addr = SocketAddr::new(options.bind, options.https_port);
        let https =
            TcpListener::bind(https_addr).await.map_err(|source| AzsimError::Bind { addr: https_addr, source })?;
        let id_addr = SocketAddr::new(options.bind, options.identity_port);
        let ident = TcpListener::bind(id_addr).await.map_err(|source| AzsimError::Bind { addr: id_addr, source })?;
        let https_addr = https.local_addr().map_err(|source| AzsimError::Bind { addr: https_addr, source })?;
        let identity_addr = ident.local_addr().map_err(|source| AzsimError::Bind { addr: id_addr, source })?;
        let pki = tls::generate()?;
        let urls = world::Urls { port: https_addr.port() };
        let world = world::World::new(&scenario, urls, options.lro_polls);
        let identity_header = options.identity_header.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let (events_tx, emitter) = match &options.emit_events_to {
            Some(url) => {
                let (tx, task) = events::spawn(url.clone());
                (Some(tx), Some(task))
            }
            None => (None, None),
        };
        let shared = Arc::new(http::Shared {
            world: Mutex::new(world),
            settings: http::Settings {
                token_lifetime: options.token_lifetime,
                identity_header: identity_header.clone(),
                lro_retry_after: options.lro_retry_after,
                kv_page_size: options.kv_page_size,
                rg_default_top: options.rg_default_top.clamp(1, 1000),
            },
            events_tx,
            emitted: Mutex::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        let tasks = vec![
            tokio::spawn(http::serve(https, Some(acceptor), shared.clone(), false, stop_rx.clone())),
            tokio::spawn(http::serve(ident, None, shared.clone(), true, stop_rx)),
        ];
        tracing::info!(%https_addr, %identity_addr, "azsim started");
        Ok(Running {
            https_addr,
            identity_addr,
            identity_header,
            ca_pem: pki.ca_pem,
            shared,
            stop: stop_tx,
            tasks,
            emitter,
        })
    }
}

/// A running azsim: endpoints, CA, state accessors, fault injection.
pub struct Running {
    https_addr: SocketAddr,
    identity_addr: SocketAddr,
    identity_header: String,
    ca_pem: String,
    shared: Arc<http::Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    emitter: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("https_addr", &self.https_addr)
            .field("identity_addr", &self.identity_addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The HTTPS socket every Azure host name must resolve to.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }
    pub fn port(&self) -> u16 {
        self.https_addr.port()
    }
    /// The identity listener's socket.
    pub fn identity_addr(&self) -> SocketAddr {
        self.identity_addr
    }
    /// `IDENTITY_ENDPOINT` for App Service-style managed identity.
    pub fn identity_endpoint(&self) -> String {
        format!("http://{}/msi/token", self.identity_addr)
    }
    /// IMDS-style token endpoint (`Metadata: true`).
    pub fn imds_endpoint(&self) -> String {
        format!("http://{}/metadata/identity/oauth2/token", self.identity_addr)
    }
    /// `IDENTITY_HEADER` value.
    pub fn identity_header(&self) -> &str {
        &self.identity_header
    }
    /// PEM of the CA that signed azsim's certificate (trust it in test clients).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// ARM and Resource Graph base URL, e.g. `https://management.azsim.test:PORT`.
    pub fn arm_endpoint(&self) -> String {
        format!("https://{ARM_HOST}:{}", self.port())
    }
    /// A vault's URI, e.g. `https://kv1.vault.azsim.test:PORT/`.
    pub fn vault_uri(&self, vault: &str) -> String {
        format!("https://{vault}.{VAULT_SUFFIX}:{}/", self.port())
    }
    /// Every host name azsim serves for this scenario (map them all to `https_addr`).
    pub fn host_names(&self) -> Vec<String> {
        let w = self.shared.lock();
        let mut v: Vec<String> = FIXED_HOSTS.iter().map(|s| s.to_string()).collect();
        v.extend(w.vaults.values().map(|x| format!("{}.{VAULT_SUFFIX}", x.name.to_ascii_lowercase())));
        v
    }
    /// The scenario's tenant id.
    pub fn tenant(&self) -> String {
        self.shared.lock().tenant.clone()
    }
    /// Endpoints as JSON (what the binary prints).
    pub fn endpoints_json(&self) -> Value {
        serde_json::json!({
            "https": self.https_addr.to_string(),
            "port": self.port(),
            "armEndpoint": self.arm_endpoint(),
            "resourceGraphEndpoint": self.arm_endpoint(),
            "identityEndpoint": self.identity_endpoint(),
            "imdsEndpoint": self.imds_endpoint(),
            "identityHeader": self.identity_header,
            "armAudience": ARM_AUDIENCE,
            "vaultAudience": VAULT_AUDIENCE,
            "vaultSuffix": VAULT_SUFFIX,
            "hsmSuffix": HSM_SUFFIX,
            "tenant": self.tenant(),
            "hosts": self.host_names(),
        })
    }

    // ------------------------------------------------------------ state for assertions

    /// A registry's ARM body by name (as GET returns it).
    pub fn registry(&self, name: &str) -> Option<Value> {
        let w = self.shared.lock();
        w.registries.values().find(|r| r.name.eq_ignore_ascii_case(name)).map(|r| r.doc.clone())
    }
    /// A registry's resource id by name.
    pub fn registry_id(&self, name: &str) -> Option<String> {
        let w = self.shared.lock();
        w.registries.values().find(|r| r.name.eq_ignore_ascii_case(name)).map(|r| r.id.clone())
    }
    /// Number of registries.
    pub fn registry_count(&self) -> usize {
        self.shared.lock().registries.len()
    }
    /// Version ids of a key, oldest first.
    pub fn key_versions(&self, vault: &str, key: &str) -> Vec<String> {
        let w = self.shared.lock();
        w.vaults
            .get(&vault.to_ascii_lowercase())
            .and_then(|v| v.keys.get(&key.to_ascii_lowercase()))
            .map(|k| k.versions.iter().map(|v| v.id.clone()).collect())
            .unwrap_or_default()
    }
    /// Versioned key id (`https://<vault>.vault.azsim.test:PORT/keys/<key>/<version>`).
    pub fn key_id(&self, vault: &str, key: &str, version: Option<&str>) -> String {
        self.shared.lock().urls.kid(vault, key, version)
    }
    /// Calls served on a route (since start).
    pub fn calls(&self, route: Route) -> u64 {
        let w = self.shared.lock();
        if route == Route::Any {
            return w.call_counts.values().sum();
        }
        w.call_counts.get(&route).copied().unwrap_or(0)
    }
    /// The call log (capped at 100,000 entries).
    pub fn call_log(&self) -> Vec<CallRecord> {
        self.shared.lock().calls.clone()
    }
    /// Every accepted registry write (PUT/PATCH), with the key it asked for; never capped.
    pub fn registry_writes(&self) -> Vec<RegistryWrite> {
        self.shared.lock().writes.clone()
    }
    /// Every event azsim produced (also those not delivered to a webhook).
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.clone()
    }
    /// Scenario time now.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.shared.lock().now()
    }

    // ------------------------------------------------------------ faults and changes

    /// Fail the next `count` calls of `route` with `status` (429/500/503 …) and an optional
    /// `Retry-After` in seconds. Faults apply after the token check.
    pub fn fail_next(&self, route: Route, count: u32, status: u16, retry_after: Option<u64>) {
        self.shared.lock().faults.add(route, count, FaultKind::Status { status, retry_after });
    }
    /// Close the connection without an answer on the next `count` calls of `route`.
    pub fn drop_next(&self, route: Route, count: u32) {
        self.shared.lock().faults.add(route, count, FaultKind::Drop);
    }
    /// Delay every call of `route` (`Route::Any`: all) by `delay` (zero removes it).
    pub fn set_latency(&self, route: Route, delay: Duration) {
        self.shared.lock().faults.set_latency(route, delay);
    }
    /// Remove all faults and latencies.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }
    /// The next registry operation ends `Failed` with this error.
    pub fn fail_next_operation(&self, code: &str, message: &str) {
        self.shared.lock().lro_fail_next = Some((code.to_owned(), message.to_owned()));
    }
    /// Expire every issued token now (clients must get new ones).
    pub fn expire_tokens(&self) {
        self.shared.lock().expire_tokens();
    }
    /// Set scenario time.
    pub fn set_time(&self, t: chrono::DateTime<chrono::Utc>) {
        self.shared.lock().clock.set(t);
    }
    /// Rotate a key out of band (as Key Vault's auto-rotation would); returns the new version.
    pub fn rotate_key(&self, vault: &str, key: &str) -> Option<String> {
        let v = self.shared.lock().rotate_key(&vault.to_ascii_lowercase(), &key.to_ascii_lowercase());
        self.flush();
        v
    }
    /// Enable or disable a key version (`None`: the current one).
    pub fn set_key_enabled(&self, vault: &str, key: &str, version: Option<&str>, enabled: bool) -> bool {
        let mut w = self.shared.lock();
        let Some(k) =
            w.vaults.get_mut(&vault.to_ascii_lowercase()).and_then(|v| v.keys.get_mut(&key.to_ascii_lowercase()))
        else {
            return false;
        };
        let v = match version {
            Some(id) => k.versions.iter_mut().find(|v| v.id.eq_ignore_ascii_case(id)),
            None => k.versions.last_mut(),
        };
        match v {
            Some(v) => {
                v.enabled = enabled;
                true
            }
            None => false,
        }
    }
    /// Emit a Key Vault key event (e.g. `Microsoft.KeyVault.KeyNearExpiry`) for the current version.
    pub fn emit_key_event(&self, event_type: &str, vault: &str, key: &str) {
        let version = self.key_versions(vault, key).pop().unwrap_or_default();
        self.shared.lock().push_key_event(event_type, vault, key, &version);
        self.flush();
    }

    fn flush(&self) {
        let Some(tx) = &self.shared.events_tx else { return };
        let w = self.shared.lock();
        let mut done = self.shared.emitted.lock().unwrap_or_else(|p| p.into_inner());
        for ev in &w.events[*done..] {
            let _ = tx.send(ev.clone());
        }
        *done = w.events.len();
    }

    /// Stop serving (open connections are closed).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(e) = self.emitter.take() {
            e.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        if let Some(e) = &self.emitter {
            e.abort();
        }
    }
}

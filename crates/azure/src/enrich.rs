//! The enrich stage's Azure side: a domain event → the policy input (key facts with the
//! vault's safety net, and the registries in scope), within one time budget.
//!
//! - key events: the key's current version, its rotation policy and vault, and every
//!   registry configured with the key (Resource Graph), fetched concurrently;
//! - registry writes: the registry (ARM, fresh) and its key's facts (none without CMK);
//! - sweeps: the same per registry, with key and vault facts cached for a few minutes
//!   so one run does not fetch the same key for every registry. A sweep that already has
//!   the registry from Resource Graph (whose rows carry the same `properties` as an ARM
//!   GET, read by the same [`crate::facts::registry_facts`]) passes it to
//!   [`Enricher::registry_input`] and skips the per-registry ARM GET; it fetches each
//!   distinct key once up front with [`Enricher::prefetch_keys`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cmkguard_model::facts::EventInfo;
use cmkguard_model::{Event, EventKind, KeyFacts, KeyId, PolicyInput, RegistryFacts, ResourceId, Shared, VaultFacts};

use crate::error::AzureError;
use crate::facts::{rsa_bits, unix};
use crate::http::Budget;
use crate::{AzureClients, cloud::Service};

/// How long sweep caches keep key and vault facts.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);

/// Builds [`PolicyInput`]s from Azure.
pub struct Enricher {
    clients: AzureClients,
    subscriptions: Vec<String>,
    budget: Duration,
    settings: String,
    cache_ttl: Duration,
    /// Shared, so a sweep hands each registry's input the cached facts, not a copy.
    keys: Mutex<HashMap<String, (Instant, Shared<KeyFacts>)>>,
    vaults: Mutex<HashMap<String, (Instant, VaultFacts)>>,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("cloud", &self.clients.http.profile().name)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Enricher {
    /// `settings`: the policy's settings JSON, passed through to the input.
    pub fn new(clients: AzureClients, subscriptions: Vec<String>, budget: Duration, settings: String) -> Self {
        Self {
            clients,
            subscriptions,
            budget,
            settings,
            cache_ttl: DEFAULT_CACHE_TTL,
            keys: Mutex::default(),
            vaults: Mutex::default(),
        }
    }

    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    pub fn clients(&self) -> &AzureClients {
        &self.clients
    }

    /// The facts for one event.
    pub async fn enrich(&self, event: &Event, now: DateTime<Utc>) -> Result<PolicyInput, AzureError> {
        let budget = Budget::new(self.budget);
        let (key, registries) = match &event.kind {
            EventKind::KeyNearExpiry(k) | EventKind::KeyExpired(k) | EventKind::KeyNewVersionCreated(k) => {
                let (key, regs) = tokio::join!(
                    self.key_facts(&k.key_id, k.vault_resource_id.as_ref(), false, &budget),
                    self.clients.graph.registries_using_key(&k.key_id, &self.subscriptions, &budget)
                );
                (Some(key?), regs?)
            }
            EventKind::RegistryWritten(w) => self.registry_and_key(&w.registry, false, &budget).await?,
            EventKind::Sweep { registry } => self.registry_and_key(registry, true, &budget).await?,
        };
        Ok(self.input(event, now, key, registries))
    }

    /// The policy input for `event` from the facts gathered for it.
    fn input(
        &self,
        event: &Event,
        now: DateTime<Utc>,
        key: Option<Shared<KeyFacts>>,
        registries: Vec<RegistryFacts>,
    ) -> PolicyInput {
        PolicyInput {
            event: EventInfo::from(event),
            now,
            key,
            registries: registries.into(),
            settings: self.settings.clone(),
        }
    }

    async fn registry_and_key(
        &self,
        id: &ResourceId,
        cached: bool,
        budget: &Budget,
    ) -> Result<(Option<Shared<KeyFacts>>, Vec<RegistryFacts>), AzureError> {
        let registry = self.clients.arm.get_registry(id, budget).await?.facts;
        self.key_of(registry, cached, budget).await
    }

    /// The facts for a sweep event whose registry facts the caller already has (a
    /// Resource Graph row): only the key's facts are fetched (cached for the run).
    pub async fn registry_input(
        &self,
        event: &Event,
        registry: RegistryFacts,
        now: DateTime<Utc>,
    ) -> Result<PolicyInput, AzureError> {
        let budget = Budget::new(self.budget);
        let (key, registries) = self.key_of(registry, true, &budget).await?;
        Ok(self.input(event, now, key, registries))
    }

    /// Fetches every distinct key the registries use into the cache, at most
    /// `concurrency` at once. Failures are left for the per-registry lookup to report.
    pub async fn prefetch_keys(&self, registries: &[RegistryFacts], concurrency: usize) {
        use futures::StreamExt;
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<KeyId> = registries
            .iter()
            .filter_map(|r| registry_key(r).ok().flatten())
            .filter(|k| seen.insert(k.versionless().to_string().to_ascii_lowercase()))
            .collect();
        let budget = Budget::new(self.budget);
        futures::stream::iter(keys)
            .for_each_concurrent(concurrency.max(1), |k| {
                let budget = &budget;
                async move {
                    if let Err(e) = self.key_facts(&k, None, true, budget).await {
                        tracing::debug!(key = %k, error = %e, "key prefetch failed; retried per registry");
                    }
                }
            })
            .await;
    }

    /// The registry's key facts (none without CMK, or when the key is gone or out of reach).
    async fn key_of(
        &self,
        registry: RegistryFacts,
        cached: bool,
        budget: &Budget,
    ) -> Result<(Option<Shared<KeyFacts>>, Vec<RegistryFacts>), AzureError> {
        let key_id = registry_key(&registry).unwrap_or_else(|e| {
            tracing::warn!(registry = %registry.id, error = %e, "registry's key identifier does not parse; no key facts");
            None
        });
        let key = match key_id {
            None => None,
            Some(k) => match self.key_facts(&k, None, cached, budget).await {
                Ok(f) => Some(f),
                // A key that is gone, or in a vault outside this cloud, is itself a fact
                // the policy reports on (the registry is then checked without key facts).
                Err(e @ (AzureError::NotAllowed { .. } | AzureError::Status { status: 404, .. })) => {
                    tracing::warn!(registry = %registry.id, error = %e, "registry's key could not be read");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        Ok((key, vec![registry]))
    }

    /// The key's current version, rotation policy and vault safety net.
    pub async fn key_facts(
        &self,
        key: &KeyId,
        vault_id: Option<&ResourceId>,
        cached: bool,
        budget: &Budget,
    ) -> Result<Shared<KeyFacts>, AzureError> {
        let cache_key = key.versionless().to_string().to_ascii_lowercase();
        if cached
            && let Some((at, f)) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key)
            && at.elapsed() < self.cache_ttl
        {
            return Ok(f.clone());
        }
        let latest = key.versionless();
        let kv = &self.clients.keyvault;
        let (bundle, policy, vault) = tokio::join!(
            kv.get_key(&latest, budget),
            kv.get_rotation_policy(&latest, budget),
            self.vault_facts(key, vault_id, budget)
        );
        let bundle = bundle?;
        let policy = policy?;
        let vault = vault?;
        let kid = KeyId::parse(&bundle.key.kid).map_err(|e| AzureError::decode("keyvault.get_key", e.to_string()))?;
        let is_rsa = bundle.key.kty.to_ascii_uppercase().starts_with("RSA");
        let facts = Shared::new(KeyFacts {
            key_id: bundle.key.kid.clone(),
            vault_uri: key.vault_uri(),
            name: kid.name().to_owned(),
            version: kid.version().unwrap_or_default().to_owned(),
            key_type: bundle.key.kty.clone(),
            key_size: if is_rsa { bundle.key.n.as_deref().and_then(rsa_bits) } else { None },
            // Key Vault always sends `enabled`; if not, do not claim the key is usable.
            enabled: bundle.attributes.enabled.unwrap_or(false),
            expires: unix(bundle.attributes.exp),
            not_before: unix(bundle.attributes.nbf),
            created: unix(bundle.attributes.created),
            has_rotation_policy: policy.is_some_and(|p| p.rotates()),
            vault,
        });
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, (Instant::now(), facts.clone()));
        Ok(facts)
    }

    /// Soft delete and purge protection of the key's vault (cached per vault host).
    async fn vault_facts(
        &self,
        key: &KeyId,
        vault_id: Option<&ResourceId>,
        budget: &Budget,
    ) -> Result<VaultFacts, AzureError> {
        let host = key.host().to_owned();
        if let Some((at, f)) = self.vaults.lock().unwrap_or_else(|p| p.into_inner()).get(&host)
            && at.elapsed() < self.cache_ttl
        {
            return Ok(f.clone());
        }
        let url = reqwest::Url::parse(&key.vault_uri()).map_err(|e| AzureError::Invalid(e.to_string()))?;
        let service = self.clients.http.allowlist().check("enrich.vault_facts", &url)?;
        let facts = if service == Service::ManagedHsm {
            // Soft delete is always on for Managed HSM; purge protection is not read here.
            VaultFacts { soft_delete: Some(true), purge_protection: None }
        } else {
            let id = match vault_id.filter(|v| v.resource_type().eq_ignore_ascii_case("Microsoft.KeyVault/vaults")) {
                Some(v) => Some(v.clone()),
                None => {
                    let name = host.split('.').next().unwrap_or_default();
                    self.clients.graph.find_vault(name, &self.subscriptions, budget).await?
                }
            };
            match id {
                Some(id) => self.clients.arm.get_vault(&id, budget).await?,
                None => {
                    tracing::warn!(vault = %host, "vault not visible to Resource Graph; safety net not confirmed");
                    VaultFacts { soft_delete: None, purge_protection: None }
                }
            }
        };
        self.vaults.lock().unwrap_or_else(|p| p.into_inner()).insert(host, (Instant::now(), facts.clone()));
        Ok(facts)
    }
}

/// The key a registry is configured with (`None` without CMK); `Err` when its key
/// identifier does not parse.
fn registry_key(registry: &RegistryFacts) -> Result<Option<KeyId>, cmkguard_model::resource::IdError> {
    registry.key_identifier.as_deref().filter(|_| registry.encryption_enabled).map(KeyId::parse).transpose()
}

/// Shared so the handler can keep one enricher for every request.
pub type SharedEnricher = Arc<Enricher>;

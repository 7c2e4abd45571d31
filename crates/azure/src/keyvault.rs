//! Key Vault (and Managed HSM) data plane: get a key (latest or a version), list its
//! versions (`nextLink` paging, followed as given but only inside the allowlist), rotate
//! it, read its rotation policy. Authentication follows the 401 challenge flow (see
//! [`crate::http::Auth::KeyVault`]).

use std::sync::Arc;

use cmkguard_model::KeyId;
use reqwest::{Method, Url};
use serde_json::Value;

use crate::error::AzureError;
use crate::facts::{KeyBundle, KeyItem, RotationPolicy, prop};
use crate::http::{Auth, AzureHttp, Budget, Call};

pub const API_VERSION: &str = "7.5";

/// The Key Vault data-plane client (one for every vault of the profile).
#[derive(Debug, Clone)]
pub struct KeyVault {
    http: Arc<AzureHttp>,
}

impl KeyVault {
    pub fn new(http: Arc<AzureHttp>) -> Self {
        Self { http }
    }

    fn url(&self, key: &KeyId, tail: &str) -> Result<Url, AzureError> {
        let mut u = Url::parse(&format!("{}/keys/{}{tail}", key.vault_uri(), key.name()))
            .map_err(|e| AzureError::Invalid(format!("key id {key} does not make a URL: {e}")))?;
        u.query_pairs_mut().append_pair("api-version", API_VERSION);
        Ok(u)
    }

    /// The key at the id's version, or the latest version for a versionless id.
    pub async fn get_key(&self, key: &KeyId, budget: &Budget) -> Result<KeyBundle, AzureError> {
        const OP: &str = "keyvault.get_key";
        let tail = key.version().map(|v| format!("/{v}")).unwrap_or_default();
        let url = self.url(key, &tail)?;
        let reply = self.http.send(Call::new(OP, Method::GET, url, Auth::KeyVault), budget).await?.success()?;
        reply.json()
    }

    /// Every version of the key (all pages).
    pub async fn list_versions(&self, key: &KeyId, budget: &Budget) -> Result<Vec<KeyItem>, AzureError> {
        const OP: &str = "keyvault.list_versions";
        let mut url = self.url(key, "/versions")?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            if !seen.insert(url.to_string()) {
                return Err(AzureError::decode(OP, "nextLink repeats a page already read"));
            }
            if seen.len() > 1000 {
                return Err(AzureError::decode(OP, "more than 1000 pages"));
            }
            let reply =
                self.http.send(Call::new(OP, Method::GET, url.clone(), Auth::KeyVault), budget).await?.success()?;
            let page: Value = reply.json()?;
            for item in prop(&page, "value").and_then(Value::as_array).into_iter().flatten() {
                out.push(
                    serde_json::from_value(item.clone())
                        .map_err(|e| AzureError::decode(OP, format!("key item: {e}")))?,
                );
            }
            match prop(&page, "nextLink").and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()) {
                // Followed as given (it may carry :443 and another api-version); the
                // allowlist check in `send` refuses a link to anywhere else.
                Some(next) => {
                    url = Url::parse(next).map_err(|e| AzureError::decode(OP, format!("nextLink is not a URL: {e}")))?
                }
                None => return Ok(out),
            }
        }
    }

    /// Creates a new version of the key (`POST /keys/{name}/rotate`).
    pub async fn rotate_key(&self, key: &KeyId, budget: &Budget) -> Result<KeyBundle, AzureError> {
        const OP: &str = "keyvault.rotate_key";
        let url = self.url(key, "/rotate")?;
        let reply = self.http.send(Call::new(OP, Method::POST, url, Auth::KeyVault), budget).await?.success()?;
        reply.json()
    }

    /// The key's rotation policy; `None` when the key has none (404).
    pub async fn get_rotation_policy(
        &self,
        key: &KeyId,
        budget: &Budget,
    ) -> Result<Option<RotationPolicy>, AzureError> {
        const OP: &str = "keyvault.get_rotation_policy";
        let url = self.url(key, "/rotationpolicy")?;
        let reply = self.http.send(Call::new(OP, Method::GET, url, Auth::KeyVault), budget).await?;
        if reply.status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let reply = reply.success()?;
        Ok(Some(reply.json()?))
    }
}

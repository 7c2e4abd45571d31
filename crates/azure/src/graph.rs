//! Azure Resource Graph: which registries use a key, every registry for a sweep, and a
//! vault's resource id by name, with `$skipToken` paging.
//!
//! Queries stay inside a small KQL subset (the one azsim implements, see azsim/README.md):
//! `Resources | where type =~ '…' | where … | project …` with `=~`, `startswith`,
//! `tolower(tostring(…))` and `and`/`or`. Values put into a query come from parsed ids
//! and are escaped; results are filtered again exactly in Rust.

use std::sync::Arc;

use cmkguard_model::{KeyId, RegistryFacts, ResourceId};
use reqwest::{Method, Url};
use serde_json::{Value, json};

use crate::error::AzureError;
use crate::facts::{self, prop};
use crate::http::{Auth, AzureHttp, Budget, Call};

pub const API_VERSION: &str = "2024-04-01";
/// Rows per page (`$top`, at most 1000).
pub const PAGE_SIZE: u32 = 1000;

const REGISTRY_COLUMNS: &str = "id, name, type, location, sku, tags, identity, properties";

/// The Resource Graph client.
#[derive(Debug, Clone)]
pub struct ResourceGraph {
    http: Arc<AzureHttp>,
    page_size: u32,
}

/// A KQL string literal (single quotes; `'` and `\` escaped).
pub fn kql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The query for registries whose configured key is `key` (any version, any case).
pub fn registries_using_key_query(key: &KeyId) -> String {
    let versionless = key.versionless().to_string().to_ascii_lowercase();
    let mut prefixes = vec![format!("{versionless}/"), versionless.clone()];
    // The same key written with an explicit default port.
    if !key.host().contains(':') {
        let with_port = format!("https://{}:443/keys/{}", key.host(), key.name()).to_ascii_lowercase();
        prefixes.push(with_port);
    }
    let cond = prefixes
        .iter()
        .map(|p| {
            format!(
                "tolower(tostring(properties.encryption.keyVaultProperties.keyIdentifier)) startswith {}",
                kql_string(p)
            )
        })
        .collect::<Vec<_>>()
        .join(" or ");
    format!(
        "Resources | where type =~ 'microsoft.containerregistry/registries' | where {cond} | project {REGISTRY_COLUMNS}"
    )
}

impl ResourceGraph {
    pub fn new(http: Arc<AzureHttp>) -> Self {
        Self { http, page_size: PAGE_SIZE }
    }

    /// Smaller pages (tests of the paging).
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, PAGE_SIZE);
        self
    }

    /// Runs `query` over `subscriptions` (all the caller can see when empty), every page.
    pub async fn query(
        &self,
        operation: &'static str,
        subscriptions: &[String],
        query: &str,
        budget: &Budget,
    ) -> Result<Vec<Value>, AzureError> {
        let mut url: Url = self
            .http
            .profile()
            .resource_graph_endpoint
            .join("/providers/Microsoft.ResourceGraph/resources")
            .map_err(|e| AzureError::Invalid(format!("Resource Graph URL: {e}")))?;
        url.query_pairs_mut().append_pair("api-version", API_VERSION);
        let mut rows = Vec::new();
        let mut skip_token: Option<String> = None;
        for _ in 0..1000 {
            let mut options = json!({ "$top": self.page_size, "resultFormat": "objectArray" });
            if let Some(t) = &skip_token {
                options["$skipToken"] = Value::String(t.clone());
            }
            let mut body = json!({ "query": query, "options": options });
            if !subscriptions.is_empty() {
                body["subscriptions"] = json!(subscriptions);
            }
            let reply = self
                .http
                .send(Call::new(operation, Method::POST, url.clone(), Auth::Arm).body(&body), budget)
                .await?
                .success()?;
            let page: Value = reply.json()?;
            let data = prop(&page, "data")
                .ok_or_else(|| AzureError::decode(operation, "Resource Graph answer without data"))?;
            match data {
                Value::Array(a) => rows.extend(a.iter().cloned()),
                // `table` result format: not requested; refuse rather than misread.
                _ => return Err(AzureError::decode(operation, "Resource Graph data is not an object array")),
            }
            match prop(&page, "$skipToken").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                Some(t) if Some(t) != skip_token.as_deref() => skip_token = Some(t.to_owned()),
                Some(_) => return Err(AzureError::decode(operation, "$skipToken repeats")),
                None => return Ok(rows),
            }
        }
        Err(AzureError::decode(operation, "more than 1000 pages"))
    }

    /// Registries configured with `key` (versioned or versionless id, any case).
    pub async fn registries_using_key(
        &self,
        key: &KeyId,
        subscriptions: &[String],
        budget: &Budget,
    ) -> Result<Vec<RegistryFacts>, AzureError> {
        const OP: &str = "graph.registries_using_key";
        let rows = self.query(OP, subscriptions, &registries_using_key_query(key), budget).await?;
        Ok(rows
            .iter()
            .filter_map(facts::registry_facts)
            .filter(|r| r.key_identifier.as_deref().and_then(|k| KeyId::parse(k).ok()).is_some_and(|k| k.same_key(key)))
            .collect())
    }

    /// Every registry (for a sweep).
    pub async fn all_registries(
        &self,
        subscriptions: &[String],
        budget: &Budget,
    ) -> Result<Vec<RegistryFacts>, AzureError> {
        const OP: &str = "graph.all_registries";
        let q =
            format!("Resources | where type =~ 'microsoft.containerregistry/registries' | project {REGISTRY_COLUMNS}");
        let rows = self.query(OP, subscriptions, &q, budget).await?;
        Ok(rows.iter().filter_map(facts::registry_facts).collect())
    }

    /// The resource id of the key vault named `name`, if the caller can see it.
    pub async fn find_vault(
        &self,
        name: &str,
        subscriptions: &[String],
        budget: &Budget,
    ) -> Result<Option<ResourceId>, AzureError> {
        const OP: &str = "graph.find_vault";
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(AzureError::Invalid(format!("{OP}: {name:?} is not a vault name")));
        }
        let q = format!(
            "Resources | where type =~ 'microsoft.keyvault/vaults' | where name =~ {} | project id, name",
            kql_string(name)
        );
        let rows = self.query(OP, subscriptions, &q, budget).await?;
        Ok(rows
            .iter()
            .filter_map(|r| prop(r, "id").and_then(Value::as_str))
            .find_map(|id| ResourceId::parse_typed(id, "Microsoft.KeyVault/vaults").ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_query_is_case_insensitive_prefix() {
        let k = KeyId::parse("https://KV1.vault.azure.net/keys/CmkKey/abc").unwrap();
        let q = registries_using_key_query(&k);
        assert!(q.contains("startswith 'https://kv1.vault.azure.net/keys/cmkkey/'"), "{q}");
        assert!(q.contains("startswith 'https://kv1.vault.azure.net:443/keys/cmkkey'"), "{q}");
        assert!(!q.contains("/abc"), "{q}");
        let local = KeyId::parse("https://kv1.vault.azsim.test:8443/keys/k").unwrap();
        assert!(!registries_using_key_query(&local).contains(":443/"));
    }

    proptest! {
        #[test]
        fn kql_strings_cannot_break_out(s in ".{0,80}") {
            let lit = kql_string(&s);
            let inner = &lit[1..lit.len() - 1];
            // Every quote inside is escaped.
            let bytes = inner.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'\'' {
                    let backslashes = bytes[..i].iter().rev().take_while(|c| **c == b'\\').count();
                    prop_assert!(backslashes % 2 == 1, "unescaped quote in {}", lit);
                }
            }
        }
    }
}

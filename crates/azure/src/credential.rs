//! Access tokens: a small [`TokenSource`] trait (so tests can inject one), the production
//! source backed by azure_identity (managed identity on Functions, developer credentials
//! locally), and [`TokenCache`], which keeps one token per audience and refreshes it
//! before it expires. Tokens never reach a log line: [`AccessToken`]'s `Debug` is redacted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use crate::cloud::CloudProfile;
use crate::error::AzureError;

/// A bearer token and when it expires.
#[derive(Clone)]
pub struct AccessToken {
    secret: String,
    pub expires_on: DateTime<Utc>,
}

impl AccessToken {
    pub fn new(secret: impl Into<String>, expires_on: DateTime<Utc>) -> Self {
        Self { secret: secret.into(), expires_on }
    }
    /// The token itself: only for the `Authorization` header.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken").field("secret", &"<redacted>").field("expires_on", &self.expires_on).finish()
    }
}

/// Something that can mint a token for an audience (e.g. `https://management.azure.com`).
#[async_trait]
pub trait TokenSource: Send + Sync {
    async fn fetch(&self, audience: &str) -> Result<AccessToken, AzureError>;
    /// A short description for diagnostics (`doctor`), never a secret.
    fn describe(&self) -> String;
}

/// The production source: any azure_identity credential.
pub struct IdentitySource {
    credential: Arc<dyn TokenCredential>,
    kind: &'static str,
}

impl IdentitySource {
    pub fn new(credential: Arc<dyn TokenCredential>, kind: &'static str) -> Self {
        Self { credential, kind }
    }

    /// Chooses the credential the way a deployment expects:
    /// - `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` set (App Service / Functions): managed
    ///   identity, user-assigned by `client_id` when given;
    /// - `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET` set: that service principal;
    /// - otherwise the developer tools (Azure CLI, Azure Developer CLI).
    ///
    /// `transport` replaces azure_core's HTTP client (tests route it to a local stand-in).
    pub fn from_environment(
        profile: &CloudProfile,
        client_id: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        transport: Option<reqwest::Client>,
    ) -> Result<Self, AzureError> {
        use azure_core::http::{ClientOptions, Transport};
        let invalid = |e: azure_core::Error| AzureError::Invalid(format!("credential setup: {e}"));
        let mut options = ClientOptions::default();
        if let Some(client) = transport {
            options.transport = Some(Transport::new(Arc::new(client)));
        }
        options.cloud = Some(Arc::new(cloud_configuration(profile)));
        let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if set("IDENTITY_ENDPOINT").is_some() && set("IDENTITY_HEADER").is_some() {
            let opts = azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.map(|c| azure_identity::UserAssignedId::ClientId(c.to_owned())),
                client_options: options,
            };
            let c = azure_identity::ManagedIdentityCredential::new(Some(opts)).map_err(invalid)?;
            return Ok(Self::new(c, "managed identity"));
        }
        if let (Some(tenant), Some(client), Some(secret)) =
            (set("AZURE_TENANT_ID"), set("AZURE_CLIENT_ID"), set("AZURE_CLIENT_SECRET"))
        {
            let opts = azure_identity::ClientSecretCredentialOptions { client_options: options };
            let c = azure_identity::ClientSecretCredential::new(&tenant, client, secret.into(), Some(opts))
                .map_err(invalid)?;
            return Ok(Self::new(c, "service principal (environment)"));
        }
        let c = azure_identity::DeveloperToolsCredential::new(None).map_err(invalid)?;
        Ok(Self::new(c, "developer tools (Azure CLI)"))
    }
}

fn cloud_configuration(profile: &CloudProfile) -> azure_core::cloud::CloudConfiguration {
    use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
    match profile.name.as_str() {
        "public" => CloudConfiguration::AzurePublic,
        "usgov" => CloudConfiguration::AzureGovernment,
        "china" => CloudConfiguration::AzureChina,
        _ => {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = profile.authority_host.as_str().trim_end_matches('/').to_owned();
            custom.into()
        }
    }
}

#[async_trait]
impl TokenSource for IdentitySource {
    async fn fetch(&self, audience: &str) -> Result<AccessToken, AzureError> {
        let scope = format!("{}/.default", audience.trim_end_matches('/'));
        match self.credential.get_token(&[scope.as_str()], None).await {
            Ok(t) => {
                let expires_on = DateTime::from_timestamp(t.expires_on.unix_timestamp(), 0).unwrap_or_else(Utc::now);
                Ok(AccessToken::new(t.token.secret().to_owned(), expires_on))
            }
            Err(e) => Err(AzureError::Credential {
                audience: audience.to_owned(),
                retryable: credential_error_is_transient(&e),
                message: e.to_string(),
            }),
        }
    }

    fn describe(&self) -> String {
        self.kind.to_owned()
    }
}

/// A token endpoint that is down or throttling is worth a retry; a missing identity or a
/// refused principal is not.
fn credential_error_is_transient(e: &azure_core::Error) -> bool {
    use azure_core::error::ErrorKind;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(ae) = err.downcast_ref::<azure_core::Error>() {
            match ae.kind() {
                ErrorKind::Io => return true,
                ErrorKind::HttpResponse { status, .. } => {
                    let s = u16::from(*status);
                    return s == 429 || s >= 500;
                }
                _ => {}
            }
        }
        if err.downcast_ref::<reqwest::Error>().is_some_and(|r| r.is_timeout() || r.is_connect()) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// One token per audience, reused until `refresh_margin` before it expires.
///
/// Each audience has its own lock, held across its fetch: concurrent callers for one
/// audience share one fetch, and a slow fetch for one audience (a Key Vault token being
/// refreshed, the start-up warm-up) never holds up calls for another.
pub struct TokenCache {
    source: Arc<dyn TokenSource>,
    tokens: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<AccessToken>>>>>,
    refresh_margin: chrono::Duration,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("source", &self.source.describe()).finish_non_exhaustive()
    }
}

impl TokenCache {
    /// Refreshes tokens 5 minutes before they expire.
    pub fn new(source: Arc<dyn TokenSource>) -> Self {
        Self::with_margin(source, Duration::from_secs(300))
    }

    pub fn with_margin(source: Arc<dyn TokenSource>, margin: Duration) -> Self {
        Self {
            source,
            tokens: std::sync::Mutex::new(HashMap::new()),
            refresh_margin: chrono::Duration::from_std(margin).unwrap_or_default(),
        }
    }

    pub fn describe(&self) -> String {
        self.source.describe()
    }

    fn slot(&self, key: &str) -> Arc<Mutex<Option<AccessToken>>> {
        let mut all = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key.to_owned()).or_default().clone()
    }

    /// A token for `audience` valid for at least the refresh margin.
    pub async fn get(&self, audience: &str) -> Result<AccessToken, AzureError> {
        let key = audience.trim_end_matches('/').to_ascii_lowercase();
        let slot = self.slot(&key);
        // Holding the audience's lock across the fetch makes concurrent callers share one fetch.
        let mut token = slot.lock().await;
        if let Some(t) = token.as_ref()
            && t.expires_on - Utc::now() > self.refresh_margin
        {
            return Ok(t.clone());
        }
        let t = self.source.fetch(audience.trim_end_matches('/')).await?;
        tracing::debug!(audience = %key, expires_on = %t.expires_on, "fetched access token");
        *token = Some(t.clone());
        Ok(t)
    }

    /// Forgets the token for `audience` (after Azure refused it).
    pub async fn invalidate(&self, audience: &str) {
        let slot = self.slot(&audience.trim_end_matches('/').to_ascii_lowercase());
        *slot.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Counting {
        calls: AtomicU32,
        lifetime: chrono::Duration,
    }

    #[async_trait]
    impl TokenSource for Counting {
        async fn fetch(&self, audience: &str) -> Result<AccessToken, AzureError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(AccessToken::new(format!("tok-{audience}-{n}"), Utc::now() + self.lifetime))
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    #[tokio::test]
    async fn caches_per_audience_and_refreshes_before_expiry() {
        let src = Arc::new(Counting { calls: AtomicU32::new(0), lifetime: chrono::Duration::hours(1) });
        let cache = TokenCache::new(src.clone());
        let a = cache.get("https://management.azure.com/").await.unwrap();
        let b = cache.get("https://management.azure.com").await.unwrap();
        assert_eq!(a.secret(), b.secret());
        let v = cache.get("https://vault.azure.net").await.unwrap();
        assert_ne!(a.secret(), v.secret());
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        cache.invalidate("https://vault.azure.net").await;
        cache.get("https://vault.azure.net").await.unwrap();
        assert_eq!(src.calls.load(Ordering::SeqCst), 3);

        // Tokens inside the refresh margin are replaced on every use.
        let short = Arc::new(Counting { calls: AtomicU32::new(0), lifetime: chrono::Duration::seconds(60) });
        let cache = TokenCache::new(short.clone());
        let first = cache.get("https://management.azure.com").await.unwrap();
        let second = cache.get("https://management.azure.com").await.unwrap();
        assert_ne!(first.secret(), second.secret());
        assert_eq!(short.calls.load(Ordering::SeqCst), 2);
    }

    /// A fetch that never ends for one audience (a stuck Key Vault token refresh) does not
    /// hold up another audience's token.
    #[tokio::test]
    async fn audiences_do_not_wait_for_each_other() {
        struct Stuck;
        #[async_trait]
        impl TokenSource for Stuck {
            async fn fetch(&self, audience: &str) -> Result<AccessToken, AzureError> {
                if audience.contains("vault") {
                    std::future::pending::<()>().await;
                }
                Ok(AccessToken::new(format!("tok-{audience}"), Utc::now() + chrono::Duration::hours(1)))
            }
            fn describe(&self) -> String {
                "stuck".into()
            }
        }
        let cache = Arc::new(TokenCache::new(Arc::new(Stuck)));
        let c = cache.clone();
        let stuck = tokio::spawn(async move { c.get("https://vault.azure.net").await });
        tokio::task::yield_now().await;
        let arm = tokio::time::timeout(Duration::from_secs(10), cache.get("https://management.azure.com")).await;
        assert_eq!(arm.expect("not held up by the vault fetch").unwrap().secret(), "tok-https://management.azure.com");
        assert!(!stuck.is_finished());
        stuck.abort();
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = AccessToken::new("eyJ-very-secret", Utc::now());
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}

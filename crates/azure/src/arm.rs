//! Azure Resource Manager: container registries (GET, list, rotate-key as
//! `az acr encryption rotate-key` does it, with the long-running-operation protocol exposed
//! as start + poll steps), vault properties, and the caller's own permissions.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cmkguard_model::{KeyId, RegistryFacts, ResourceId, VaultFacts};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::AzureError;
use crate::facts::{self, prop};
use crate::http::{Auth, AzureHttp, Budget, Call, Reply};

pub const ACR_API_VERSION: &str = "2025-04-01";
pub const KEYVAULT_MGMT_API_VERSION: &str = "2024-11-01";
pub const AUTHORIZATION_API_VERSION: &str = "2022-04-01";
/// Wait between polls when the service does not say (ARM RPC).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// A registry as ARM returned it: the facts and the raw document.
#[derive(Debug, Clone)]
pub struct Registry {
    pub facts: RegistryFacts,
    pub raw: Value,
}

/// What to rotate a registry's key to.
#[derive(Debug, Clone)]
pub struct RotateRequest {
    /// The new key id (versioned or versionless).
    pub key_id: KeyId,
    /// Client id of the user-assigned identity; `None`: keep the one configured now.
    pub identity_client_id: Option<String>,
}

/// How to follow a running operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollKind {
    /// `Azure-AsyncOperation`: GET returns `{"status": …}`.
    AsyncOperation,
    /// `Location`: 202 while running, 200/204 when done.
    Location,
}

/// A started rotation, to record as pending and finish later ([`Arm::poll_operation`]).
/// Serializable so it can wait in the ledger between invocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOperation {
    pub registry: String,
    pub status_url: String,
    pub kind: PollKind,
    /// When to poll next.
    pub not_before: DateTime<Utc>,
}

/// The result of starting a rotation.
#[derive(Debug, Clone)]
pub enum RotateStart {
    /// Nothing to do: the registry already points at this key id.
    AlreadyCurrent(Registry),
    /// ARM finished synchronously (200).
    Done(Registry),
    /// 201/202: poll until terminal.
    Pending(PendingOperation),
}

/// One poll's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationStatus {
    Running {
        retry_after: Duration,
    },
    Succeeded,
    Failed {
        code: Option<String>,
        message: String,
    },
    Canceled {
        code: Option<String>,
        message: String,
    },
    /// The status URL answered 4xx/5xx or not at all: the operation's fate is unknown
    /// (not failed); poll again later.
    Unknown {
        reason: String,
    },
}

impl OperationStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(self, OperationStatus::Succeeded | OperationStatus::Failed { .. } | OperationStatus::Canceled { .. })
    }
}

/// The end of [`Arm::rotate_key`]: finished, or still running when the budget ran out.
#[derive(Debug, Clone)]
pub enum RotateOutcome {
    AlreadyCurrent(Registry),
    Succeeded(Registry),
    Failed { code: Option<String>, message: String },
    Canceled { code: Option<String>, message: String },
    Pending(PendingOperation),
}

/// The caller's effective permissions at a scope (`Microsoft.Authorization/permissions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PermissionSet {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    #[serde(default)]
    pub not_data_actions: Vec<String>,
}

impl PermissionSet {
    /// Whether these permission sets allow `action` (a grant that is not excluded).
    pub fn allows(sets: &[PermissionSet], action: &str, data_action: bool) -> bool {
        use crate::permissions::covers;
        sets.iter().any(|s| {
            let (grant, deny) =
                if data_action { (&s.data_actions, &s.not_data_actions) } else { (&s.actions, &s.not_actions) };
            grant.iter().any(|g| covers(g, action)) && !deny.iter().any(|d| covers(d, action))
        })
    }
}

/// The ARM client.
#[derive(Debug, Clone)]
pub struct Arm {
    http: Arc<AzureHttp>,
}

impl Arm {
    pub fn new(http: Arc<AzureHttp>) -> Self {
        Self { http }
    }

    fn url(&self, path: &str, api_version: &str) -> Result<Url, AzureError> {
        let mut u = self
            .http
            .profile()
            .arm_endpoint
            .join(path)
            .map_err(|e| AzureError::Invalid(format!("bad ARM path {path:?}: {e}")))?;
        u.query_pairs_mut().append_pair("api-version", api_version);
        Ok(u)
    }

    /// `GET` a registry.
    pub async fn get_registry(&self, id: &ResourceId, budget: &Budget) -> Result<Registry, AzureError> {
        const OP: &str = "arm.get_registry";
        let url = self.url(id.as_str(), ACR_API_VERSION)?;
        let reply = self.http.send(Call::new(OP, Method::GET, url, Auth::Arm), budget).await?.success()?;
        registry_from(OP, reply.json()?)
    }

    /// All registries of a subscription (`nextLink` paging).
    pub async fn list_registries(&self, subscription: &str, budget: &Budget) -> Result<Vec<Registry>, AzureError> {
        const OP: &str = "arm.list_registries";
        if subscription.is_empty() || !subscription.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(AzureError::Invalid(format!("{OP}: {subscription:?} is not a subscription id")));
        }
        let mut url = self.url(
            &format!("/subscriptions/{subscription}/providers/Microsoft.ContainerRegistry/registries"),
            ACR_API_VERSION,
        )?;
        let mut out = Vec::new();
        for _ in 0..1000 {
            let reply = self.http.send(Call::new(OP, Method::GET, url.clone(), Auth::Arm), budget).await?.success()?;
            let page: Value = reply.json()?;
            for doc in prop(&page, "value").and_then(Value::as_array).into_iter().flatten() {
                out.push(registry_from(OP, doc.clone())?);
            }
            match prop(&page, "nextLink").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                Some(next) => url = parse_url(OP, next)?,
                None => return Ok(out),
            }
        }
        Err(AzureError::decode(OP, "more than 1000 pages"))
    }

    /// Starts pointing a registry at `req.key_id`: GET, then PATCH `properties.encryption`
    /// (+ the registry's identity) as `az acr encryption rotate-key` does. Does not wait.
    pub async fn start_rotate_key(
        &self,
        id: &ResourceId,
        req: &RotateRequest,
        budget: &Budget,
    ) -> Result<RotateStart, AzureError> {
        const OP: &str = "arm.start_rotate_key";
        let current = self.get_registry(id, budget).await?;
        if !current.facts.encryption_enabled {
            return Err(AzureError::Invalid(format!(
                "{OP}: registry {} does not use a customer-managed key; CMK can only be chosen when a registry is created",
                current.facts.name
            )));
        }
        let identity = req.identity_client_id.clone().or_else(|| current.facts.identity.clone()).ok_or_else(|| {
            AzureError::Invalid(format!("{OP}: registry {} has no key identity and none was given", current.facts.name))
        })?;
        let target = req.key_id.to_string();
        let configured = current.facts.key_identifier.as_deref().and_then(|k| KeyId::parse(k).ok());
        if configured.as_ref() == Some(&req.key_id)
            && current.facts.identity.as_deref().is_some_and(|i| i.eq_ignore_ascii_case(&identity))
        {
            return Ok(RotateStart::AlreadyCurrent(current));
        }
        let mut body = json!({
            "properties": {
                "encryption": {
                    "status": "enabled",
                    "keyVaultProperties": { "keyIdentifier": target, "identity": identity }
                }
            }
        });
        if let Some(ident) = identity_block(&current.raw) {
            body["identity"] = ident;
        }
        let url = self.url(id.as_str(), ACR_API_VERSION)?;
        let reply = self.http.send(Call::new(OP, Method::PATCH, url, Auth::Arm).body(&body), budget).await?;
        match reply.status {
            StatusCode::OK => Ok(RotateStart::Done(registry_from(OP, reply.json()?)?)),
            StatusCode::CREATED | StatusCode::ACCEPTED => match pending_from(OP, id, &reply)? {
                Some(p) => Ok(RotateStart::Pending(p)),
                // 201 without a status URL: the body is the final state.
                None => Ok(RotateStart::Done(registry_from(OP, reply.json()?)?)),
            },
            _ => Err(reply.into_error()),
        }
    }

    /// One poll of a running operation. Never retries inside: the caller decides when to
    /// poll again (the status says when).
    pub async fn poll_operation(&self, op: &PendingOperation, budget: &Budget) -> Result<OperationStatus, AzureError> {
        const OP: &str = "arm.poll_operation";
        let url = parse_url(OP, &op.status_url)?;
        let reply = match self.http.send(Call::new(OP, Method::GET, url, Auth::Arm).once(), budget).await {
            Ok(r) => r,
            Err(
                e @ (AzureError::NotAllowed { .. }
                | AzureError::Credential { .. }
                | AzureError::Challenge { .. }
                | AzureError::Invalid(_)),
            ) => {
                return Err(e);
            }
            Err(AzureError::BudgetExhausted { last, .. }) => return Ok(OperationStatus::Unknown { reason: last }),
            Err(e) => return Ok(OperationStatus::Unknown { reason: e.to_string() }),
        };
        let retry_after = reply.retry_after().unwrap_or(DEFAULT_POLL_INTERVAL);
        if !reply.status.is_success() {
            return Ok(OperationStatus::Unknown { reason: reply.into_error().to_string() });
        }
        match op.kind {
            PollKind::Location if reply.status == StatusCode::ACCEPTED => Ok(OperationStatus::Running { retry_after }),
            PollKind::Location => Ok(OperationStatus::Succeeded),
            PollKind::AsyncOperation => {
                let body: Value = reply.json()?;
                let status = prop(&body, "status").and_then(Value::as_str).unwrap_or_default();
                let err = prop(&body, "error");
                let code = err.and_then(|e| prop(e, "code")).and_then(Value::as_str).map(str::to_owned);
                let message = err
                    .and_then(|e| prop(e, "message"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .chars()
                    .take(500)
                    .collect();
                Ok(match status.to_ascii_lowercase().as_str() {
                    "succeeded" => OperationStatus::Succeeded,
                    "failed" => OperationStatus::Failed { code, message },
                    "canceled" | "cancelled" => OperationStatus::Canceled { code, message },
                    _ => OperationStatus::Running { retry_after },
                })
            }
        }
    }

    /// Start and poll within `budget`; returns `Pending` when the next poll would not fit.
    pub async fn rotate_key(
        &self,
        id: &ResourceId,
        req: &RotateRequest,
        budget: &Budget,
    ) -> Result<RotateOutcome, AzureError> {
        let mut op = match self.start_rotate_key(id, req, budget).await? {
            RotateStart::AlreadyCurrent(r) => return Ok(RotateOutcome::AlreadyCurrent(r)),
            RotateStart::Done(r) => return Ok(RotateOutcome::Succeeded(r)),
            RotateStart::Pending(p) => p,
        };
        loop {
            let wait = (op.not_before - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if wait >= budget.remaining() {
                return Ok(RotateOutcome::Pending(op));
            }
            tokio::time::sleep(wait).await;
            match self.poll_operation(&op, budget).await? {
                OperationStatus::Succeeded => {
                    return Ok(RotateOutcome::Succeeded(self.get_registry(id, budget).await?));
                }
                OperationStatus::Failed { code, message } => return Ok(RotateOutcome::Failed { code, message }),
                OperationStatus::Canceled { code, message } => return Ok(RotateOutcome::Canceled { code, message }),
                OperationStatus::Running { retry_after } => {
                    op.not_before = Utc::now() + chrono::Duration::from_std(retry_after).unwrap_or_default()
                }
                OperationStatus::Unknown { reason } => {
                    tracing::warn!(registry = %op.registry, %reason, "operation status unknown; will poll again");
                    op.not_before = Utc::now()
                        + chrono::Duration::from_std(DEFAULT_POLL_INTERVAL.min(Duration::from_secs(10)))
                            .unwrap_or_default();
                    if budget.is_exhausted() {
                        return Ok(RotateOutcome::Pending(op));
                    }
                }
            }
        }
    }

    /// A vault's safety net (soft delete, purge protection) from the management plane.
    pub async fn get_vault(&self, vault: &ResourceId, budget: &Budget) -> Result<VaultFacts, AzureError> {
        const OP: &str = "arm.get_vault";
        if !vault.resource_type().eq_ignore_ascii_case("Microsoft.KeyVault/vaults") {
            return Err(AzureError::Invalid(format!("{OP}: {vault} is not a key vault")));
        }
        let url = self.url(vault.as_str(), KEYVAULT_MGMT_API_VERSION)?;
        let reply = self.http.send(Call::new(OP, Method::GET, url, Auth::Arm), budget).await?.success()?;
        Ok(facts::vault_facts(&reply.json::<Value>()?))
    }

    /// The caller's permissions at `scope` (a subscription, resource group or resource id).
    pub async fn permissions(&self, scope: &str, budget: &Budget) -> Result<Vec<PermissionSet>, AzureError> {
        const OP: &str = "arm.permissions";
        let scope = scope.trim_end_matches('/');
        if !scope.starts_with("/subscriptions/") {
            return Err(AzureError::Invalid(format!("{OP}: scope {scope:?} must start with /subscriptions/")));
        }
        let url =
            self.url(&format!("{scope}/providers/Microsoft.Authorization/permissions"), AUTHORIZATION_API_VERSION)?;
        let reply = self.http.send(Call::new(OP, Method::GET, url, Auth::Arm), budget).await?.success()?;
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            value: Vec<PermissionSet>,
        }
        Ok(reply.json::<Page>()?.value)
    }
}

fn parse_url(op: &'static str, s: &str) -> Result<Url, AzureError> {
    Url::parse(s.trim()).map_err(|e| AzureError::decode(op, format!("link is not a URL: {e}")))
}

fn registry_from(op: &'static str, raw: Value) -> Result<Registry, AzureError> {
    let facts =
        facts::registry_facts(&raw).ok_or_else(|| AzureError::decode(op, "registry document without id/name"))?;
    Ok(Registry { facts, raw })
}

/// The registry's `identity` block to resend: type and the user-assigned identity ids.
fn identity_block(raw: &Value) -> Option<Value> {
    let ident = prop(raw, "identity")?;
    let ty = prop(ident, "type").and_then(Value::as_str)?;
    let mut out = Map::new();
    out.insert("type".into(), Value::String(ty.to_owned()));
    if let Some(uai) = prop(ident, "userAssignedIdentities").and_then(Value::as_object) {
        let ids: Map<String, Value> = uai.keys().map(|k| (k.clone(), json!({}))).collect();
        out.insert("userAssignedIdentities".into(), Value::Object(ids));
    }
    Some(Value::Object(out))
}

fn pending_from(op: &'static str, id: &ResourceId, reply: &Reply) -> Result<Option<PendingOperation>, AzureError> {
    let (url, kind) = match (reply.header("azure-asyncoperation"), reply.header("location")) {
        (Some(u), _) => (u, PollKind::AsyncOperation),
        (None, Some(u)) => (u, PollKind::Location),
        (None, None) => return Ok(None),
    };
    let url = parse_url(op, url)?;
    let wait = reply.retry_after().unwrap_or(DEFAULT_POLL_INTERVAL);
    Ok(Some(PendingOperation {
        registry: id.to_string(),
        status_url: url.to_string(),
        kind,
        not_before: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_block_keeps_ids_only() {
        let raw = json!({"identity": {"type": "userAssigned", "principalId": "p", "userAssignedIdentities": {"/subscriptions/s/resourcegroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u": {"principalId": "p", "clientId": "c"}}}});
        let b = identity_block(&raw).unwrap();
        assert_eq!(b["type"], "userAssigned");
        assert_eq!(b["userAssignedIdentities"].as_object().unwrap().values().next().unwrap(), &json!({}));
        assert!(b.get("principalId").is_none());
        assert!(identity_block(&json!({})).is_none());
    }

    #[test]
    fn permission_sets() {
        let sets = vec![PermissionSet {
            actions: vec!["*".into()],
            not_actions: vec!["Microsoft.Authorization/*/Write".into()],
            data_actions: vec!["Microsoft.KeyVault/vaults/keys/read".into()],
            not_data_actions: vec![],
        }];
        assert!(PermissionSet::allows(&sets, "Microsoft.ContainerRegistry/registries/write", false));
        assert!(!PermissionSet::allows(&sets, "Microsoft.Authorization/roleAssignments/write", false));
        assert!(PermissionSet::allows(&sets, "Microsoft.KeyVault/vaults/keys/read", true));
        assert!(!PermissionSet::allows(&sets, "Microsoft.KeyVault/vaults/keys/rotate/action", true));
    }
}

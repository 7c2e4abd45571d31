//! The Azure half of `cmkguard doctor`: after a deployment, check that every call the
//! handler will make can succeed — a token per audience, ARM reads on the watched scope,
//! a Resource Graph query, a read of each key — and, where enforce mode needs it, that
//! the identity holds the write actions (asked of the permissions API; nothing changes).
//!
//! Each check answers pass / fail / skip with a detail line and, on failure, the fix.

use std::collections::BTreeMap;
use std::time::Duration;

use cmkguard_model::KeyId;
use serde::Serialize;

use crate::arm::PermissionSet;
use crate::cloud::Service;
use crate::http::Budget;
use crate::permissions::{self, Needed, Scope};
use crate::{AzureClients, AzureError};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One row of the doctor's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Pass, detail: detail.into(), fix: None }
    }
    pub fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
    pub fn skip(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Skip, detail: detail.into(), fix: None }
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct DoctorInput {
    /// The watched subscriptions.
    pub subscriptions: Vec<String>,
    /// Keys to read; empty: every key the registries in scope use.
    pub keys: Vec<KeyId>,
    /// Enforce mode: registry writes must be allowed.
    pub enforce: bool,
    /// Vault-key rotation enabled: key rotation must be allowed.
    pub vault_key_rotation: bool,
    /// Time for each check.
    pub per_check: Duration,
}

/// Runs the Azure checks in order; never stops early (a failing token check makes the
/// later checks fail with the same cause, which the table shows).
pub async fn run(clients: &AzureClients, input: &DoctorInput) -> Vec<Check> {
    let per = if input.per_check.is_zero() { Duration::from_secs(20) } else { input.per_check };
    let budget = || Budget::new(per);
    let profile = clients.http.profile().clone();
    let mut out = Vec::new();
    let identity_fix = format!(
        "give the app a user-assigned managed identity and set AZURE_CLIENT_ID to its client id (locally: `az login`, or AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET); credential in use: {}",
        clients.http.tokens().describe()
    );

    // 1. A token per audience.
    let mut audiences =
        vec![("ARM / Resource Graph", profile.arm_audience.clone()), ("Key Vault", profile.key_vault_audience.clone())];
    if input.keys.iter().any(|k| service_of(clients, k) == Some(Service::ManagedHsm)) {
        audiences.push(("Managed HSM", profile.managed_hsm_audience.clone()));
    }
    for (what, aud) in audiences {
        let name = format!("token for {what} ({aud})");
        match tokio::time::timeout(per, clients.http.tokens().get(&aud)).await {
            Ok(Ok(t)) => {
                let mins = (t.expires_on - chrono::Utc::now()).num_minutes();
                out.push(Check::pass(name, format!("obtained, valid for {mins} more minutes")));
            }
            Ok(Err(e)) => out.push(Check::fail(name, e.to_string(), identity_fix.clone())),
            Err(_) => out.push(Check::fail(name, format!("no token within {per:?}"), identity_fix.clone())),
        }
    }

    // 2. ARM read on the watched scope.
    let read_fix = |scope: &str| {
        format!(
            "assign the identity the Reader role (Microsoft.ContainerRegistry/registries/read, Microsoft.KeyVault/vaults/read) on {scope}"
        )
    };
    if input.subscriptions.is_empty() {
        out.push(Check::fail(
            "ARM read on the watched scope",
            "no subscriptions configured",
            "set CMKGUARD_SUBSCRIPTIONS to the comma-separated subscription ids cmkguard watches",
        ));
    }
    for sub in &input.subscriptions {
        let name = format!("ARM read of registries in subscription {sub}");
        match clients.arm.list_registries(sub, &budget()).await {
            Ok(r) => out.push(Check::pass(name, format!("{} registries", r.len()))),
            Err(e) => {
                out.push(Check::fail(name, e.to_string(), fix_for(&e, &read_fix(&format!("/subscriptions/{sub}")))))
            }
        }
    }

    // 3. Resource Graph.
    let mut discovered: BTreeMap<String, KeyId> = BTreeMap::new();
    match clients.graph.all_registries(&input.subscriptions, &budget()).await {
        Ok(regs) => {
            let cmk = regs.iter().filter(|r| r.encryption_enabled).count();
            for k in regs.iter().filter_map(|r| r.key_identifier.as_deref()).filter_map(|k| KeyId::parse(k).ok()) {
                discovered.entry(k.versionless().to_string().to_ascii_lowercase()).or_insert_with(|| k.versionless());
            }
            out.push(Check::pass("Resource Graph query", format!("{} registries visible, {cmk} with a customer-managed key", regs.len())));
        }
        Err(e) => out.push(Check::fail(
            "Resource Graph query",
            e.to_string(),
            fix_for(&e, "assign the identity the Reader role (Microsoft.ResourceGraph/resources/read and read on the registries) on the watched subscriptions"),
        )),
    }

    // 4. Read each key.
    let keys: Vec<KeyId> = if input.keys.is_empty() { discovered.into_values().collect() } else { input.keys.clone() };
    if keys.is_empty() {
        out.push(Check::skip("read of each key", "no keys given and none found in the registries in scope"));
    }
    for k in &keys {
        let name = format!("read key {k}");
        match clients.keyvault.get_key(k, &budget()).await {
            Ok(b) => {
                let enabled = if b.attributes.enabled == Some(false) { "disabled" } else { "enabled" };
                out.push(Check::pass(name, format!("{} {enabled}", b.key.kty)));
            }
            Err(e) => out.push(Check::fail(
                name,
                e.to_string(),
                fix_for(&e, "assign the identity \"Key Vault Reader\" (data action Microsoft.KeyVault/vaults/keys/read) on the vault, or add a key `get` access policy"),
            )),
        }
    }

    // 5. Write permissions where enforce mode needs them.
    if !input.enforce {
        out.push(Check::skip("write permission for enforce mode", "monitor mode: cmkguard changes nothing"));
    } else {
        for sub in &input.subscriptions {
            let scope = format!("/subscriptions/{sub}");
            let name = format!("write permission on {scope}");
            match clients.arm.permissions(&scope, &budget()).await {
                Ok(sets) => {
                    let missing: Vec<&str> = [Scope::Registries, Scope::Identity]
                        .iter()
                        .flat_map(|s| permissions::actions(*s, Needed::Enforce))
                        .filter(|a| !PermissionSet::allows(&sets, a, false))
                        .collect();
                    if missing.is_empty() {
                        out.push(Check::pass(name, "registry write and identity assign allowed"));
                    } else {
                        out.push(Check::fail(
                            name,
                            format!("missing: {}", missing.join(", ")),
                            format!("assign a role granting {} on {scope} (e.g. Contributor on the registries' resource groups and Managed Identity Operator on the CMK identity)", missing.join(", ")),
                        ));
                    }
                }
                Err(e) => out.push(Check::fail(name, e.to_string(), fix_for(&e, "allow the identity to read its permissions (Microsoft.Authorization/permissions/read, part of Reader)"))),
            }
        }
        if input.vault_key_rotation {
            for k in &keys {
                let name = format!("rotate permission on key {k}");
                let vault_name = k.host().split('.').next().unwrap_or_default().to_owned();
                let vault = match clients.graph.find_vault(&vault_name, &input.subscriptions, &budget()).await {
                    Ok(Some(v)) => v,
                    Ok(None) => {
                        out.push(Check::fail(
                            name,
                            format!("vault {vault_name} not visible"),
                            "grant Reader on the vault's resource group",
                        ));
                        continue;
                    }
                    Err(e) => {
                        out.push(Check::fail(
                            name,
                            e.to_string(),
                            fix_for(&e, "grant Reader on the vault's resource group"),
                        ));
                        continue;
                    }
                };
                match clients.arm.permissions(vault.as_str(), &budget()).await {
                    Ok(sets) if PermissionSet::allows(&sets, "Microsoft.KeyVault/vaults/keys/rotate/action", true) => {
                        out.push(Check::pass(name, "key rotation allowed"))
                    }
                    Ok(_) => out.push(Check::fail(
                        name,
                        "missing data action Microsoft.KeyVault/vaults/keys/rotate/action",
                        format!("assign \"Key Vault Crypto Officer\" on {vault}, or turn CMKGUARD_ENABLE_VAULT_KEY_ROTATION off"),
                    )),
                    Err(e) => out.push(Check::fail(name, e.to_string(), fix_for(&e, "allow the identity to read its permissions on the vault"))),
                }
            }
        }
    }
    out
}

fn service_of(clients: &AzureClients, k: &KeyId) -> Option<Service> {
    let url = reqwest::Url::parse(&k.vault_uri()).ok()?;
    clients.http.allowlist().check("doctor", &url).ok()
}

/// The fix for an error: transient problems and refused URLs have their own advice.
fn fix_for(e: &AzureError, permission_fix: &str) -> String {
    match e {
        AzureError::NotAllowed { .. } => "the URL is outside the configured cloud (CMKGUARD_CLOUD); check the cloud profile".into(),
        AzureError::Credential { .. } => "fix the credential first (see the token checks)".into(),
        e if e.is_retryable() => format!("Azure did not answer in time or is throttling; run doctor again ({e})"),
        AzureError::Status { status: 401 | 403, .. } => permission_fix.to_owned(),
        AzureError::Status { status: 404, .. } => "the resource does not exist or is not visible to this identity; check the id and the identity's Reader scope".into(),
        _ => permission_fix.to_owned(),
    }
}

/// The table as text: one row per check, then the fixes for the failures.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(5).min(70);
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!("{:<4}  {:<width$}  {}\n", c.status.as_str(), c.name, c.detail));
    }
    let fails: Vec<&Check> = checks.iter().filter(|c| c.status == Status::Fail).collect();
    if !fails.is_empty() {
        s.push_str("\nHow to fix:\n");
        for c in fails {
            s.push_str(&format!("- {}: {}\n", c.name, c.fix.as_deref().unwrap_or("see the detail")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_fixes_for_failures_only() {
        let t = render(&[Check::pass("a", "ok"), Check::fail("b", "broken", "do x"), Check::skip("c", "n/a")]);
        assert!(t.contains("pass  a"));
        assert!(t.contains("FAIL  b  broken"));
        assert!(t.contains("- b: do x"));
        assert!(!t.contains("- a:"));
    }
}

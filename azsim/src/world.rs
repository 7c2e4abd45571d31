//! azsim's in-memory Azure: registries, vaults, keys, long-running operations, tokens,
//! faults and the call log, plus the domain rules (key validation, versionless follow).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::faults::{FaultKind, Faults, Route};
use crate::scenario::{Kty, Scenario, VersionRef};

/// Host names and port azsim serves; every URL it returns is built here.
#[derive(Clone, Debug)]
pub struct Urls {
    pub port: u16,
}

pub const ARM_HOST: &str = "management.azsim.test";
pub const VAULT_SUFFIX: &str = "vault.azsim.test";
pub const HSM_SUFFIX: &str = "managedhsm.azsim.test";
pub const LOGIN_HOST: &str = "login.azsim.test";
/// Token audience (MSI `resource`) for ARM and Resource Graph.
pub const ARM_AUDIENCE: &str = "https://management.azsim.test";
/// Token audience for Key Vault data plane.
pub const VAULT_AUDIENCE: &str = "https://vault.azsim.test";

impl Urls {
    pub fn arm(&self) -> String {
        format!("https://{ARM_HOST}:{}", self.port)
    }
    pub fn vault_uri(&self, vault: &str) -> String {
        format!("https://{vault}.{VAULT_SUFFIX}:{}/", self.port)
    }
    pub fn kid(&self, vault: &str, key: &str, version: Option<&str>) -> String {
        match version {
            Some(v) => format!("https://{vault}.{VAULT_SUFFIX}:{}/keys/{key}/{v}", self.port),
            None => format!("https://{vault}.{VAULT_SUFFIX}:{}/keys/{key}", self.port),
        }
    }
}

/// Scenario time.
#[derive(Clone, Debug)]
pub struct Clock {
    base: DateTime<Utc>,
    at: Instant,
    frozen: bool,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        if self.frozen {
            self.base
        } else {
            self.base + chrono::Duration::from_std(self.at.elapsed()).unwrap_or_default()
        }
    }
    pub fn set(&mut self, t: DateTime<Utc>) {
        self.base = t;
        self.at = Instant::now();
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[derive(Clone, Debug)]
pub struct IdentityInfo {
    pub name: String,
    pub resource_id: String,
    pub client_id: String,
    pub principal_id: String,
}

#[derive(Clone, Debug)]
pub struct KeyVersionState {
    pub id: String,
    pub created: i64,
    pub updated: i64,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub enabled: bool,
}

#[derive(Clone, Debug)]
pub struct KeyState {
    pub name: String,
    pub kty: Kty,
    pub size: u32,
    pub crv: String,
    pub tags: BTreeMap<String, String>,
    /// Oldest first; last is current.
    pub versions: Vec<KeyVersionState>,
    pub rotation_policy: Option<Value>,
}

#[derive(Clone, Debug)]
pub struct VaultState {
    pub name: String,
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub soft_delete: bool,
    pub retention_days: u32,
    pub purge_protection: bool,
    pub keys: BTreeMap<String, KeyState>,
    pub created: DateTime<Utc>,
}

impl VaultState {
    pub fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.KeyVault/vaults/{}",
            self.subscription, self.resource_group, self.name
        )
    }
    pub fn recovery_level(&self) -> &'static str {
        match (self.soft_delete, self.purge_protection, self.retention_days < 90) {
            (false, _, _) => "Purgeable",
            (true, true, false) => "Recoverable",
            (true, false, false) => "Recoverable+Purgeable",
            (true, true, true) => "CustomizedRecoverable",
            (true, false, true) => "CustomizedRecoverable+Purgeable",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RegistryState {
    pub id: String,
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    /// The ARM body GET returns.
    pub doc: Value,
    /// The Resource Graph row (derived from `doc`).
    pub row: Value,
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub registry: String,
    pub remaining: u32,
    pub new_doc: Value,
    pub key_changed: bool,
    pub status: &'static str,
    pub error: Option<(String, String)>,
    pub caller: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    Arm,
    Vault,
}

#[derive(Clone, Debug)]
pub struct TokenInfo {
    pub audience: Audience,
    pub expires: SystemTime,
    pub client_id: String,
}

/// One served request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CallRecord {
    pub route: Route,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// One accepted registry write: what was asked of which registry (for soak checks such as
/// "no registry was moved to the same key twice").
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryWrite {
    /// `subscription/resourcegroup/name`, lower case.
    pub registry: String,
    pub operation: String,
    /// The key identifier the write asks for (`None`: no customer-managed key).
    pub key_identifier: Option<String>,
    pub key_changed: bool,
    pub caller: String,
    pub at: String,
}

/// An ARM-style error: status, code, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError { status, code: code.to_owned(), message: message.into() }
    }
}

/// What a key id URL names, if it is one of azsim's vaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedKid {
    pub vault: String,
    pub key: String,
    pub version: Option<String>,
}

/// Parse `https://<vault>.vault.azsim.test[:port]/keys/<name>[/<version>]`.
pub fn parse_kid(url: &str) -> Option<ParsedKid> {
    let rest = url.trim().strip_prefix("https://")?;
    let (authority, path) = rest.split_once('/')?;
    let host = authority.split(':').next()?.to_ascii_lowercase();
    let vault = host.strip_suffix(&format!(".{VAULT_SUFFIX}"))?;
    if vault.is_empty() || vault.contains('.') {
        return None;
    }
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segs.as_slice() {
        [k, name] if k.eq_ignore_ascii_case("keys") && !name.is_empty() => {
            Some(ParsedKid { vault: vault.to_owned(), key: (*name).to_owned(), version: None })
        }
        [k, name, v] if k.eq_ignore_ascii_case("keys") && !name.is_empty() && !v.is_empty() => {
            Some(ParsedKid { vault: vault.to_owned(), key: (*name).to_owned(), version: Some((*v).to_owned()) })
        }
        _ => None,
    }
}

/// Deterministic pseudo-random bytes (key material is decoration: azsim does no crypto).
fn bytes_from(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u32;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

fn version_id(seed: &str) -> String {
    let b = bytes_from(seed, 16);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn secs(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

/// Parse a simple ISO-8601 duration (`P90D`, `P2Y`, `P1M`, `PT12H`) into seconds.
pub fn iso_duration_secs(s: &str) -> Option<i64> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in date.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'Y' => 365 * 86_400,
            'M' => 30 * 86_400,
            'W' => 7 * 86_400,
            'D' => 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() {
        return None;
    }
    if let Some(t) = time {
        for c in t.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: i64 = num.parse().ok()?;
            num.clear();
            let unit = match c {
                'H' => 3_600,
                'M' => 60,
                'S' => 1,
                _ => return None,
            };
            total = total.checked_add(n.checked_mul(unit)?)?;
        }
        if !num.is_empty() {
            return None;
        }
    }
    Some(total)
}

/// The whole simulated estate. Guarded by one mutex in `Shared`.
#[derive(Debug)]
pub struct World {
    pub urls: Urls,
    pub tenant: String,
    pub clock: Clock,
    /// (subscription lc, resource group lc) → (name, location).
    pub resource_groups: BTreeMap<(String, String), (String, String)>,
    pub identities: Vec<IdentityInfo>,
    pub system_identity: IdentityInfo,
    pub vaults: BTreeMap<String, VaultState>,
    /// Keyed by lower-cased resource id (also the stable Resource Graph order).
    pub registries: BTreeMap<String, RegistryState>,
    pub operations: HashMap<String, Operation>,
    pub tokens: HashMap<String, TokenInfo>,
    pub faults: Faults,
    pub calls: Vec<CallRecord>,
    /// Every accepted registry write (PUT/PATCH that started an operation), never capped.
    pub writes: Vec<RegistryWrite>,
    pub call_counts: HashMap<Route, u64>,
    pub events: Vec<Value>,
    pub lro_polls: u32,
    pub lro_fail_next: Option<(String, String)>,
    pub op_counter: u64,
}

const CALL_LOG_CAP: usize = 100_000;

impl World {
    /// Build the estate from a (validated) scenario.
    pub fn new(s: &Scenario, urls: Urls, lro_polls: u32) -> Self {
        let now = s.start_time();
        let clock = Clock { base: now, at: Instant::now(), frozen: s.clock.as_ref().is_some_and(|c| c.frozen) };
        let mut resource_groups = BTreeMap::new();
        for sub in &s.subscriptions {
            for rg in &sub.resource_groups {
                resource_groups.insert(
                    (sub.id.to_ascii_lowercase(), rg.name.to_ascii_lowercase()),
                    (rg.name.clone(), rg.location.clone()),
                );
            }
        }
        let location_of = |sub: &str, rg: &str| {
            resource_groups
                .get(&(sub.to_ascii_lowercase(), rg.to_ascii_lowercase()))
                .map(|(_, l)| l.clone())
                .unwrap_or_else(|| "westeurope".into())
        };
        let identities: Vec<IdentityInfo> = s
            .identities
            .iter()
            .map(|i| IdentityInfo {
                name: i.name.clone(),
                resource_id: format!(
                    "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
                    s.subscription_of(&i.placement),
                    i.placement.resource_group,
                    i.name
                ),
                client_id: i.client_id.clone(),
                principal_id: i.principal_id.clone(),
            })
            .collect();
        let system_identity = match &s.system_identity {
            Some(si) => IdentityInfo {
                name: "system".into(),
                resource_id: String::new(),
                client_id: si.client_id.clone(),
                principal_id: si.principal_id.clone(),
            },
            None => IdentityInfo {
                name: "system".into(),
                resource_id: String::new(),
                client_id: "7e57c11e-0000-4000-8000-000000000001".into(),
                principal_id: "7e57c11e-0000-4000-8000-000000000002".into(),
            },
        };
        let mut vaults = BTreeMap::new();
        for v in &s.vaults {
            let sub = s.subscription_of(&v.placement).to_owned();
            let mut keys = BTreeMap::new();
            for k in &v.keys {
                let versions = k
                    .versions
                    .iter()
                    .enumerate()
                    .map(|(i, ver)| {
                        let created =
                            ver.created.as_ref().map(|t| t.resolve(now)).unwrap_or(now - chrono::Duration::days(30));
                        KeyVersionState {
                            id: ver
                                .version
                                .clone()
                                .map(|x| x.to_ascii_lowercase())
                                .unwrap_or_else(|| version_id(&format!("{}/{}/{}", v.name, k.name, i))),
                            created: secs(created),
                            updated: secs(created),
                            nbf: ver.nbf.as_ref().map(|t| secs(t.resolve(now))),
                            exp: ver.exp.as_ref().map(|t| secs(t.resolve(now))),
                            enabled: ver.enabled,
                        }
                    })
                    .collect();
                let rotation_policy = k.rotation_policy.as_ref().map(|p| {
                    let mut attrs = json!({"created": secs(now), "updated": secs(now)});
                    if let Some(e) = &p.expiry_time {
                        attrs["expiryTime"] = json!(e);
                    }
                    json!({"lifetimeActions": p.lifetime_actions, "attributes": attrs})
                });
                keys.insert(
                    k.name.to_ascii_lowercase(),
                    KeyState {
                        name: k.name.clone(),
                        kty: k.kty,
                        size: k.size.unwrap_or(2048),
                        crv: k.crv.clone().unwrap_or_else(|| "P-256".into()),
                        tags: k.tags.clone(),
                        versions,
                        rotation_policy,
                    },
                );
            }
            vaults.insert(
                v.name.to_ascii_lowercase(),
                VaultState {
                    name: v.name.clone(),
                    location: v.location.clone().unwrap_or_else(|| location_of(&sub, &v.placement.resource_group)),
                    subscription: sub,
                    resource_group: v.placement.resource_group.clone(),
                    soft_delete: v.soft_delete,
                    retention_days: v.soft_delete_retention_days,
                    purge_protection: v.purge_protection,
                    keys,
                    created: now - chrono::Duration::days(400),
                },
            );
        }
        let mut w = World {
            urls,
            tenant: s.tenant.clone(),
            clock,
            resource_groups,
            identities,
            system_identity,
            vaults,
            registries: BTreeMap::new(),
            operations: HashMap::new(),
            tokens: HashMap::new(),
            faults: Faults::default(),
            calls: Vec::new(),
            writes: Vec::new(),
            call_counts: HashMap::new(),
            events: Vec::new(),
            lro_polls,
            lro_fail_next: None,
            op_counter: 0,
        };
        for r in &s.registries {
            let sub = s.subscription_of(&r.placement).to_owned();
            let location = r.location.clone().unwrap_or_else(|| w.rg_location(&sub, &r.placement.resource_group));
            let created = r.created.as_ref().map(|t| t.resolve(now)).unwrap_or(now - chrono::Duration::days(200));
            let ids: Vec<IdentityInfo> = r
                .identities
                .iter()
                .filter_map(|n| w.identities.iter().find(|i| i.name.eq_ignore_ascii_case(n)).cloned())
                .collect();
            let encryption = r.encryption.as_ref().and_then(|e| {
                let kr = crate::scenario::KeyRef::parse(&e.key).ok()?;
                let vault = w.vaults.get(&kr.vault.to_ascii_lowercase())?;
                let key = vault.keys.get(&kr.key.to_ascii_lowercase())?;
                let version = match kr.version {
                    VersionRef::Versionless => None,
                    VersionRef::Latest => key.versions.last().map(|v| v.id.clone()),
                    VersionRef::Index(i) => key.versions.get(i).map(|v| v.id.clone()),
                    VersionRef::Id(id) => Some(id.to_ascii_lowercase()),
                };
                let client = ids.iter().find(|i| i.name.eq_ignore_ascii_case(&e.identity))?.client_id.clone();
                Some((w.urls.kid(&vault.name, &key.name, version.as_deref()), client))
            });
            let doc = w.new_registry_doc(NewRegistry {
                subscription: &sub,
                resource_group: &r.placement.resource_group,
                name: &r.name,
                location: &location,
                sku: r.sku.as_deref().unwrap_or("Premium"),
                identities: &ids,
                encryption,
                tags: &r.tags,
                created,
            });
            w.insert_registry(&sub, &r.placement.resource_group, &r.name, doc);
        }
        w
    }

    pub fn rg_location(&self, sub: &str, rg: &str) -> String {
        self.resource_groups
            .get(&(sub.to_ascii_lowercase(), rg.to_ascii_lowercase()))
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| "westeurope".into())
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn record(&mut self, rec: CallRecord) {
        *self.call_counts.entry(rec.route).or_default() += 1;
        if self.calls.len() < CALL_LOG_CAP {
            self.calls.push(rec);
        }
    }

    pub fn take_fault(&mut self, route: Route) -> Option<FaultKind> {
        self.faults.take(route)
    }

    // ---------------------------------------------------------------- tokens

    pub fn issue_token(&mut self, audience: Audience, client_id: &str, lifetime: Duration) -> (String, SystemTime) {
        let token = format!("azsim.{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let expires = SystemTime::now() + lifetime;
        self.tokens.insert(token.clone(), TokenInfo { audience, expires, client_id: client_id.to_owned() });
        (token, expires)
    }

    /// Check a bearer token for an audience. Err is (code, message) for the 401 body.
    pub fn check_token(
        &self,
        authorization: Option<&str>,
        audience: Audience,
    ) -> Result<TokenInfo, (&'static str, &'static str)> {
        let Some(h) = authorization else {
            return Err(("missing", "The request is missing a bearer token."));
        };
        let Some(token) = h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")) else {
            return Err(("invalid", "The Authorization header is not a bearer token."));
        };
        let Some(info) = self.tokens.get(token.trim()) else {
            return Err(("invalid", "The access token is invalid (not issued by azsim)."));
        };
        if info.expires <= SystemTime::now() {
            return Err(("expired", "The access token has expired."));
        }
        if info.audience != audience {
            return Err(("audience", "The access token has the wrong audience."));
        }
        Ok(info.clone())
    }

    /// Make every issued token expired (clients must fetch new ones).
    pub fn expire_tokens(&mut self) {
        let past = SystemTime::now() - Duration::from_secs(1);
        for t in self.tokens.values_mut() {
            t.expires = past;
        }
    }

    // ---------------------------------------------------------------- identity lookup

    pub fn find_identity(
        &self,
        client_id: Option<&str>,
        principal_id: Option<&str>,
        res_id: Option<&str>,
    ) -> Option<IdentityInfo> {
        if let Some(c) = client_id {
            return self.identities.iter().find(|i| i.client_id.eq_ignore_ascii_case(c)).cloned();
        }
        if let Some(p) = principal_id {
            return self.identities.iter().find(|i| i.principal_id.eq_ignore_ascii_case(p)).cloned();
        }
        if let Some(r) = res_id {
            return self.identities.iter().find(|i| i.resource_id.eq_ignore_ascii_case(r)).cloned();
        }
        Some(self.system_identity.clone())
    }

    // ---------------------------------------------------------------- registries

    pub fn new_registry_doc(&self, r: NewRegistry<'_>) -> Value {
        let id = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerRegistry/registries/{}",
            r.subscription, r.resource_group, r.name
        );
        let created = rfc3339(r.created);
        let mut doc = json!({
            "sku": {"name": r.sku, "tier": r.sku},
            "type": "Microsoft.ContainerRegistry/registries",
            "id": id,
            "name": r.name,
            "location": r.location,
            "tags": r.tags,
            "systemData": {
                "createdBy": "azsim@azsim.test",
                "createdByType": "User",
                "createdAt": created,
                "lastModifiedBy": "azsim@azsim.test",
                "lastModifiedByType": "User",
                "lastModifiedAt": created,
            },
            "properties": {
                "loginServer": format!("{}.azurecr.io", r.name.to_ascii_lowercase()),
                "creationDate": created,
                "provisioningState": "Succeeded",
                "adminUserEnabled": false,
                "networkRuleSet": {"defaultAction": "Allow", "virtualNetworkRules": [], "ipRules": []},
                "policies": {
                    "quarantinePolicy": {"status": "disabled"},
                    "trustPolicy": {"type": "Notary", "status": "disabled"},
                    "retentionPolicy": {"days": 7, "lastUpdatedTime": created, "status": "disabled"},
                    "exportPolicy": {"status": "enabled"},
                },
                "encryption": {"status": "disabled"},
                "dataEndpointEnabled": false,
                "dataEndpointHostNames": [],
                "privateEndpointConnections": [],
                "publicNetworkAccess": "Enabled",
                "networkRuleBypassOptions": "AzureServices",
                "zoneRedundancy": "Disabled",
                "anonymousPullEnabled": false,
            },
        });
        if !r.identities.is_empty() {
            let mut uai = serde_json::Map::new();
            for i in r.identities {
                uai.insert(i.resource_id.clone(), json!({"principalId": i.principal_id, "clientId": i.client_id}));
            }
            doc["identity"] = json!({"type": "userAssigned", "userAssignedIdentities": uai});
        }
        if let Some((key_id, client)) = r.encryption {
            let versioned = self.versioned_of(&key_id).unwrap_or_else(|| key_id.clone());
            let rotation = parse_kid(&key_id).is_some_and(|k| k.version.is_none());
            doc["properties"]["encryption"] = json!({
                "status": "enabled",
                "keyVaultProperties": {
                    "keyIdentifier": key_id,
                    "versionedKeyIdentifier": versioned,
                    "identity": client,
                    "keyRotationEnabled": rotation,
                }
            });
        }
        doc
    }

    /// The versioned key id a key id resolves to (itself if versioned; latest version if not).
    pub fn versioned_of(&self, key_id: &str) -> Option<String> {
        let k = parse_kid(key_id)?;
        if k.version.is_some() {
            return Some(key_id.to_owned());
        }
        let vault = self.vaults.get(&k.vault.to_ascii_lowercase())?;
        let key = vault.keys.get(&k.key.to_ascii_lowercase())?;
        let latest = key.versions.last()?;
        Some(self.urls.kid(&vault.name, &key.name, Some(&latest.id)))
    }

    pub fn insert_registry(&mut self, sub: &str, rg: &str, name: &str, doc: Value) {
        let id = doc["id"].as_str().unwrap_or_default().to_owned();
        let row = self.registry_row(&doc, sub, rg);
        self.registries.insert(
            id.to_ascii_lowercase(),
            RegistryState {
                id,
                subscription: sub.to_owned(),
                resource_group: rg.to_owned(),
                name: name.to_owned(),
                doc,
                row,
            },
        );
    }

    pub fn set_registry_doc(&mut self, key: &str, doc: Value) {
        let Some((sub, rg)) = self.registries.get(key).map(|r| (r.subscription.clone(), r.resource_group.clone()))
        else {
            return;
        };
        let row = self.registry_row(&doc, &sub, &rg);
        if let Some(r) = self.registries.get_mut(key) {
            r.doc = doc;
            r.row = row;
        }
    }

    fn registry_row(&self, doc: &Value, sub: &str, rg: &str) -> Value {
        json!({
            "id": doc["id"],
            "name": doc["name"],
            "type": "microsoft.containerregistry/registries",
            "tenantId": self.tenant,
            "kind": "",
            "location": doc["location"],
            "resourceGroup": rg.to_ascii_lowercase(),
            "subscriptionId": sub,
            "managedBy": "",
            "sku": doc["sku"],
            "plan": null,
            "properties": doc["properties"],
            "tags": doc["tags"],
            "identity": doc.get("identity").cloned().unwrap_or(Value::Null),
            "zones": null,
            "extendedLocation": null,
        })
    }

    pub fn vault_doc(&self, v: &VaultState) -> Value {
        let created = rfc3339(v.created);
        let mut props = json!({
            "sku": {"family": "A", "name": "standard"},
            "tenantId": self.tenant,
            "accessPolicies": [],
            "enabledForDeployment": false,
            "enableRbacAuthorization": true,
            "enableSoftDelete": v.soft_delete,
            "softDeleteRetentionInDays": v.retention_days,
            "vaultUri": self.urls.vault_uri(&v.name),
            "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled",
        });
        // Key Vault omits the flag unless purge protection was turned on (it cannot be turned off).
        if v.purge_protection {
            props["enablePurgeProtection"] = json!(true);
        }
        json!({
            "id": v.resource_id(),
            "name": v.name,
            "type": "Microsoft.KeyVault/vaults",
            "location": v.location,
            "tags": {},
            "systemData": {
                "createdBy": "azsim@azsim.test",
                "createdByType": "User",
                "createdAt": created,
                "lastModifiedBy": "azsim@azsim.test",
                "lastModifiedByType": "User",
                "lastModifiedAt": created,
            },
            "properties": props,
        })
    }

    pub fn vault_row(&self, v: &VaultState) -> Value {
        let doc = self.vault_doc(v);
        json!({
            "id": doc["id"], "name": doc["name"], "type": "microsoft.keyvault/vaults",
            "tenantId": self.tenant, "kind": "", "location": doc["location"],
            "resourceGroup": v.resource_group.to_ascii_lowercase(), "subscriptionId": v.subscription,
            "managedBy": "", "sku": null, "plan": null, "properties": doc["properties"], "tags": doc["tags"],
            "identity": null, "zones": null, "extendedLocation": null,
        })
    }

    /// Check that `key_id` is usable as a registry CMK with `client_id`'s identity.
    /// The codes are azsim's approximations of ACR's (README.md, "ARM error codes").
    pub fn validate_cmk(&self, key_id: &str, client_id: Option<&str>, identity_ids: &[String]) -> Result<(), ApiError> {
        let k = parse_kid(key_id).ok_or_else(|| {
            ApiError::new(
                400,
                "InvalidKeyVaultKeyIdentifier",
                format!("The key identifier '{key_id}' is not a Key Vault key URL of the form https://<vault>.{VAULT_SUFFIX}/keys/<name>[/<version>]."),
            )
        })?;
        let vault = self.vaults.get(&k.vault.to_ascii_lowercase()).ok_or_else(|| {
            ApiError::new(
                400,
                "KeyVaultNotFound",
                format!("The key vault '{}' referenced by '{key_id}' was not found.", k.vault),
            )
        })?;
        let key = vault.keys.get(&k.key.to_ascii_lowercase()).ok_or_else(|| {
            ApiError::new(
                400,
                "KeyVaultKeyNotFound",
                format!("The key '{key_id}' was not found in key vault '{}'.", vault.name),
            )
        })?;
        let version = match &k.version {
            Some(v) => key.versions.iter().find(|x| x.id.eq_ignore_ascii_case(v)).ok_or_else(|| {
                ApiError::new(400, "KeyVaultKeyNotFound", format!("The key version '{key_id}' was not found."))
            })?,
            None => key.versions.last().ok_or_else(|| {
                ApiError::new(400, "KeyVaultKeyNotFound", format!("The key '{key_id}' has no versions."))
            })?,
        };
        if !key.kty.is_rsa() {
            return Err(ApiError::new(
                400,
                "InvalidKeyVaultKeyType",
                format!(
                    "The key '{key_id}' has type {}; registry encryption needs an RSA or RSA-HSM key.",
                    key.kty.as_str()
                ),
            ));
        }
        if !version.enabled {
            return Err(ApiError::new(400, "KeyVaultKeyDisabled", format!("The key '{key_id}' is disabled.")));
        }
        let now = secs(self.now());
        if version.exp.is_some_and(|e| e <= now) {
            return Err(ApiError::new(400, "KeyVaultKeyExpired", format!("The key '{key_id}' has expired.")));
        }
        if version.nbf.is_some_and(|n| n > now) {
            return Err(ApiError::new(
                400,
                "KeyVaultKeyNotYetValid",
                format!("The key '{key_id}' is not valid yet (nbf in the future)."),
            ));
        }
        let Some(client) = client_id else {
            return Err(ApiError::new(
                400,
                "InvalidEncryptionIdentity",
                "keyVaultProperties.identity (the client id of a user-assigned identity) is required.",
            ));
        };
        let known = self.identities.iter().any(|i| {
            i.client_id.eq_ignore_ascii_case(client)
                && identity_ids.iter().any(|r| r.eq_ignore_ascii_case(&i.resource_id))
        });
        if !known {
            return Err(ApiError::new(
                400,
                "InvalidEncryptionIdentity",
                format!("The identity '{client}' is not a user-assigned identity of this registry."),
            ));
        }
        Ok(())
    }

    /// Start an async operation that will replace the registry's doc with `new_doc`.
    pub fn start_operation(&mut self, registry_key: &str, new_doc: Value, key_changed: bool, caller: &str) -> String {
        self.op_counter += 1;
        let id = format!("registries-{}", uuid::Uuid::new_v4());
        self.writes.push(RegistryWrite {
            registry: registry_key.to_owned(),
            operation: id.clone(),
            key_identifier: new_doc["properties"]["encryption"]["keyVaultProperties"]["keyIdentifier"]
                .as_str()
                .map(str::to_owned),
            key_changed,
            caller: caller.to_owned(),
            at: rfc3339(self.now()),
        });
        let (status, error) = match self.lro_fail_next.take() {
            Some((code, msg)) => ("Failed", Some((code, msg))),
            None => ("Succeeded", None),
        };
        self.operations.insert(
            id.clone(),
            Operation {
                registry: registry_key.to_owned(),
                remaining: self.lro_polls,
                new_doc,
                key_changed,
                status,
                error,
                caller: caller.to_owned(),
            },
        );
        id
    }

    /// One poll of an operation: `Some(body)` or None if unknown. Completes it when due.
    pub fn poll_operation(&mut self, op_id: &str) -> Option<Value> {
        let op = self.operations.get_mut(op_id)?;
        if op.remaining > 0 {
            op.remaining -= 1;
            return Some(json!({"status": "InProgress"}));
        }
        if op.status == "Done" {
            return Some(json!({"status": "Succeeded"}));
        }
        if op.status == "Failed" || op.status == "FailedDone" {
            let (code, message) = op.error.clone().unwrap_or_default();
            if op.status == "Failed" {
                op.status = "FailedDone";
                let reg = op.registry.clone();
                // A failed operation leaves the old configuration in place.
                if let Some(r) = self.registries.get(&reg) {
                    let mut doc = r.doc.clone();
                    doc["properties"]["provisioningState"] = json!("Failed");
                    self.set_registry_doc(&reg, doc);
                }
            }
            return Some(json!({"status": "Failed", "error": {"code": code, "message": message}}));
        }
        op.status = "Done";
        let (reg, mut doc, key_changed, caller) =
            (op.registry.clone(), op.new_doc.clone(), op.key_changed, op.caller.clone());
        let now = rfc3339(self.now());
        doc["properties"]["provisioningState"] = json!("Succeeded");
        doc["systemData"]["lastModifiedAt"] = json!(now);
        if key_changed {
            doc["properties"]["encryption"]["keyVaultProperties"]["lastKeyRotationTimestamp"] = json!(now);
        }
        self.set_registry_doc(&reg, doc);
        self.push_registry_write_event(&reg, &caller);
        Some(json!({"status": "Succeeded"}))
    }

    // ---------------------------------------------------------------- keys

    pub fn key_bundle(&self, vault: &VaultState, key: &KeyState, v: &KeyVersionState) -> Value {
        let kid = self.urls.kid(&vault.name, &key.name, Some(&v.id));
        let seed = format!("{}/{}/{}", vault.name, key.name, v.id);
        let jwk = if key.kty.is_rsa() {
            json!({
                "kid": kid,
                "kty": key.kty.as_str(),
                "key_ops": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
                "n": URL_SAFE_NO_PAD.encode(bytes_from(&seed, (key.size / 8) as usize)),
                "e": "AQAB",
            })
        } else {
            let len = match key.crv.as_str() {
                "P-384" => 48,
                "P-521" => 66,
                _ => 32,
            };
            json!({
                "kid": kid,
                "kty": key.kty.as_str(),
                "key_ops": ["sign", "verify"],
                "crv": key.crv,
                "x": URL_SAFE_NO_PAD.encode(bytes_from(&format!("{seed}/x"), len)),
                "y": URL_SAFE_NO_PAD.encode(bytes_from(&format!("{seed}/y"), len)),
            })
        };
        let mut bundle = json!({"key": jwk, "attributes": self.key_attributes(vault, v)});
        if !key.tags.is_empty() {
            bundle["tags"] = json!(key.tags);
        }
        bundle
    }

    pub fn key_attributes(&self, vault: &VaultState, v: &KeyVersionState) -> Value {
        let mut a = json!({"enabled": v.enabled});
        if let Some(n) = v.nbf {
            a["nbf"] = json!(n);
        }
        if let Some(e) = v.exp {
            a["exp"] = json!(e);
        }
        a["created"] = json!(v.created);
        a["updated"] = json!(v.updated);
        a["recoveryLevel"] = json!(vault.recovery_level());
        if vault.soft_delete {
            a["recoverableDays"] = json!(vault.retention_days);
        }
        a
    }

    /// Create a new key version (Key Vault rotate). Returns the new version id.
    pub fn rotate_key(&mut self, vault_lc: &str, key_lc: &str) -> Option<String> {
        let now = self.now();
        let vault = self.vaults.get_mut(vault_lc)?;
        let vault_name = vault.name.clone();
        let key = vault.keys.get_mut(key_lc)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let exp = key
            .rotation_policy
            .as_ref()
            .and_then(|p| p["attributes"]["expiryTime"].as_str().and_then(iso_duration_secs))
            .map(|d| secs(now) + d);
        key.versions.push(KeyVersionState {
            id: id.clone(),
            created: secs(now),
            updated: secs(now),
            nbf: None,
            exp,
            enabled: true,
        });
        let key_name = key.name.clone();
        self.after_new_version(&vault_name, &key_name, &id);
        Some(id)
    }

    /// A new version exists: versionless registries follow it, and Key Vault emits its event.
    fn after_new_version(&mut self, vault: &str, key: &str, version: &str) {
        let new_kid = self.urls.kid(vault, key, Some(version));
        let now = rfc3339(self.now());
        let followers: Vec<String> = self
            .registries
            .iter()
            .filter(|(_, r)| {
                r.doc["properties"]["encryption"]["keyVaultProperties"]["keyIdentifier"]
                    .as_str()
                    .and_then(parse_kid)
                    .is_some_and(|k| {
                        k.version.is_none() && k.vault.eq_ignore_ascii_case(vault) && k.key.eq_ignore_ascii_case(key)
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for reg in followers {
            if let Some(r) = self.registries.get(&reg) {
                let mut doc = r.doc.clone();
                let kvp = &mut doc["properties"]["encryption"]["keyVaultProperties"];
                kvp["versionedKeyIdentifier"] = json!(new_kid);
                kvp["lastKeyRotationTimestamp"] = json!(now);
                self.set_registry_doc(&reg, doc);
            }
        }
        self.push_key_event("Microsoft.KeyVault.KeyNewVersionCreated", vault, key, version);
    }

    // ---------------------------------------------------------------- events

    /// Record a Key Vault key event (Event Grid schema); the emitter delivers it.
    pub fn push_key_event(&mut self, event_type: &str, vault: &str, key: &str, version: &str) {
        let Some(v) = self.vaults.get(&vault.to_ascii_lowercase()) else { return };
        let ver = v.keys.get(&key.to_ascii_lowercase()).and_then(|k| k.versions.iter().find(|x| x.id == version));
        let mut data = json!({
            "Id": self.urls.kid(&v.name, key, Some(version)),
            "VaultName": v.name,
            "ObjectType": "Key",
            "ObjectName": key,
            "Version": version,
        });
        // Without an explicit nbf a version is valid from its creation.
        if let Some(n) = ver.map(|x| x.nbf.unwrap_or(x.created)) {
            data["NBF"] = json!(n.to_string());
        }
        if let Some(e) = ver.and_then(|x| x.exp) {
            data["EXP"] = json!(e.to_string());
        }
        let ev = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "topic": v.resource_id(),
            "subject": key,
            "eventType": event_type,
            "eventTime": rfc3339(self.now()),
            "data": data,
            "dataVersion": "1",
            "metadataVersion": "1",
        });
        self.events.push(ev);
    }

    fn push_registry_write_event(&mut self, reg_key: &str, caller: &str) {
        let Some(r) = self.registries.get(reg_key) else { return };
        let now = self.now();
        let (iat, exp) = (secs(now).to_string(), (secs(now) + 3600).to_string());
        let ev = json!({
            "subject": r.id,
            "eventType": "Microsoft.Resources.ResourceWriteSuccess",
            "eventTime": rfc3339(now),
            "id": uuid::Uuid::new_v4().to_string(),
            "data": {
                "authorization": {
                    "scope": r.id,
                    "action": "Microsoft.ContainerRegistry/registries/write",
                    "evidence": {"role": "Contributor"},
                },
                "claims": {
                    "aud": ARM_AUDIENCE,
                    "iss": format!("https://{LOGIN_HOST}/{}/", self.tenant),
                    "iat": iat,
                    "nbf": iat,
                    "exp": exp,
                    "_claim_names": "{}",
                    "_claim_sources": "{}",
                    "http://schemas.microsoft.com/claims/authnclassreference": "1",
                    "aio": "azsim",
                    "http://schemas.microsoft.com/claims/authnmethodsreferences": "pwd",
                    "appid": caller,
                    "appidacr": "2",
                    "http://schemas.microsoft.com/2012/01/devicecontext/claims/identifier": caller,
                    "e_exp": "262800",
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname": "",
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname": "",
                    "ipaddr": "127.0.0.1",
                    "name": caller,
                    "http://schemas.microsoft.com/identity/claims/objectidentifier": caller,
                    "onprem_sid": "",
                    "puid": "",
                    "http://schemas.microsoft.com/identity/claims/scope": "user_impersonation",
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier": caller,
                    "http://schemas.microsoft.com/identity/claims/tenantid": self.tenant,
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name": caller,
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": caller,
                    "uti": uuid::Uuid::new_v4().simple().to_string(),
                    "ver": "1.0",
                },
                "correlationId": uuid::Uuid::new_v4().to_string(),
                "resourceProvider": "Microsoft.ContainerRegistry",
                "resourceUri": r.id,
                "operationName": "Microsoft.ContainerRegistry/registries/write",
                "status": "Succeeded",
                "subscriptionId": r.subscription,
                "tenantId": self.tenant,
            },
            "dataVersion": "2",
            "metadataVersion": "1",
            "topic": format!("/subscriptions/{}/resourceGroups/{}", r.subscription, r.resource_group),
        });
        self.events.push(ev);
    }
}

/// Inputs for a fresh registry document.
pub struct NewRegistry<'a> {
    pub subscription: &'a str,
    pub resource_group: &'a str,
    pub name: &'a str,
    pub location: &'a str,
    pub sku: &'a str,
    pub identities: &'a [IdentityInfo],
    /// (keyIdentifier, identity client id)
    pub encryption: Option<(String, String)>,
    pub tags: &'a BTreeMap<String, String>,
    pub created: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kid_parsing() {
        let k = parse_kid("https://kv1.vault.azsim.test:8443/keys/k1/abc").unwrap();
        assert_eq!((k.vault.as_str(), k.key.as_str(), k.version.as_deref()), ("kv1", "k1", Some("abc")));
        assert_eq!(parse_kid("https://kv1.vault.azsim.test/keys/k1").unwrap().version, None);
        assert!(parse_kid("https://kv1.vault.azure.net/keys/k1").is_none());
        assert!(parse_kid("http://kv1.vault.azsim.test/keys/k1").is_none());
        assert!(parse_kid("https://kv1.vault.azsim.test/secrets/k1").is_none());
    }

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration_secs("P90D"), Some(90 * 86_400));
        assert_eq!(iso_duration_secs("P2Y"), Some(730 * 86_400));
        assert_eq!(iso_duration_secs("PT12H"), Some(12 * 3_600));
        assert_eq!(iso_duration_secs("90D"), None);
        assert_eq!(iso_duration_secs("P9"), None);
    }

    proptest! {
        #[test]
        fn parse_kid_never_panics(s in ".{0,60}") {
            let _ = parse_kid(&s);
        }
        #[test]
        fn iso_duration_never_panics(s in "P[0-9YMDTHS]{0,10}") {
            let _ = iso_duration_secs(&s);
        }
    }
}

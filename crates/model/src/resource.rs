//! Azure resource ids (`/subscriptions/…/providers/…`) and Key Vault key ids
//! (`https://<vault>.vault.azure.net/keys/<name>[/<version>]`), parsed once and compared
//! case-insensitively, as ARM and Key Vault do.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an id could not be parsed. The message names the part that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("resource id {0:?} does not start with /subscriptions/<id>/resourceGroups/<name>/providers/")]
    NotAResourceId(String),
    #[error("resource id {id:?} is not a {expected} (found type {found:?})")]
    WrongType { id: String, expected: &'static str, found: String },
    #[error("key id {0:?} is not of the form https://<vault host>/keys/<name>[/<version>]")]
    NotAKeyId(String),
}

/// An ARM resource id: subscription, resource group, provider type and name.
///
/// The original text is kept for display; comparisons ignore ASCII case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceId {
    raw: String,
    subscription: String,
    resource_group: String,
    /// e.g. `Microsoft.ContainerRegistry/registries`
    resource_type: String,
    name: String,
}

impl ResourceId {
    /// Parses `/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{type}/{name}[/…]`.
    /// Nested child types (`…/{type}/{name}/{child}/{childName}`) keep the top-level type and name.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let [trimmed, subscription, resource_group, namespace, ty, name] =
            Self::segments(s).ok_or_else(|| IdError::NotAResourceId(s.to_owned()))?;
        Ok(Self {
            raw: trimmed.to_owned(),
            subscription: subscription.to_owned(),
            resource_group: resource_group.to_owned(),
            resource_type: format!("{namespace}/{ty}"),
            name: name.to_owned(),
        })
    }

    /// Whether `s` parses, without building the id (the decision validator asks this of
    /// every id a decision repeats from the input).
    pub fn is_valid(s: &str) -> bool {
        Self::segments(s).is_some()
    }

    /// The trimmed text, subscription, resource group, namespace, type and name.
    fn segments(s: &str) -> Option<[&str; 6]> {
        let trimmed = s.trim();
        let mut parts = trimmed.strip_prefix('/')?.split('/');
        let mut next = |label: Option<&str>| -> Option<&str> {
            let seg = parts.next()?;
            if label.is_some_and(|l| !seg.eq_ignore_ascii_case(l)) || seg.is_empty() {
                return None;
            }
            Some(seg)
        };
        next(Some("subscriptions"))?;
        let subscription = next(None)?;
        next(Some("resourceGroups"))?;
        let resource_group = next(None)?;
        next(Some("providers"))?;
        let namespace = next(None)?;
        let ty = next(None)?;
        let name = next(None)?;
        // Any further segments must come in type/name pairs.
        let mut rest = 0usize;
        for p in parts {
            if p.is_empty() {
                return None;
            }
            rest += 1;
        }
        rest.is_multiple_of(2).then_some([trimmed, subscription, resource_group, namespace, ty, name])
    }

    /// Parses and checks the provider type (case-insensitive), e.g. `Microsoft.ContainerRegistry/registries`.
    pub fn parse_typed(s: &str, expected: &'static str) -> Result<Self, IdError> {
        let id = Self::parse(s)?;
        if !id.resource_type.eq_ignore_ascii_case(expected) {
            return Err(IdError::WrongType { id: s.to_owned(), expected, found: id.resource_type });
        }
        Ok(id)
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
    pub fn subscription(&self) -> &str {
        &self.subscription
    }
    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }
    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        self.raw.eq_ignore_ascii_case(&other.raw)
    }
}
impl Eq for ResourceId {}

impl std::hash::Hash for ResourceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for b in self.raw.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl TryFrom<String> for ResourceId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}
impl From<ResourceId> for String {
    fn from(id: ResourceId) -> String {
        id.raw
    }
}

/// A Key Vault (or Managed HSM) key id: `https://{host}/keys/{name}[/{version}]`.
///
/// This is *data*: parsing does not make it a URL the host may call. Whether the
/// host is allowed is the Azure clients' allowlist's decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId {
    /// Lower-cased authority, e.g. `myvault.vault.azure.net` (an explicit `:443` is
    /// dropped; any other port is kept: `myvault.vault.azsim.test:8443`).
    host: String,
    name: String,
    version: Option<String>,
}

impl KeyId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::NotAKeyId(s.to_owned());
        let rest = s.trim().strip_prefix("https://").ok_or_else(bad)?;
        let (authority, path) = rest.split_once('/').ok_or_else(bad)?;
        // An explicit default port is dropped (Key Vault's own nextLinks carry `:443`);
        // another port is kept as part of the authority (only local stand-ins use one;
        // the clients' allowlist decides whether it may be called).
        let host = authority.strip_suffix(":443").unwrap_or(authority);
        let (name_part, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let valid_host = !name_part.is_empty()
            && name_part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        if !valid_host {
            return Err(bad());
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let mut segs = path.split('/').filter(|p| !p.is_empty());
        if !segs.next().is_some_and(|s| s.eq_ignore_ascii_case("keys")) {
            return Err(bad());
        }
        let name = segs.next().ok_or_else(bad)?.to_owned();
        let version = segs.next().map(str::to_owned);
        if segs.next().is_some() || !is_object_name(&name) || version.as_deref().is_some_and(|v| !is_object_name(v)) {
            return Err(bad());
        }
        Ok(Self { host: host.to_ascii_lowercase(), name, version })
    }

    pub fn new(vault_uri: &str, name: &str, version: Option<&str>) -> Result<Self, IdError> {
        let base = vault_uri.trim().trim_end_matches('/');
        match version {
            Some(v) => Self::parse(&format!("{base}/keys/{name}/{v}")),
            None => Self::parse(&format!("{base}/keys/{name}")),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn vault_uri(&self) -> String {
        format!("https://{}", self.host)
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    pub fn is_versionless(&self) -> bool {
        self.version.is_none()
    }
    /// The same key without a version.
    pub fn versionless(&self) -> Self {
        Self { version: None, ..self.clone() }
    }
    /// The same key at `version`.
    pub fn with_version(&self, version: &str) -> Self {
        Self { version: Some(version.to_owned()), ..self.clone() }
    }
    /// Same vault and key name, whatever the versions.
    pub fn same_key(&self, other: &KeyId) -> bool {
        self.host == other.host && self.name.eq_ignore_ascii_case(&other.name)
    }
}

/// Key Vault object names and versions: 1–127 of `[0-9a-zA-Z-]`.
fn is_object_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl PartialEq for KeyId {
    fn eq(&self, other: &Self) -> bool {
        self.same_key(other)
            && match (&self.version, &other.version) {
                (None, None) => true,
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                _ => false,
            }
    }
}
impl Eq for KeyId {}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "https://{}/keys/{}/{}", self.host, self.name, v),
            None => write!(f, "https://{}/keys/{}", self.host, self.name),
        }
    }
}

impl TryFrom<String> for KeyId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}
impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn registry_id_parses_and_compares_case_insensitively() {
        let a = ResourceId::parse_typed(
            "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/reg1",
            "Microsoft.ContainerRegistry/registries",
        )
        .unwrap();
        assert_eq!(a.subscription(), "s1");
        assert_eq!(a.resource_group(), "rg");
        assert_eq!(a.name(), "reg1");
        let b = ResourceId::parse(
            "/subscriptions/S1/resourcegroups/RG/providers/microsoft.containerregistry/registries/REG1",
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn wrong_type_is_named() {
        let e = ResourceId::parse_typed(
            "/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/x",
            "Microsoft.ContainerRegistry/registries",
        )
        .unwrap_err();
        assert!(e.to_string().contains("Microsoft.Storage/storageAccounts"), "{e}");
    }

    #[test]
    fn bad_resource_ids() {
        for s in [
            "",
            "/",
            "subscriptions/s/resourceGroups/r/providers/A/b/c",
            "/subscriptions/s/resourceGroups/r",
            "/subscriptions//resourceGroups/r/providers/A/b/c",
            "/subscriptions/s/resourceGroups/r/providers/A/b",
            "/subscriptions/s/resourceGroups/r/providers/A/b/c/child",
            "/tenants/s/resourceGroups/r/providers/A/b/c",
        ] {
            assert!(ResourceId::parse(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn key_ids() {
        let k = KeyId::parse("https://Sample-KV.vault.azure.net:443/keys/k1/ee059b2bb5bc48398a53b168c6cdcb10").unwrap();
        assert_eq!(k.host(), "sample-kv.vault.azure.net");
        assert_eq!(k.version(), Some("ee059b2bb5bc48398a53b168c6cdcb10"));
        assert!(k.versionless().is_versionless());
        assert!(k.same_key(&KeyId::parse("https://sample-kv.vault.azure.net/keys/K1").unwrap()));
        assert_eq!(k.to_string(), "https://sample-kv.vault.azure.net/keys/k1/ee059b2bb5bc48398a53b168c6cdcb10");
        let local = KeyId::parse("https://kv1.vault.azsim.test:8443/keys/k1").unwrap();
        assert_eq!(local.host(), "kv1.vault.azsim.test:8443");
        assert_eq!(local.vault_uri(), "https://kv1.vault.azsim.test:8443");
        for bad in [
            "http://v.vault.azure.net/keys/k",
            "https://v.vault.azure.net/secrets/k",
            "https://v.vault.azure.net/keys/",
            "https://v.vault.azure.net/keys/k/v/extra",
            "https://user@evil/keys/k",
            "https://v.vault.azure.net/keys/k_x",
            "https://v.vault.azure.net:/keys/k",
            "https://v.vault.azure.net:99999x/keys/k",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest! {
        #[test]
        fn resource_id_parser_never_panics(s in ".{0,200}") {
            let _ = ResourceId::parse(&s);
        }

        #[test]
        fn is_valid_agrees_with_parse(
            s in prop_oneof![
                ".{0,120}",
                "( ?/(subscriptions|SUBSCRIPTIONS|x)/[a-z0-9]{0,3}/(resourceGroups|rg)/[a-z]{0,3}/(providers|p)/[A-Za-z.]{0,5}(/[a-z]{0,3}){0,5}/? ?)",
            ]
        ) {
            prop_assert_eq!(ResourceId::is_valid(&s), ResourceId::parse(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn key_id_parser_never_panics(s in ".{0,200}") {
            let _ = KeyId::parse(&s);
        }

        #[test]
        fn key_id_round_trips(host in "[a-z][a-z0-9-]{0,20}\\.vault\\.azure\\.net", name in "[A-Za-z0-9-]{1,30}", ver in proptest::option::of("[a-f0-9]{32}")) {
            let k = KeyId::new(&format!("https://{host}/"), &name, ver.as_deref()).unwrap();
            prop_assert_eq!(KeyId::parse(&k.to_string()).unwrap(), k);
        }

        #[test]
        fn resource_id_round_trips(sub in "[a-f0-9-]{1,36}", rg in "[A-Za-z0-9_.()-]{1,30}", name in "[A-Za-z0-9]{5,50}") {
            let raw = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerRegistry/registries/{name}");
            let id = ResourceId::parse(&raw).unwrap();
            prop_assert_eq!(id.name(), name.as_str());
            prop_assert_eq!(id.as_str(), raw.as_str());
        }
    }
}

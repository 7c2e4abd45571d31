//! Cloud profiles (public, US Government, China, or a JSON file) and the outbound
//! allowlist derived from them: the only hosts the clients will ever connect to.
//!
//! A key id or a `nextLink` arriving in an event or an Azure answer is data. Before any
//! connection its URL is checked against [`Allowlist`]: https, no user info, and a host
//! that is the profile's ARM / Resource Graph endpoint, `<name>.<vault suffix>`,
//! `<name>.<managed HSM suffix>` (on the profile's port, if it has one) or the identity
//! endpoint. Anything else is refused with a terminal error.

use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;

use crate::error::AzureError;

/// Everything the clients need to know about one Azure cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudProfile {
    /// `public`, `usgov`, `china`, or the name in the JSON file.
    pub name: String,
    /// ARM endpoint, e.g. `https://management.azure.com`.
    pub arm_endpoint: Url,
    /// Resource Graph endpoint (the ARM endpoint in every public cloud).
    pub resource_graph_endpoint: Url,
    /// Key Vault DNS suffix, e.g. `vault.azure.net`.
    pub key_vault_suffix: String,
    /// Managed HSM DNS suffix, e.g. `managedhsm.azure.net`.
    pub managed_hsm_suffix: String,
    /// Token audience for ARM and Resource Graph.
    pub arm_audience: String,
    /// Token audience for Key Vault data plane.
    pub key_vault_audience: String,
    /// Token audience for Managed HSM data plane.
    pub managed_hsm_audience: String,
    /// Entra ID authority host, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// Managed identity endpoint; `None`: the `IDENTITY_ENDPOINT` the platform sets.
    pub identity_endpoint: Option<Url>,
    /// The port vault and HSM hosts use (only local stand-ins have one; `None` = 443).
    pub port: Option<u16>,
    /// Test-only extras (JSON profiles only).
    pub test: TestExtras,
}

/// Test-only settings of a JSON profile. Production profiles have none: full TLS
/// verification against the platform's roots and real DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestExtras {
    /// An extra trusted CA (PEM), e.g. azsim's self-signed root.
    pub extra_ca_pem: Option<PathBuf>,
    /// Resolve every host of this profile to 127.0.0.1 inside the HTTP client.
    pub resolve_to_loopback: bool,
}

fn url(s: &str) -> Url {
    // Only called with the literals below.
    Url::parse(s).unwrap_or_else(|e| panic!("built-in cloud URL {s:?}: {e}"))
}

impl CloudProfile {
    /// Azure public cloud.
    pub fn public() -> Self {
        Self::builtin(
            "public",
            "https://management.azure.com",
            "vault.azure.net",
            "managedhsm.azure.net",
            "https://management.azure.com",
            "https://vault.azure.net",
            "https://managedhsm.azure.net",
            "https://login.microsoftonline.com",
        )
    }

    /// Azure US Government.
    pub fn usgov() -> Self {
        Self::builtin(
            "usgov",
            "https://management.usgovcloudapi.net",
            "vault.usgovcloudapi.net",
            "managedhsm.usgovcloudapi.net",
            "https://management.usgovcloudapi.net",
            "https://vault.usgovcloudapi.net",
            "https://managedhsm.usgovcloudapi.net",
            "https://login.microsoftonline.us",
        )
    }

    /// Azure operated by 21Vianet (China).
    pub fn china() -> Self {
        Self::builtin(
            "china",
            "https://management.chinacloudapi.cn",
            "vault.azure.cn",
            "managedhsm.azure.cn",
            "https://management.chinacloudapi.cn",
            "https://vault.azure.cn",
            "https://managedhsm.azure.cn",
            "https://login.chinacloudapi.cn",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn builtin(
        name: &str,
        arm: &str,
        kv: &str,
        hsm: &str,
        arm_aud: &str,
        kv_aud: &str,
        hsm_aud: &str,
        authority: &str,
    ) -> Self {
        Self {
            name: name.to_owned(),
            arm_endpoint: url(arm),
            resource_graph_endpoint: url(arm),
            key_vault_suffix: kv.to_owned(),
            managed_hsm_suffix: hsm.to_owned(),
            arm_audience: arm_aud.to_owned(),
            key_vault_audience: kv_aud.to_owned(),
            managed_hsm_audience: hsm_aud.to_owned(),
            authority_host: url(authority),
            identity_endpoint: None,
            port: None,
            test: TestExtras::default(),
        }
    }

    /// `public` (default), `usgov`, `china`, or a path to a JSON profile.
    pub fn load(spec: &str) -> Result<Self, AzureError> {
        match spec.trim().to_ascii_lowercase().as_str() {
            "" | "public" | "azurecloud" => Ok(Self::public()),
            "usgov" | "azureusgovernment" => Ok(Self::usgov()),
            "china" | "azurechinacloud" => Ok(Self::china()),
            _ => {
                let path = Path::new(spec.trim());
                let text = std::fs::read_to_string(path).map_err(|e| {
                    AzureError::Invalid(format!("CMKGUARD_CLOUD: cannot read cloud profile {}: {e}", path.display()))
                })?;
                let mut p = Self::from_json(&text)
                    .map_err(|e| AzureError::Invalid(format!("CMKGUARD_CLOUD: {}: {e}", path.display())))?;
                // A relative CA path is relative to the profile file.
                if let Some(ca) = &p.test.extra_ca_pem
                    && ca.is_relative()
                {
                    p.test.extra_ca_pem = Some(path.parent().unwrap_or(Path::new(".")).join(ca));
                }
                Ok(p)
            }
        }
    }

    /// Parses the JSON profile format (see [`ProfileFile`]); the error names the bad field.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let f: ProfileFile = serde_json::from_str(text).map_err(|e| format!("not a cloud profile: {e}"))?;
        let https = |field: &str, s: &str| -> Result<Url, String> {
            let u = Url::parse(s.trim()).map_err(|e| format!("{field}: {s:?} is not a URL: {e}"))?;
            if u.scheme() != "https" {
                return Err(format!("{field}: {s:?} must use https"));
            }
            if u.host_str().is_none() || !u.username().is_empty() || u.password().is_some() {
                return Err(format!("{field}: {s:?} must name a host and carry no user info"));
            }
            Ok(u)
        };
        let suffix = |field: &str, s: &str| -> Result<String, String> {
            let s = s.trim().trim_start_matches('.').to_ascii_lowercase();
            if s.is_empty()
                || !s.contains('.')
                || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(format!("{field}: {s:?} is not a DNS suffix"));
            }
            Ok(s)
        };
        let audience = |field: &str, s: &str| -> Result<String, String> {
            https(field, s)?;
            Ok(s.trim().trim_end_matches('/').to_owned())
        };
        let arm_endpoint = https("armEndpoint", &f.arm_endpoint)?;
        let identity_endpoint = match &f.identity_endpoint {
            None => None,
            Some(s) => {
                let u = Url::parse(s).map_err(|e| format!("identityEndpoint: {s:?} is not a URL: {e}"))?;
                let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                    return Err(format!("identityEndpoint: {s:?} must use https (or http on loopback)"));
                }
                Some(u)
            }
        };
        if f.port == Some(0) {
            return Err("port: must be between 1 and 65535".to_owned());
        }
        Ok(Self {
            name: f.name.trim().to_owned(),
            resource_graph_endpoint: match &f.resource_graph_endpoint {
                Some(s) => https("resourceGraphEndpoint", s)?,
                None => arm_endpoint.clone(),
            },
            arm_endpoint,
            key_vault_suffix: suffix("keyVaultSuffix", &f.key_vault_suffix)?,
            managed_hsm_suffix: suffix("managedHsmSuffix", &f.managed_hsm_suffix)?,
            arm_audience: audience("armAudience", &f.arm_audience)?,
            key_vault_audience: audience("keyVaultAudience", &f.key_vault_audience)?,
            managed_hsm_audience: audience("managedHsmAudience", &f.managed_hsm_audience)?,
            authority_host: https("authorityHost", &f.authority_host)?,
            identity_endpoint,
            port: f.port,
            test: match f.test {
                None => TestExtras::default(),
                Some(t) => TestExtras {
                    extra_ca_pem: t.extra_ca_pem_file.map(PathBuf::from),
                    resolve_to_loopback: t.resolve_to_loopback,
                },
            },
        })
    }

    /// Every host name of this profile (for the loopback resolver and diagnostics).
    pub fn owns_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let under =
            |suffix: &str| host.strip_suffix(suffix).and_then(|p| p.strip_suffix('.')).is_some_and(is_dns_label);
        Some(host.as_str()) == self.arm_endpoint.host_str()
            || Some(host.as_str()) == self.resource_graph_endpoint.host_str()
            || Some(host.as_str()) == self.authority_host.host_str()
            || self.identity_endpoint.as_ref().is_some_and(|u| u.host_str() == Some(host.as_str()))
            || under(&self.key_vault_suffix)
            || under(&self.managed_hsm_suffix)
    }
}

/// One DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The JSON profile file (`CMKGUARD_CLOUD=/path/profile.json`). Field names are camelCase.
///
/// ```json
/// { "name": "azsim",
///   "armEndpoint": "https://management.azsim.test:8443",
///   "keyVaultSuffix": "vault.azsim.test", "managedHsmSuffix": "managedhsm.azsim.test",
///   "armAudience": "https://management.azsim.test", "keyVaultAudience": "https://vault.azsim.test",
///   "managedHsmAudience": "https://managedhsm.azsim.test", "authorityHost": "https://login.azsim.test:8443",
///   "port": 8443,
///   "test": { "extraCaPemFile": "azsim-ca.pem", "resolveToLoopback": true } }
/// ```
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileFile {
    pub name: String,
    pub arm_endpoint: String,
    #[serde(default)]
    pub resource_graph_endpoint: Option<String>,
    pub key_vault_suffix: String,
    pub managed_hsm_suffix: String,
    pub arm_audience: String,
    pub key_vault_audience: String,
    pub managed_hsm_audience: String,
    pub authority_host: String,
    #[serde(default)]
    pub identity_endpoint: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub test: Option<TestFile>,
}

/// `test` in a JSON profile.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestFile {
    #[serde(default)]
    pub extra_ca_pem_file: Option<String>,
    #[serde(default)]
    pub resolve_to_loopback: bool,
}

/// Which service an allowed URL belongs to (decides the token audience).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Arm,
    ResourceGraph,
    KeyVault,
    ManagedHsm,
    Identity,
}

/// The outbound allowlist of one cloud profile.
#[derive(Debug, Clone)]
pub struct Allowlist {
    profile: CloudProfile,
}

impl Allowlist {
    pub fn new(profile: CloudProfile) -> Self {
        Self { profile }
    }

    pub fn profile(&self) -> &CloudProfile {
        &self.profile
    }

    /// Checks `url` before any connection; `operation` names the caller in the error.
    pub fn check(&self, operation: &'static str, url: &Url) -> Result<Service, AzureError> {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let refuse = |reason: &str| AzureError::NotAllowed {
            operation,
            host: match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            },
            reason: reason.to_owned(),
            cloud: self.profile.name.clone(),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("URLs with user info are never followed"));
        }
        let same_origin = |allowed: &Url| {
            url.scheme() == allowed.scheme()
                && Some(host.as_str()) == allowed.host_str().map(str::to_ascii_lowercase).as_deref()
                && url.port_or_known_default() == allowed.port_or_known_default()
        };
        if same_origin(&self.profile.arm_endpoint) {
            return Ok(Service::Arm);
        }
        if same_origin(&self.profile.resource_graph_endpoint) {
            return Ok(Service::ResourceGraph);
        }
        if let Some(id) = &self.profile.identity_endpoint
            && same_origin(id)
        {
            return Ok(Service::Identity);
        }
        if url.scheme() != "https" {
            return Err(refuse("only https is allowed"));
        }
        let data_port_ok = url.port_or_known_default() == Some(self.profile.port.unwrap_or(443));
        let under =
            |suffix: &str| host.strip_suffix(suffix).and_then(|p| p.strip_suffix('.')).is_some_and(is_dns_label);
        let service = if under(&self.profile.key_vault_suffix) {
            Service::KeyVault
        } else if under(&self.profile.managed_hsm_suffix) {
            Service::ManagedHsm
        } else {
            return Err(refuse("not an endpoint of this cloud"));
        };
        if !data_port_ok {
            return Err(refuse("wrong port for this cloud"));
        }
        Ok(service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AZSIM: &str = r#"{
        "name": "azsim", "armEndpoint": "https://management.azsim.test:8443",
        "keyVaultSuffix": "vault.azsim.test", "managedHsmSuffix": "managedhsm.azsim.test",
        "armAudience": "https://management.azsim.test", "keyVaultAudience": "https://vault.azsim.test",
        "managedHsmAudience": "https://managedhsm.azsim.test", "authorityHost": "https://login.azsim.test:8443",
        "identityEndpoint": "https://management.azsim.test:8443/msi/token",
        "port": 8443, "test": {"extraCaPemFile": "ca.pem", "resolveToLoopback": true}
    }"#;

    fn check(a: &Allowlist, s: &str) -> Result<Service, AzureError> {
        a.check("test", &Url::parse(s).unwrap())
    }

    #[test]
    fn public_allowlist() {
        let a = Allowlist::new(CloudProfile::public());
        assert_eq!(check(&a, "https://management.azure.com/subscriptions/x?api-version=1").unwrap(), Service::Arm);
        assert_eq!(check(&a, "https://MyVault.vault.azure.net/keys/k").unwrap(), Service::KeyVault);
        assert_eq!(check(&a, "https://myvault.vault.azure.net:443/keys/k?api-version=7.2").unwrap(), Service::KeyVault);
        assert_eq!(check(&a, "https://hsm1.managedhsm.azure.net/keys/k").unwrap(), Service::ManagedHsm);
        for bad in [
            "http://myvault.vault.azure.net/keys/k",
            "https://vault.azure.net/keys/k",
            "https://a.b.vault.azure.net/keys/k",
            "https://myvault.vault.azure.net.evil.com/keys/k",
            "https://evilvault.azure.net/keys/k",
            "https://myvault.vault.azure.net:8443/keys/k",
            "https://user@myvault.vault.azure.net/keys/k",
            "https://169.254.169.254/metadata/identity",
            "https://management.azure.com:444/x",
            "https://myvault.vault.usgovcloudapi.net/keys/k",
            "https://localhost/keys/k",
        ] {
            let e = check(&a, bad).unwrap_err();
            assert!(matches!(e, AzureError::NotAllowed { .. }), "{bad}: {e}");
            assert_eq!(e.class(), crate::Class::Terminal);
        }
    }

    #[test]
    fn json_profile_with_port() {
        let p = CloudProfile::from_json(AZSIM).unwrap();
        assert!(p.test.resolve_to_loopback);
        assert!(p.owns_host("kv1.vault.azsim.test"));
        assert!(!p.owns_host("example.com"));
        let a = Allowlist::new(p);
        assert_eq!(check(&a, "https://kv1.vault.azsim.test:8443/keys/k").unwrap(), Service::KeyVault);
        assert_eq!(check(&a, "https://management.azsim.test:8443/providers/x").unwrap(), Service::Arm);
        assert!(check(&a, "https://management.azsim.test:8443/msi/token").is_ok());
        let mut local_msi = CloudProfile::public();
        local_msi.identity_endpoint = Some(Url::parse("http://localhost:8081/msi/token").unwrap());
        let a2 = Allowlist::new(local_msi);
        assert_eq!(check(&a2, "http://localhost:8081/msi/token?resource=x").unwrap(), Service::Identity);
        assert!(check(&a2, "http://localhost:8082/").is_err());
        assert!(check(&a, "https://kv1.vault.azsim.test/keys/k").is_err());
        assert!(check(&a, "https://kv1.vault.azsim.test:9999/keys/k").is_err());
        assert!(check(&a, "https://management.azsim.test/x").is_err());
    }

    #[test]
    fn json_profile_errors_name_the_field() {
        let cases = [
            (
                AZSIM.replace("\"https://management.azsim.test:8443\",", "\"http://management.azsim.test\","),
                "armEndpoint",
            ),
            (AZSIM.replace("\"vault.azsim.test\"", "\"bad suffix\""), "keyVaultSuffix"),
            (AZSIM.replace("\"port\": 8443", "\"port\": 0"), "port"),
            (AZSIM.replace("\"name\"", "\"nmae\""), "nmae"),
            (
                AZSIM.replace("\"https://management.azsim.test:8443/msi/token\"", "\"http://10.0.0.1/msi\""),
                "identityEndpoint",
            ),
        ];
        for (text, needle) in cases {
            let e = CloudProfile::from_json(&text).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn named_profiles() {
        assert_eq!(CloudProfile::load("public").unwrap(), CloudProfile::public());
        assert_eq!(CloudProfile::load("USGov").unwrap().key_vault_suffix, "vault.usgovcloudapi.net");
        assert_eq!(CloudProfile::load("china").unwrap().managed_hsm_suffix, "managedhsm.azure.cn");
        assert!(CloudProfile::load("/nonexistent/profile.json").unwrap_err().to_string().contains("CMKGUARD_CLOUD"));
    }

    proptest! {
        #[test]
        fn profile_parser_never_panics(s in ".{0,300}") {
            let _ = CloudProfile::from_json(&s);
        }

        #[test]
        fn allowlist_never_panics_and_only_allows_profile_hosts(host in "[a-z0-9.-]{1,40}", port in proptest::option::of(1u16..65535)) {
            let a = Allowlist::new(CloudProfile::public());
            let s = match port { Some(p) => format!("https://{host}:{p}/x"), None => format!("https://{host}/x") };
            if let Ok(u) = Url::parse(&s)
                && a.check("t", &u).is_ok() {
                    let h = u.host_str().unwrap();
                    prop_assert!(h == "management.azure.com" || h.ends_with(".vault.azure.net") || h.ends_with(".managedhsm.azure.net"));
                    prop_assert_eq!(u.port_or_known_default(), Some(443));
                }
        }
    }
}

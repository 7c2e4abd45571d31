//! What a policy decides: findings (what is wrong) and actions (what to do about it),
//! drawn from a closed set the host knows how to carry out.

use serde::{Deserialize, Serialize};

/// How bad a finding is. Ordered: `Info < Low < Medium < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [Self::Info, Self::Low, Self::Medium, Self::High, Self::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown severity {s:?} (expected one of info, low, medium, high, critical)"))
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the policy found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Stable rule id, e.g. `CMK001`.
    pub rule_id: String,
    pub severity: Severity,
    /// The resource the finding is about (a registry resource id or a key id).
    pub resource: String,
    pub message: String,
}

/// Where a registry's key should point after a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "key-id", rename_all = "kebab-case")]
pub enum RotateTarget {
    /// The key without a version: the registry follows new versions by itself.
    Versionless,
    /// The newest version of the same key, pinned.
    LatestVersion,
    /// An explicit key id (must be a key the host put in the input).
    KeyId(String),
}

/// What the host should do. The set is closed: a policy can only choose among these,
/// on resources the host put in front of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Write an audit record of this decision (always done; asking makes it explicit).
    Audit,
    RotateRegistryKey {
        registry: String,
        target: RotateTarget,
    },
    RotateVaultKey {
        key: String,
    },
    Notify {
        channel: String,
        severity: Severity,
        title: String,
        text: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Audit => "audit",
            Action::RotateRegistryKey { .. } => "rotate-registry-key",
            Action::RotateVaultKey { .. } => "rotate-vault-key",
            Action::Notify { .. } => "notify",
        }
    }
}

/// A policy's whole answer for one input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    #[serde(default)]
    pub findings: Vec<Finding>,
    #[serde(default)]
    pub actions: Vec<Action>,
}

impl Decision {
    /// The most severe finding, if any.
    pub fn max_severity(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_orders_and_parses() {
        assert!(Severity::Critical > Severity::High);
        assert_eq!("HIGH".parse::<Severity>().unwrap(), Severity::High);
        assert!("urgent".parse::<Severity>().unwrap_err().contains("urgent"));
    }

    #[test]
    fn decision_json_shape() {
        let d = Decision {
            findings: vec![],
            actions: vec![
                Action::RotateRegistryKey {
                    registry: "/subscriptions/s/resourceGroups/r/providers/Microsoft.ContainerRegistry/registries/x"
                        .into(),
                    target: RotateTarget::Versionless,
                },
                Action::Notify { channel: "ops".into(), severity: Severity::High, title: "t".into(), text: "x".into() },
            ],
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["actions"][0]["action"], "rotate-registry-key");
        assert_eq!(v["actions"][0]["target"]["kind"], "versionless");
        assert_eq!(serde_json::from_value::<Decision>(v).unwrap(), d);
    }
}

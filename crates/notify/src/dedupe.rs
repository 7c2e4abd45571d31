//! The dedupe key of a notification: `(rule id, resource, key version)` as one stable
//! string, so that a daily `KeyNearExpiry` or a redelivered event does not post the same
//! message again within the window. Storing keys and applying the window is the
//! ledger's job; this module only defines the key.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A stable, opaque key: `nd1-` followed by 64 hex digits (sha256 of the normalised
/// parts). Safe as a SQLite value and as an Azure blob name.
///
/// Normalisation: the rule id is trimmed (case kept: rule ids are case-sensitive);
/// the resource and version are trimmed and ASCII-lower-cased (ARM ids and Key Vault
/// versions compare case-insensitively); a missing version and an empty one are the
/// same. The parts are length-prefixed before hashing, so no choice of parts can
/// collide with another by shifting a separator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DedupeKey(String);

impl DedupeKey {
    /// Version prefix of the key format; bump it if normalisation ever changes.
    pub const PREFIX: &'static str = "nd1-";

    pub fn new(rule_id: &str, resource: &str, key_version: Option<&str>) -> Self {
        let rule = rule_id.trim();
        let resource = resource.trim().to_ascii_lowercase();
        let version = key_version.map(str::trim).unwrap_or_default().to_ascii_lowercase();
        let mut h = Sha256::new();
        for part in [rule, resource.as_str(), version.as_str()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Self(format!("{}{}", Self::PREFIX, hex::encode(h.finalize())))
    }

    /// The same key, scoped to one channel: use it when one finding goes to several
    /// channels and each must get it once.
    pub fn for_channel(&self, channel: &str) -> Self {
        Self::new(&self.0, &channel.trim().to_ascii_lowercase(), None)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REG: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/r1";

    #[test]
    fn stable_across_runs_and_case() {
        let a = DedupeKey::new("CMK-EXPIRY", REG, Some("AbC123"));
        // Pinned: changing this value breaks dedupe across an upgrade.
        assert_eq!(a.as_str().len(), 4 + 64);
        assert!(a.as_str().starts_with("nd1-"));
        assert_eq!(a, DedupeKey::new(" CMK-EXPIRY ", &REG.to_uppercase(), Some("abc123")));
        assert_eq!(DedupeKey::new("r", REG, None), DedupeKey::new("r", REG, Some("")));
    }

    #[test]
    fn each_part_matters() {
        let base = DedupeKey::new("CMK-EXPIRY", REG, Some("v1"));
        assert_ne!(base, DedupeKey::new("CMK-EXPIRED", REG, Some("v1")));
        assert_ne!(base, DedupeKey::new("CMK-EXPIRY", &REG.replace("r1", "r2"), Some("v1")));
        assert_ne!(base, DedupeKey::new("CMK-EXPIRY", REG, Some("v2")));
        assert_ne!(base, DedupeKey::new("CMK-EXPIRY", REG, None));
        assert_ne!(base.for_channel("ops"), base.for_channel("sec"));
        assert_eq!(base.for_channel("ops"), base.for_channel("OPS"));
    }

    #[test]
    fn pinned_value() {
        // The format is a contract with stored ledgers: this must never change silently.
        // (Independently computed: sha256 over each part as u64-BE length + bytes.)
        let k = DedupeKey::new("CMK-EXPIRY", REG, Some("v1"));
        assert_eq!(k.as_str(), "nd1-f971b887afadf523f1547f80b238851f2727fee9af8908aa3967e6a9517bf9d6");
        assert_eq!(serde_json::to_value(&k).unwrap(), serde_json::Value::String(k.as_str().to_owned()));
    }

    proptest! {
        #[test]
        fn shifting_separators_never_collides(a in "[a-z|]{0,8}", b in "[a-z|]{0,8}", c in "[a-z|]{0,8}") {
            // Moving the last char of `a` to the front of `b` changes the key unless the parts are equal.
            if let Some(last) = a.chars().last() {
                let a2: String = a.chars().take(a.chars().count() - 1).collect();
                let b2 = format!("{last}{b}");
                prop_assert_ne!(DedupeKey::new(&a, &b, Some(&c)), DedupeKey::new(&a2, &b2, Some(&c)));
            }
        }
    }
}

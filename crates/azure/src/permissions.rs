//! The Azure RBAC actions each client call needs: one public table, so the ARM templates'
//! role assignments, `cmkguard doctor` and the docs can all be checked against the code.
//!
//! Every entry names the client operation, the action (or data action), the scope it is
//! checked at, and when it is needed (always, only in `enforce` mode, or only when vault-key
//! rotation is switched on). [`BUILTIN_ROLES`] lists the built-in roles the templates may
//! assign and what they grant, and [`missing`] says which needed actions a set of granted
//! (possibly wildcarded) actions does not cover.

use serde::Serialize;

/// Where an action is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// The watched subscriptions (or resource groups) holding the registries.
    Registries,
    /// The key vaults holding the CMKs (management plane).
    Vault,
    /// The vault's keys (Azure RBAC data plane, vault or key scope).
    VaultKeys,
    /// A Managed HSM's local RBAC (`/` or `/keys/<name>`); assigned in the HSM, not in ARM.
    ManagedHsmKeys,
    /// The user-assigned identity the registry uses to reach its key.
    Identity,
}

/// When cmkguard needs the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Needed {
    /// Every deployment (monitor mode included): reading facts.
    Always,
    /// Only in `enforce` mode: rotating a registry's key.
    Enforce,
    /// Only in `enforce` mode with vault-key rotation enabled.
    VaultKeyRotation,
}

/// One action a client call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Permission {
    /// The client operation (as named in this crate), e.g. `arm.get_registry`.
    pub operation: &'static str,
    /// The Azure RBAC action, e.g. `Microsoft.ContainerRegistry/registries/read`.
    pub action: &'static str,
    /// A data action (granted through `dataActions`), not a control-plane action.
    pub data_action: bool,
    pub scope: Scope,
    pub needed: Needed,
}

const fn p(
    operation: &'static str,
    action: &'static str,
    data_action: bool,
    scope: Scope,
    needed: Needed,
) -> Permission {
    Permission { operation, action, data_action, scope, needed }
}

/// Every action any client call in this crate needs.
pub const PERMISSIONS: &[Permission] = &[
    // ARM: container registries.
    p("arm.get_registry", "Microsoft.ContainerRegistry/registries/read", false, Scope::Registries, Needed::Always),
    p("arm.list_registries", "Microsoft.ContainerRegistry/registries/read", false, Scope::Registries, Needed::Always),
    p("arm.start_rotate_key", "Microsoft.ContainerRegistry/registries/read", false, Scope::Registries, Needed::Enforce),
    p(
        "arm.start_rotate_key",
        "Microsoft.ContainerRegistry/registries/write",
        false,
        Scope::Registries,
        Needed::Enforce,
    ),
    // The PATCH resends the registry's user-assigned identity: ARM checks assign/action on it.
    p(
        "arm.start_rotate_key",
        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
        false,
        Scope::Identity,
        Needed::Enforce,
    ),
    // ACR's Azure-AsyncOperation URL lives under the registry (`…/operationStatuses/…`).
    p(
        "arm.poll_rotate_key",
        "Microsoft.ContainerRegistry/registries/operationStatuses/read",
        false,
        Scope::Registries,
        Needed::Enforce,
    ),
    // ARM: vault safety net.
    p("arm.get_vault", "Microsoft.KeyVault/vaults/read", false, Scope::Vault, Needed::Always),
    // Resource Graph.
    p("graph.registries_using_key", "Microsoft.ResourceGraph/resources/read", false, Scope::Registries, Needed::Always),
    p("graph.all_registries", "Microsoft.ResourceGraph/resources/read", false, Scope::Registries, Needed::Always),
    // Key Vault data plane (Azure RBAC permission model).
    p("keyvault.get_key", "Microsoft.KeyVault/vaults/keys/read", true, Scope::VaultKeys, Needed::Always),
    p("keyvault.list_versions", "Microsoft.KeyVault/vaults/keys/read", true, Scope::VaultKeys, Needed::Always),
    p(
        "keyvault.get_rotation_policy",
        "Microsoft.KeyVault/vaults/keyrotationpolicies/read",
        true,
        Scope::VaultKeys,
        Needed::Always,
    ),
    p(
        "keyvault.rotate_key",
        "Microsoft.KeyVault/vaults/keys/rotate/action",
        true,
        Scope::VaultKeys,
        Needed::VaultKeyRotation,
    ),
    // Managed HSM keys (local RBAC inside the HSM; ARM templates cannot assign these).
    p(
        "keyvault.get_key",
        "Microsoft.KeyVault/managedHsm/keys/read/action",
        true,
        Scope::ManagedHsmKeys,
        Needed::Always,
    ),
    p(
        "keyvault.list_versions",
        "Microsoft.KeyVault/managedHsm/keys/read/action",
        true,
        Scope::ManagedHsmKeys,
        Needed::Always,
    ),
    p(
        "keyvault.rotate_key",
        "Microsoft.KeyVault/managedHsm/keys/rotate/action",
        true,
        Scope::ManagedHsmKeys,
        Needed::VaultKeyRotation,
    ),
    // `cmkguard doctor` reads its own permissions (changes nothing).
    p("doctor.check_permissions", "Microsoft.Authorization/permissions/read", false, Scope::Registries, Needed::Always),
];

/// The distinct actions needed at `scope` for a deployment that needs up to `level`
/// (`Always` = monitor mode, `Enforce`, `VaultKeyRotation` = everything).
pub fn actions(scope: Scope, level: Needed) -> Vec<&'static str> {
    let mut out: Vec<&'static str> =
        PERMISSIONS.iter().filter(|p| p.scope == scope && p.needed <= level).map(|p| p.action).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// A built-in role the templates may assign, and the (wildcarded) actions it grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BuiltinRole {
    pub name: &'static str,
    /// The role definition id (a GUID, the same in every cloud).
    pub id: &'static str,
    pub actions: &'static [&'static str],
    pub data_actions: &'static [&'static str],
}

/// Built-in roles that cover the actions above (public Azure role definitions).
pub const BUILTIN_ROLES: &[BuiltinRole] = &[
    BuiltinRole { name: "Reader", id: "acdd72a7-3385-48ef-bd42-f606fba81ae7", actions: &["*/read"], data_actions: &[] },
    BuiltinRole { name: "Contributor", id: "b24988ac-6180-11e0-b15e-0e1f9d0c0f7a", actions: &["*"], data_actions: &[] },
    BuiltinRole {
        name: "Managed Identity Operator",
        id: "f1a07417-d97a-45cb-824c-7a7467783830",
        actions: &[
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/read",
            "Microsoft.ManagedIdentity/userAssignedIdentities/*/assign/action",
        ],
        data_actions: &[],
    },
    BuiltinRole {
        name: "Key Vault Reader",
        id: "21090545-7ca7-4776-b22c-e363652d74d2",
        actions: &["Microsoft.KeyVault/*/read"],
        data_actions: &["Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/secrets/readMetadata/action"],
    },
    BuiltinRole {
        name: "Key Vault Crypto Officer",
        id: "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
        actions: &["Microsoft.KeyVault/*/read"],
        data_actions: &["Microsoft.KeyVault/vaults/keys/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*"],
    },
];

/// Whether an RBAC action pattern (`*` matches any run of characters, case-insensitive,
/// as Azure compares them) grants `action`.
pub fn covers(pattern: &str, action: &str) -> bool {
    fn go(p: &[u8], a: &[u8]) -> bool {
        match p.split_first() {
            None => a.is_empty(),
            Some((b'*', rest)) => (0..=a.len()).any(|i| go(rest, &a[i..])),
            Some((c, rest)) => a.split_first().is_some_and(|(d, arest)| c.eq_ignore_ascii_case(d) && go(rest, arest)),
        }
    }
    go(pattern.as_bytes(), action.as_bytes())
}

/// The needed actions at `scope` (up to `level`) that `granted` actions / data actions do not cover.
pub fn missing(
    scope: Scope,
    level: Needed,
    granted_actions: &[&str],
    granted_data_actions: &[&str],
) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = PERMISSIONS
        .iter()
        .filter(|p| p.scope == scope && p.needed <= level)
        .filter(|p| {
            let granted = if p.data_action { granted_data_actions } else { granted_actions };
            !granted.iter().any(|g| covers(g, p.action))
        })
        .map(|p| p.action)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_azure() {
        assert!(covers("*/read", "Microsoft.ContainerRegistry/registries/read"));
        assert!(covers("*", "Microsoft.ContainerRegistry/registries/write"));
        assert!(covers("microsoft.keyvault/vaults/keys/*", "Microsoft.KeyVault/vaults/keys/rotate/action"));
        assert!(!covers("*/read", "Microsoft.ContainerRegistry/registries/write"));
        assert!(!covers("Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/rotate/action"));
    }

    #[test]
    fn monitor_mode_needs_no_write() {
        let reg = actions(Scope::Registries, Needed::Always);
        assert!(reg.contains(&"Microsoft.ContainerRegistry/registries/read"));
        assert!(!reg.iter().any(|a| a.ends_with("/write")), "{reg:?}");
        assert!(actions(Scope::Identity, Needed::Always).is_empty());
        let enforce = actions(Scope::Registries, Needed::Enforce);
        assert!(enforce.contains(&"Microsoft.ContainerRegistry/registries/write"));
        assert_eq!(
            actions(Scope::Identity, Needed::Enforce),
            ["Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"]
        );
    }

    #[test]
    fn reader_and_key_vault_reader_cover_monitor_mode() {
        let role = |n: &str| BUILTIN_ROLES.iter().find(|r| r.name == n).unwrap();
        let reader = role("Reader");
        assert!(missing(Scope::Registries, Needed::Always, reader.actions, reader.data_actions).is_empty());
        let kvr = role("Key Vault Reader");
        assert!(missing(Scope::VaultKeys, Needed::Always, kvr.actions, kvr.data_actions).is_empty());
        assert_eq!(
            missing(Scope::VaultKeys, Needed::VaultKeyRotation, kvr.actions, kvr.data_actions),
            ["Microsoft.KeyVault/vaults/keys/rotate/action"]
        );
        // Reader cannot write: enforce mode needs more.
        assert!(
            missing(Scope::Registries, Needed::Enforce, reader.actions, reader.data_actions)
                .contains(&"Microsoft.ContainerRegistry/registries/write")
        );
    }

    #[test]
    fn data_actions_are_not_granted_by_actions() {
        assert_eq!(
            missing(Scope::VaultKeys, Needed::Always, &["*"], &[]),
            ["Microsoft.KeyVault/vaults/keyrotationpolicies/read", "Microsoft.KeyVault/vaults/keys/read"]
        );
    }
}

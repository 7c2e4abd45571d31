//! Azure clients (managed identity, ARM, Key Vault, Resource Graph) and the enrich stage.

pub mod permissions;

//! A minimal cmkguard policy to copy: one rule (registries without CMK), no settings.
//! Build: `cargo build --release --target wasm32-unknown-unknown -p <your crate>`, then
//! wrap the module into a component (see ../README.md).

use cmkguard_policy_sdk::{CONTRACT_VERSION, DecisionBuilder, Input, Policy, PolicyMetadata, Severity};

struct Template;

impl Policy for Template {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata {
            name: "template".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract_version: CONTRACT_VERSION.into(),
        }
    }

    fn validate_settings(settings: &str) -> Result<(), String> {
        match settings.trim() {
            "" | "{}" => Ok(()),
            _ => Err("this policy takes no settings (expected {})".into()),
        }
    }

    fn evaluate(input: &Input<'_>) -> Result<cmkguard_policy_sdk::Decision, String> {
        let mut d = DecisionBuilder::new();
        for r in input.registries.iter().filter(|r| !r.encryption_enabled) {
            d.finding(
                "TPL001",
                Severity::High,
                r,
                format!("registry {} is not encrypted with a customer-managed key", r.name),
            );
        }
        Ok(d.build())
    }
}

cmkguard_policy_sdk::export_policy!(Template);

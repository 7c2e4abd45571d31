//! The decision validator, re-exported from `cmkguard_model::validate` (it moved there so
//! the fuzz targets can build it without wasmtime). Its tests stay here: they use the
//! sample input of [`crate::sample`].

pub use cmkguard_model::validate::*;

#[cfg(test)]
mod tests {
    use super::*;
    use cmkguard_model::{Action, Decision, Finding, PolicyInput, RotateTarget, Severity};

    const REG: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-acr/providers/Microsoft.ContainerRegistry/registries/acr00";
    const KEY: &str = "https://kv-prod.vault.azure.net/keys/acr-cmk/a1b2c3d4e5f60718293a4b5c6d7e8f90";

    fn input() -> PolicyInput {
        crate::sample::sample_input(2)
    }

    fn check(actions: Vec<Action>) -> Result<(), String> {
        validate(&Decision { findings: vec![], actions }, &input(), &DecisionLimits::default())
    }

    #[test]
    fn actions_on_input_resources_pass() {
        let upper = REG.to_uppercase().replace("/SUBSCRIPTIONS/", "/subscriptions/");
        assert_eq!(
            check(vec![
                Action::Audit,
                Action::RotateRegistryKey { registry: upper, target: RotateTarget::Versionless }
            ]),
            Ok(())
        );
        assert_eq!(check(vec![Action::RotateVaultKey { key: KEY.into() }]), Ok(()));
        let versionless = "https://kv-prod.vault.azure.net/keys/acr-cmk".to_owned();
        assert_eq!(
            check(vec![Action::RotateRegistryKey { registry: REG.into(), target: RotateTarget::KeyId(versionless) }]),
            Ok(())
        );
    }

    #[test]
    fn actions_outside_the_input_are_refused() {
        let other_reg = REG.replace("acr00", "victim");
        let e = check(vec![Action::RotateRegistryKey { registry: other_reg, target: RotateTarget::Versionless }])
            .unwrap_err();
        assert!(e.contains("victim") && e.contains("not in the input"), "{e}");
        let other_key = "https://evil.vault.azure.net/keys/acr-cmk/a1b2c3d4e5f60718293a4b5c6d7e8f90".to_owned();
        let e = check(vec![Action::RotateRegistryKey {
            registry: REG.into(),
            target: RotateTarget::KeyId(other_key.clone()),
        }])
        .unwrap_err();
        assert!(e.contains("evil.vault"), "{e}");
        let e = check(vec![Action::RotateVaultKey { key: other_key }]).unwrap_err();
        assert!(e.contains("not the input's key"), "{e}");
        let e = check(vec![Action::Notify {
            channel: "https://hooks.example/x".into(),
            severity: Severity::High,
            title: "t".into(),
            text: "x".into(),
        }])
        .unwrap_err();
        assert!(e.contains("channel"), "{e}");
    }

    #[test]
    fn resolved_decisions_skip_membership_but_nothing_else() {
        let input = input();
        let key = input.key.as_ref().unwrap();
        let limits = DecisionLimits::default();
        let run = |findings, actions| validate_resolved(&Decision { findings, actions }, &input, &limits);
        let f = |resource: &str, message: String| Finding {
            rule_id: "X1".into(),
            severity: Severity::Low,
            resource: resource.into(),
            message,
        };
        let rotate = |target| Action::RotateRegistryKey { registry: REG.into(), target };
        assert_eq!(
            run(
                vec![f(REG, "ok".into()), f(&key.key_id, "ok".into()), f(&key.vault_uri, "ok".into())],
                vec![Action::Audit, rotate(RotateTarget::Versionless), Action::RotateVaultKey { key: KEY.into() }]
            ),
            Ok(())
        );
        // Everything but membership is still checked.
        assert!(run(vec![f(REG, "m".repeat(9000))], vec![]).unwrap_err().contains("at most 8192"));
        assert!(run(vec![f(REG, String::new()); 1001], vec![]).unwrap_err().contains("1001 findings"));
        let mut empty_rule = f(REG, "m".into());
        empty_rule.rule_id = " ".into();
        assert!(run(vec![empty_rule], vec![]).unwrap_err().contains("empty rule id"));
        let evil = "https://evil.vault.azure.net/keys/acr-cmk".to_owned();
        let e = run(vec![], vec![rotate(RotateTarget::KeyId(evil.clone()))]).unwrap_err();
        assert!(e.contains("evil.vault"), "{e}");
        let e = run(vec![], vec![Action::RotateVaultKey { key: evil }]).unwrap_err();
        assert!(e.contains("not the input's key"), "{e}");
        let notify = Action::Notify {
            channel: "https://hooks.example/x".into(),
            severity: Severity::High,
            title: "t".into(),
            text: "x".into(),
        };
        assert!(run(vec![], vec![notify]).unwrap_err().contains("channel"));
        let mut keyless = input.clone();
        keyless.key = None;
        keyless.registries.iter_mut().for_each(|r| r.key_identifier = None);
        let d = Decision { findings: vec![], actions: vec![rotate(RotateTarget::LatestVersion)] };
        assert!(validate_resolved(&d, &keyless, &limits).unwrap_err().contains("no key in the input to rotate to"));
        assert_eq!(validate_resolved(&d, &keyless, &limits), validate(&d, &keyless, &limits));
    }

    #[test]
    fn findings_must_name_input_resources_and_stay_small() {
        let f = |resource: &str, message: String| Finding {
            rule_id: "X1".into(),
            severity: Severity::Low,
            resource: resource.into(),
            message,
        };
        let run = |findings| validate(&Decision { findings, actions: vec![] }, &input(), &DecisionLimits::default());
        assert_eq!(
            run(vec![f(REG, "ok".into()), f(KEY, "ok".into()), f("https://kv-prod.vault.azure.net", "ok".into())]),
            Ok(())
        );
        assert!(run(vec![f("/subscriptions/x", "m".into())]).unwrap_err().contains("not in the input"));
        assert!(run(vec![f(REG, "m".repeat(9000))]).unwrap_err().contains("at most 8192"));
        assert!(run(vec![f(REG, String::new()); 1001]).unwrap_err().contains("1001 findings"));
    }
}

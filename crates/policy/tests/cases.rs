//! The shared test cases (`policy-wasm/testcases/`) against every policy: the default
//! policy (built by build.rs), the template, and the Python policy (built by
//! scripts/setup.d/20-policy.sh).

mod common;

use cmkguard_policy::testcase::{CaseOutcome, load_dir, run_dir};
use common::{built, engine, repo};

fn run(component: &[u8], min_cases: usize) -> String {
    let engine = engine();
    let policy = engine.load(component, "test", "{}").unwrap();
    check(&policy, min_cases)
}

fn check(policy: &cmkguard_policy::Policy, min_cases: usize) -> String {
    let results = run_dir(policy, &repo("policy-wasm/testcases")).unwrap();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            CaseOutcome::Failed(why) => Some(format!("{}: {why}", r.path.display())),
            _ => None,
        })
        .collect();
    assert!(failed.is_empty(), "{} case(s) failed:\n{}", failed.len(), failed.join("\n\n"));
    let passed = results.iter().filter(|r| r.outcome == CaseOutcome::Passed).count();
    assert!(passed >= min_cases, "only {passed} cases ran for {}", policy.reference().name);
    policy.reference().name.clone()
}

#[test]
fn default_policy_passes_its_cases() {
    assert_eq!(run(cmkguard_policy::DEFAULT_POLICY, 18), "cmkguard-default");
}

#[test]
fn default_policy_cases_cover_every_rule() {
    let cases = load_dir(&repo("policy-wasm/testcases")).unwrap();
    let text: String =
        cases.iter().map(|(_, c)| serde_json::to_string(&c.expect.get("cmkguard-default")).unwrap()).collect();
    for rule in ["CMK001", "CMK002", "CMK003", "CMK004", "CMK005", "CMK006", "CMK007", "CMK008"] {
        assert!(text.contains(rule), "no test case expects {rule}");
    }
    for action in ["rotate-registry-key", "rotate-vault-key", "notify", "audit", "latest-version", "versionless"] {
        assert!(text.contains(action), "no test case expects {action}");
    }
}

#[test]
fn python_policy_passes_the_shared_cases_and_imports_only_the_contract() {
    let path = built("python-notify.wasm");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with `bash scripts/setup.d/20-policy.sh` (scripts/test.sh runs it first)",
            path.display()
        )
    });
    let engine = engine();
    let policy = engine.load(&bytes, "python", "{}").unwrap();
    let imports = &policy.info().imports;
    assert!(
        imports.iter().all(|i| i.starts_with("cmkguard:policy/log@") || i.starts_with("cmkguard:policy/types@")),
        "{imports:?}"
    );
    assert_eq!(check(&policy, 17), "python-notify");
}

#[test]
fn template_policy_builds_and_runs() {
    let bytes = std::fs::read(built("template-policy.wasm")).unwrap();
    let engine = engine();
    let policy = engine.load(&bytes, "template", "{}").unwrap();
    assert_eq!(policy.reference().name, "template");
    let e = engine.load(&bytes, "template", r#"{"x":1}"#).unwrap_err();
    assert!(e.to_string().contains("takes no settings"), "{e}");
}

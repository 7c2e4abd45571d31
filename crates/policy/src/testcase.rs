//! Policy test cases: a [`PolicyInput`] and the decision each policy is expected to
//! give, one JSON file per case (`policy-wasm/testcases/`). `cmkguard policy test` and
//! the cargo tests run them.
//!
//! ```json
//! { "description": "…", "input": { …PolicyInput… },
//!   "settings": { "cmkguard-default": { "prefer_versionless": false } },
//!   "expect": { "cmkguard-default": { "findings": […], "actions": […] },
//!               "python-notify": { "error": "substring of the policy error" } } }
//! ```
//!
//! Expectations are keyed by the policy's metadata name. Findings and actions are
//! compared regardless of order; free text (a finding's `message`, a notification's
//! `title` and `text`) matches when the expected string is contained in the actual one.

use std::path::{Path, PathBuf};

use cmkguard_model::{Action, Decision, Finding, PolicyInput};
use serde::{Deserialize, Serialize};

use crate::engine::Policy;

/// One test case file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    #[serde(default)]
    pub description: String,
    pub input: PolicyInput,
    /// Settings per policy name (a JSON value each); a policy not named here gets
    /// `input.settings`.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, serde_json::Value>,
    pub expect: std::collections::BTreeMap<String, Expectation>,
}

/// What one policy should answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Expectation {
    /// The evaluation fails with an error containing this text.
    Error {
        error: String,
    },
    Decision(Decision),
}

/// The result of running one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub path: PathBuf,
    pub outcome: CaseOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseOutcome {
    Passed,
    Failed(String),
    /// No expectation for this policy.
    Skipped,
}

/// Reads every `*.json` case under `dir` (sorted by path).
pub fn load_dir(dir: &Path) -> Result<Vec<(PathBuf, TestCase)>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let case: TestCase = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((p, case))
        })
        .collect()
}

/// Runs one case against `policy`.
pub fn run_case(policy: &Policy, case: &TestCase) -> CaseOutcome {
    let Some(expect) = case.expect.get(&policy.reference().name) else {
        return CaseOutcome::Skipped;
    };
    let settings = case.settings.get(&policy.reference().name).map(|s| s.to_string());
    let settings = settings.as_deref().unwrap_or(&case.input.settings);
    let got = policy.evaluate_with(&case.input, Some(settings));
    match (expect, got) {
        (Expectation::Error { error }, Err(e)) if e.to_string().contains(error.as_str()) => CaseOutcome::Passed,
        (Expectation::Error { error }, Err(e)) => {
            CaseOutcome::Failed(format!("expected an error containing {error:?}, got error: {e}"))
        }
        (Expectation::Error { error }, Ok(d)) => CaseOutcome::Failed(format!(
            "expected an error containing {error:?}, got decision {}",
            serde_json::to_string(&d).unwrap_or_default()
        )),
        (Expectation::Decision(_), Err(e)) => CaseOutcome::Failed(format!("expected a decision, got error: {e}")),
        (Expectation::Decision(want), Ok(got)) => match compare(want, &got) {
            Ok(()) => CaseOutcome::Passed,
            Err(why) => {
                CaseOutcome::Failed(format!("{why}\n  got: {}", serde_json::to_string_pretty(&got).unwrap_or_default()))
            }
        },
    }
}

/// Runs every case in `dir`.
pub fn run_dir(policy: &Policy, dir: &Path) -> Result<Vec<CaseResult>, String> {
    Ok(load_dir(dir)?.into_iter().map(|(path, case)| CaseResult { outcome: run_case(policy, &case), path }).collect())
}

fn text_matches(want: &str, got: &str) -> bool {
    got.contains(want)
}

fn finding_matches(want: &Finding, got: &Finding) -> bool {
    want.rule_id == got.rule_id
        && want.severity == got.severity
        && want.resource == got.resource
        && text_matches(&want.message, &got.message)
}

fn action_matches(want: &Action, got: &Action) -> bool {
    match (want, got) {
        (
            Action::Notify { channel: wc, severity: ws, title: wt, text: wx },
            Action::Notify { channel: gc, severity: gs, title: gt, text: gx },
        ) => wc == gc && ws == gs && text_matches(wt, gt) && text_matches(wx, gx),
        _ => want == got,
    }
}

/// Order-insensitive match: every expected item pairs with a distinct actual one, and
/// nothing is left over.
fn match_all<T: serde::Serialize>(
    what: &str,
    want: &[T],
    got: &[T],
    eq: impl Fn(&T, &T) -> bool,
) -> Result<(), String> {
    let mut used = vec![false; got.len()];
    for w in want {
        match got.iter().enumerate().position(|(i, g)| !used[i] && eq(w, g)) {
            Some(i) => used[i] = true,
            None => return Err(format!("missing {what}: {}", serde_json::to_string(w).unwrap_or_default())),
        }
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(format!("unexpected {what}: {}", serde_json::to_string(&got[i]).unwrap_or_default()));
    }
    Ok(())
}

/// Whether `got` satisfies `want` (see the module docs for the rules).
pub fn compare(want: &Decision, got: &Decision) -> Result<(), String> {
    match_all("finding", &want.findings, &got.findings, finding_matches)?;
    match_all("action", &want.actions, &got.actions, action_matches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmkguard_model::Severity;

    fn notify(title: &str) -> Action {
        Action::Notify { channel: "ops".into(), severity: Severity::High, title: title.into(), text: String::new() }
    }

    #[test]
    fn comparison_ignores_order_and_matches_text_by_substring() {
        let got = Decision {
            findings: vec![],
            actions: vec![Action::Audit, notify("[high] CMK008: vault can lose the key")],
        };
        let want = Decision { findings: vec![], actions: vec![notify("CMK008"), Action::Audit] };
        assert_eq!(compare(&want, &got), Ok(()));
        let e = compare(&Decision { findings: vec![], actions: vec![Action::Audit] }, &got).unwrap_err();
        assert!(e.starts_with("unexpected action"), "{e}");
        let e =
            compare(&Decision { findings: vec![], actions: vec![notify("CMK001"), Action::Audit] }, &got).unwrap_err();
        assert!(e.starts_with("missing action"), "{e}");
    }

    #[test]
    fn case_files_parse_with_clear_errors() {
        let bad = r#"{"input": {}, "expect": {}}"#;
        let e = serde_json::from_str::<TestCase>(bad).unwrap_err().to_string();
        assert!(e.contains("missing field"), "{e}");
    }
}

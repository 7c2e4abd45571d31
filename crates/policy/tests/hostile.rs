//! Hostile and broken policy modules are contained with a clear error, and the engine
//! keeps serving other evaluations afterwards.

mod common;

use cmkguard_policy::{EvalError, LoadError, PolicySource};
use common::{component, engine, sample_input};

/// Loads a benign module next to the hostile one and checks it still evaluates.
fn still_serves(engine: &cmkguard_policy::PolicyEngine) {
    let good = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").unwrap();
    let d = good.evaluate(&sample_input(4)).expect("the engine keeps serving");
    assert!(d.findings.iter().any(|f| f.rule_id == "CMK003"), "{d:?}");
}

fn eval_error(name: &str) -> EvalError {
    let engine = engine();
    let policy = engine.load(&component(name), name, "{}").unwrap_or_else(|e| panic!("{name} should load: {e}"));
    let err = policy.evaluate(&sample_input(3)).expect_err("hostile evaluate must fail");
    // The same instance-pre serves again: a fresh sandbox each time.
    let again = policy.evaluate(&sample_input(1)).expect_err("and fail again, the same way");
    assert_eq!(std::mem::discriminant(&err), std::mem::discriminant(&again));
    still_serves(&engine);
    err
}

fn load_error(name: &str, bytes: &[u8]) -> LoadError {
    let engine = engine();
    let err = engine.load(bytes, name, "{}").expect_err("must be refused");
    still_serves(&engine);
    err
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let e = eval_error("infinite-loop.wat");
    assert_eq!(e, EvalError::Timeout(50), "{e}");
    assert!(e.to_string().contains("deadline of 50 ms"));
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    let e = eval_error("memory-bomb.wat");
    assert_eq!(e, EvalError::MemoryLimit(64), "{e}");
}

#[test]
fn deep_recursion_overflows_the_stack_cap() {
    assert_eq!(eval_error("deep-recursion.wat"), EvalError::StackOverflow);
}

#[test]
fn huge_output_is_refused() {
    let e = eval_error("huge-output.wat");
    assert!(matches!(&e, EvalError::InvalidDecision(m) if m.contains("5000 findings")), "{e}");
    let e = eval_error("huge-string.wat");
    assert!(matches!(&e, EvalError::InvalidDecision(m) if m.contains("message is 16777216 bytes")), "{e}");
}

#[test]
fn actions_on_resources_outside_the_input_are_refused() {
    let e = eval_error("escape-registry.wat");
    assert!(
        matches!(&e, EvalError::InvalidDecision(m) if m.contains("registries/victim") && m.contains("not in the input")),
        "{e}"
    );
}

#[test]
fn wasi_imports_are_refused_at_load() {
    for (file, import) in [
        ("wasi-filesystem-import.wat", "wasi:filesystem/types@0.2.0"),
        ("wasi-sockets-import.wat", "wasi:sockets/tcp@0.2.0"),
    ] {
        let e = load_error(file, &component(file));
        assert!(matches!(&e, LoadError::ForbiddenImport(i) if i == import), "{file}: {e}");
        assert!(e.to_string().contains("may import only cmkguard:policy/log"), "{e}");
    }
}

#[test]
fn wrong_contract_versions_are_refused() {
    let e = load_error("wrong-contract.wat", &component("wrong-contract.wat"));
    assert!(matches!(&e, LoadError::WrongContract { found, .. } if found.contains("evaluator@3.0.0")), "{e}");
    let e = load_error("wrong-metadata-version.wat", &component("wrong-metadata-version.wat"));
    assert!(matches!(&e, LoadError::ContractVersion(v, _) if v == "9.0.0"), "{e}");
}

#[test]
fn malformed_bytes_are_refused() {
    let cases: &[(&str, &[u8], &str)] = &[
        ("empty", b"", "\\0asm header"),
        ("text", b"hello, I am not wasm", "\\0asm header"),
        ("core module", b"\0asm\x01\0\0\0", "core WebAssembly module"),
        ("truncated component", b"\0asm\x0d\0\x01\0\x07\xff\xff", "does not compile"),
    ];
    for (what, bytes, needle) in cases {
        let e = load_error(what, bytes);
        assert!(e.to_string().contains(needle), "{what}: {e}");
    }
    let mut truncated = cmkguard_policy::DEFAULT_POLICY.to_vec();
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(load_error("half a policy", &truncated), LoadError::Compile(_)));
}

#[tokio::test]
async fn digest_mismatch_is_refused() {
    let dir = std::env::temp_dir().join(format!("cmkguard-policy-digest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.wasm");
    std::fs::write(&path, cmkguard_policy::DEFAULT_POLICY).unwrap();
    let wrong = "0".repeat(64);
    let source = PolicySource::File { path: path.clone(), sha256: Some(wrong.clone()) };
    let e = cmkguard_policy::PolicyHost::open(engine(), source, None, "{}".into(), None).await.unwrap_err();
    assert!(matches!(&e, LoadError::DigestMismatch { expected, .. } if *expected == wrong), "{e}");
    let right = cmkguard_policy::source::sha256_hex(cmkguard_policy::DEFAULT_POLICY);
    let source = PolicySource::File { path, sha256: Some(right.clone()) };
    let host = cmkguard_policy::PolicyHost::open(engine(), source, None, "{}".into(), None).await.unwrap();
    assert_eq!(host.current().reference().digest, right);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_log_import_is_allowed_and_nothing_else_is_needed() {
    let engine = engine();
    let p = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").unwrap();
    assert!(
        p.info()
            .imports
            .iter()
            .all(|i| i.starts_with("cmkguard:policy/log@") || i.starts_with("cmkguard:policy/types@")),
        "{:?}",
        p.info().imports
    );
    assert!(p.info().exports.iter().any(|e| e == "cmkguard:policy/evaluator@2.0.0"), "{:?}", p.info().exports);
    assert_eq!(p.info().contract_version, cmkguard_policy::CONTRACT_VERSION);
    let benign = engine.load(&component("empty-decision.wat"), "benign", "{}").unwrap();
    assert_eq!(benign.evaluate(&sample_input(2)).unwrap(), cmkguard_model::Decision::default());
}

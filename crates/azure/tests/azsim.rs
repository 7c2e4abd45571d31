//! The Azure clients against azsim over real HTTPS on loopback: rotate round trip with
//! LRO polling, throttling with `Retry-After`, the Key Vault 401 challenge, token refresh,
//! paging, the outbound allowlist, the time budget, and the enricher end to end.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use azsim::{Options, Route};
use chrono::Utc;
use cmkguard_azure::arm::{OperationStatus, PendingOperation, PollKind, RotateOutcome, RotateRequest, RotateStart};
use cmkguard_azure::{AzureError, Budget, Class, Enricher};
use cmkguard_model::{Event, EventKind, KeyEvent, KeyId, RegistryWrite, ResourceId};
use common::*;

fn budget() -> Budget {
    Budget::new(Duration::from_secs(20))
}

fn registry(sim: &azsim::Running, name: &str) -> ResourceId {
    ResourceId::parse(&sim.registry_id(name).expect("registry in scenario")).unwrap()
}

#[tokio::test]
async fn rotate_round_trip_polls_the_operation() {
    let env = clients(start(Options { lro_polls: 2, ..Default::default() }).await);
    let (sim, arm) = (&env.sim, &env.clients.arm);
    let id = registry(sim, "acrpinned");
    let versions = sim.key_versions("kv-demo", "cmk-pinned");
    let latest = KeyId::parse(&sim.key_id("kv-demo", "cmk-pinned", versions.last().map(String::as_str))).unwrap();

    let before = arm.get_registry(&id, &budget()).await.unwrap();
    assert_ne!(before.facts.key_identifier.as_deref().map(|k| KeyId::parse(k).unwrap()), Some(latest.clone()));

    // Step by step: start, record, poll until terminal.
    let req = RotateRequest { key_id: latest.clone(), identity_client_id: None };
    let RotateStart::Pending(op) = arm.start_rotate_key(&id, &req, &budget()).await.unwrap() else {
        panic!("expected a pending operation")
    };
    assert_eq!(op.kind, PollKind::AsyncOperation);
    // The pending operation survives a round trip through JSON (it waits in the ledger).
    let op: PendingOperation = serde_json::from_str(&serde_json::to_string(&op).unwrap()).unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let s = arm.poll_operation(&op, &budget()).await.unwrap();
        statuses.push(s.clone());
        if s.is_terminal() {
            break;
        }
    }
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    assert!(matches!(statuses[0], OperationStatus::Running { .. }));
    assert_eq!(statuses[2], OperationStatus::Succeeded);
    let after = arm.get_registry(&id, &budget()).await.unwrap();
    assert_eq!(KeyId::parse(after.facts.key_identifier.as_deref().unwrap()).unwrap(), latest);
    assert_eq!(after.facts.identity.as_deref(), Some("33b5bfe1-ff99-42ec-a264-a19d6bf8e4f7"));
    assert!(after.facts.last_rotation.is_some());

    // Asking again changes nothing.
    assert!(matches!(arm.start_rotate_key(&id, &req, &budget()).await.unwrap(), RotateStart::AlreadyCurrent(_)));

    // The convenience loop: back to the versionless key, polled to the end within budget.
    let patches = sim.calls(Route::ArmRegistryPatch);
    let req = RotateRequest { key_id: latest.versionless(), identity_client_id: None };
    match arm.rotate_key(&id, &req, &budget()).await.unwrap() {
        RotateOutcome::Succeeded(r) => {
            assert!(r.facts.key_rotation_enabled);
            assert_eq!(KeyId::parse(r.facts.key_identifier.as_deref().unwrap()).unwrap(), latest.versionless());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.calls(Route::ArmRegistryPatch), patches + 1);
}

#[tokio::test]
async fn failed_and_unknown_operation_states() {
    let env = clients(start(Options { lro_polls: 1, ..Default::default() }).await);
    let (sim, arm) = (&env.sim, &env.clients.arm);
    let id = registry(sim, "acrpinned");
    let versions = sim.key_versions("kv-demo", "cmk-pinned");
    let target = KeyId::parse(&sim.key_id("kv-demo", "cmk-pinned", versions.last().map(String::as_str))).unwrap();
    let req = RotateRequest { key_id: target, identity_client_id: None };

    let RotateStart::Pending(op) = arm.start_rotate_key(&id, &req, &budget()).await.unwrap() else { panic!() };
    // A 500 from the status URL: unknown, not failed.
    sim.fail_next(Route::ArmOperationStatus, 1, 500, None);
    assert!(matches!(arm.poll_operation(&op, &budget()).await.unwrap(), OperationStatus::Unknown { .. }));
    // Then the operation goes on normally.
    let mut last = OperationStatus::Unknown { reason: String::new() };
    for _ in 0..4 {
        last = arm.poll_operation(&op, &budget()).await.unwrap();
        if last.is_terminal() {
            break;
        }
    }
    assert_eq!(last, OperationStatus::Succeeded);

    // An operation that ends Failed keeps the old key and reports the code.
    let back = RotateRequest {
        key_id: KeyId::parse(&sim.key_id("kv-demo", "cmk-pinned", Some(&versions[0]))).unwrap(),
        identity_client_id: None,
    };
    sim.fail_next_operation("KeyVaultAccessDenied", "identity cannot unwrap");
    match arm.rotate_key(&id, &back, &budget()).await.unwrap() {
        RotateOutcome::Failed { code, message } => {
            assert_eq!(code.as_deref(), Some("KeyVaultAccessDenied"));
            assert!(message.contains("unwrap"));
        }
        other => panic!("{other:?}"),
    }

    // A PATCH ARM refuses (EC key) is a terminal error with ARM's code.
    let ec = RotateRequest {
        key_id: KeyId::parse(&sim.key_id("kv-demo", "ec-signing", None)).unwrap(),
        identity_client_id: None,
    };
    let e = arm.start_rotate_key(&id, &ec, &budget()).await.unwrap_err();
    assert_eq!(e.class(), Class::Terminal, "{e}");
    assert!(e.to_string().contains("InvalidKeyVaultKeyType"), "{e}");
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let env = clients(start(Options::default()).await);
    let (sim, arm) = (&env.sim, &env.clients.arm);
    let id = registry(sim, "acrauto");
    arm.get_registry(&id, &budget()).await.unwrap(); // token and connection warm
    let before = sim.calls(Route::ArmRegistryGet);
    sim.fail_next(Route::ArmRegistryGet, 1, 429, Some(1));
    let t = Instant::now();
    let r = arm.get_registry(&id, &budget()).await.unwrap();
    assert_eq!(r.facts.name, "acrauto");
    assert_eq!(sim.calls(Route::ArmRegistryGet), before + 2);
    // Behaviour, not performance: the client waited at least what Azure asked for.
    assert!(t.elapsed() >= Duration::from_secs(1), "retried after {:?}", t.elapsed());

    // 503s and a dropped connection are retried too.
    sim.fail_next(Route::KvGetKey, 2, 503, None);
    sim.drop_next(Route::KvGetKey, 1);
    let key = KeyId::parse(&sim.key_id("kv-demo", "cmk-auto", None)).unwrap();
    let b = env.clients.keyvault.get_key(&key, &budget()).await.unwrap();
    assert_eq!(b.key.kty, "RSA-HSM");
}

#[tokio::test]
async fn key_vault_challenge_then_cached() {
    let env = clients(start(Options::default()).await);
    let (sim, kv) = (&env.sim, &env.clients.keyvault);
    let key = KeyId::parse(&sim.key_id("kv-demo", "cmk-auto", None)).unwrap();
    let b = kv.get_key(&key, &budget()).await.unwrap();
    assert!(KeyId::parse(&b.key.kid).unwrap().same_key(&key));
    let log: Vec<_> = sim.call_log().into_iter().filter(|c| c.route == Route::KvGetKey).collect();
    assert_eq!(log.iter().map(|c| c.status).collect::<Vec<_>>(), [401, 200], "{log:?}");
    // The challenge is remembered: the next call sends the token at once.
    kv.get_rotation_policy(&key, &budget()).await.unwrap().expect("cmk-auto has a policy");
    let log: Vec<_> = sim.call_log().into_iter().filter(|c| c.route == Route::KvGetRotationPolicy).collect();
    assert_eq!(log.iter().map(|c| c.status).collect::<Vec<_>>(), [200]);
    // Exactly one token each for ARM-free Key Vault use.
    assert_eq!(env.source.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tokens_are_refreshed() {
    // Tokens live 2 s; refreshed when less than 1 s is left.
    let sim = start(Options { token_lifetime: Duration::from_secs(2), ..Default::default() }).await;
    let env = clients_with(sim, cmkguard_azure::http::RetryPolicy::default(), Duration::from_secs(1));
    let (sim, arm) = (&env.sim, &env.clients.arm);
    let id = registry(sim, "acrauto");
    arm.get_registry(&id, &budget()).await.unwrap();
    arm.get_registry(&id, &budget()).await.unwrap();
    assert_eq!(env.source.fetches.load(Ordering::SeqCst), 1, "a valid token is reused");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    arm.get_registry(&id, &budget()).await.unwrap();
    assert_eq!(env.source.fetches.load(Ordering::SeqCst), 2, "a token near expiry is replaced before use");

    // A token Azure stops accepting early (revoked): one 401, a fresh token, success.
    sim.expire_tokens();
    arm.get_registry(&id, &budget()).await.unwrap();
    assert_eq!(env.source.fetches.load(Ordering::SeqCst), 3);
    let key = KeyId::parse(&sim.key_id("kv-demo", "cmk-auto", None)).unwrap();
    env.clients.keyvault.get_key(&key, &budget()).await.unwrap();
    sim.expire_tokens();
    env.clients.keyvault.get_key(&key, &budget()).await.unwrap();
    let statuses: Vec<u16> =
        sim.call_log().into_iter().filter(|c| c.route == Route::KvGetKey).map(|c| c.status).collect();
    assert_eq!(statuses, [401, 200, 401, 200]);
}

#[tokio::test]
async fn paging_key_versions_and_resource_graph() {
    let env = clients(start(Options { kv_page_size: 2, ..Default::default() }).await);
    let sim = &env.sim;
    for _ in 0..3 {
        sim.rotate_key("kv-demo", "cmk-pinned").unwrap();
    }
    let key = KeyId::parse(&sim.key_id("kv-demo", "cmk-pinned", None)).unwrap();
    let versions = env.clients.keyvault.list_versions(&key, &budget()).await.unwrap();
    assert_eq!(versions.len(), 5);
    let mut got: Vec<String> =
        versions.iter().map(|v| KeyId::parse(&v.kid).unwrap().version().unwrap().to_owned()).collect();
    let mut want = sim.key_versions("kv-demo", "cmk-pinned");
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(sim.call_log().iter().filter(|c| c.route == Route::KvKeyVersions && c.status == 200).count(), 3);

    let graph = env.clients.graph.clone().with_page_size(2);
    let before = sim.calls(Route::ResourceGraph);
    let all = graph.all_registries(&[sub()], &budget()).await.unwrap();
    let mut names: Vec<_> = all.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["acrauto", "acrexpiring", "acrnocmk", "acrpinned", "acrweakvault"]);
    assert_eq!(sim.calls(Route::ResourceGraph), before + 3);
}

#[tokio::test]
async fn registries_using_a_key_any_version_any_case() {
    let env = clients(start(Options::default()).await);
    let sim = &env.sim;
    let graph = &env.clients.graph;
    // Versioned (acrpinned) and versionless (none) registries of cmk-pinned, asked with
    // an upper-cased versioned id of another version.
    let versions = sim.key_versions("kv-demo", "cmk-pinned");
    let asked = sim.key_id("kv-demo", "CMK-PINNED", versions.last().map(String::as_str)).replace("kv-demo", "KV-DEMO");
    let regs = graph.registries_using_key(&KeyId::parse(&asked).unwrap(), &[sub()], &budget()).await.unwrap();
    assert_eq!(regs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["acrpinned"]);
    let auto = KeyId::parse(&sim.key_id("kv-demo", "cmk-auto", None)).unwrap();
    let regs = graph.registries_using_key(&auto, &[], &budget()).await.unwrap();
    assert_eq!(regs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["acrauto"]);
    assert!(regs[0].key_rotation_enabled);
    let vault = graph.find_vault("KV-demo", &[sub()], &budget()).await.unwrap().unwrap();
    assert_eq!(vault.name(), "kv-demo");
}

#[tokio::test]
async fn allowlist_refuses_before_connecting() {
    let env = clients(start(Options::default()).await);
    let sim = &env.sim;
    let before = sim.calls(Route::Any);
    for evil in [
        "https://evil.example.com/keys/k1",
        "https://kv-demo.vault.azure.net/keys/k1",
        "https://127.0.0.1/keys/k1",
        "https://kv-demo.vault.azsim.test:1/keys/k1",
    ] {
        let key = KeyId::parse(evil).unwrap();
        let e = env.clients.keyvault.get_key(&key, &budget()).await.unwrap_err();
        assert!(matches!(e, AzureError::NotAllowed { .. }), "{evil}: {e}");
        assert_eq!(e.class(), Class::Terminal);
    }
    // A status URL from an answer is checked the same way.
    let op = PendingOperation {
        registry: sim.registry_id("acrauto").unwrap(),
        status_url: "https://169.254.169.254/metadata/identity/oauth2/token".into(),
        kind: PollKind::AsyncOperation,
        not_before: Utc::now(),
    };
    let e = env.clients.arm.poll_operation(&op, &budget()).await.unwrap_err();
    assert!(matches!(e, AzureError::NotAllowed { .. }), "{e}");
    assert_eq!(sim.calls(Route::Any), before, "nothing reached azsim");
    assert_eq!(env.source.fetches.load(Ordering::SeqCst), 0, "no token was even fetched");
}

#[tokio::test]
async fn budget_exhaustion_is_retryable() {
    let env = clients(start(Options::default()).await);
    let (sim, arm) = (&env.sim, &env.clients.arm);
    let id = registry(sim, "acrauto");
    // Azure keeps failing: the retries stop at the budget.
    sim.fail_next(Route::ArmRegistryGet, 1000, 503, None);
    let e = arm.get_registry(&id, &Budget::new(Duration::from_millis(300))).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(matches!(e, AzureError::BudgetExhausted { .. } | AzureError::Status { status: 503, .. }), "{e}");
    sim.clear_faults();
    // Azure asks for more time than is left: give up at once, retryable.
    sim.fail_next(Route::ArmRegistryGet, 1, 429, Some(30));
    let t = Instant::now();
    let e = arm.get_registry(&id, &Budget::new(Duration::from_secs(2))).await.unwrap_err();
    assert!(matches!(e, AzureError::BudgetExhausted { .. }), "{e}");
    assert_eq!(e.class(), Class::Retryable);
    assert!(t.elapsed() < Duration::from_secs(30), "did not sleep past the budget");
    // A slow Azure: the attempt is cut at the budget.
    sim.set_latency(Route::ArmRegistryGet, Duration::from_secs(5));
    let e = arm.get_registry(&id, &Budget::new(Duration::from_millis(500))).await.unwrap_err();
    assert_eq!(e.class(), Class::Retryable, "{e}");
}

fn key_event(sim: &azsim::Running, key: &str) -> Event {
    let version = sim.key_versions("kv-demo", key).pop().unwrap();
    Event {
        id: "evt-1".into(),
        time: Utc::now(),
        subject: key.into(),
        event_type: "Microsoft.KeyVault.KeyNewVersionCreated".into(),
        kind: EventKind::KeyNewVersionCreated(KeyEvent {
            vault_resource_id: None,
            vault_name: "kv-demo".into(),
            key_name: key.into(),
            version: version.clone(),
            key_id: KeyId::parse(&sim.key_id("kv-demo", key, Some(&version))).unwrap(),
            not_before: None,
            expires: None,
        }),
    }
}

#[tokio::test]
async fn enricher_builds_the_policy_input() {
    let env = clients(start(Options::default()).await);
    let sim = &env.sim;
    let enricher = Enricher::new(env.clients.clone(), vec![sub()], Duration::from_secs(20), r#"{"x":1}"#.into());
    let now = Utc::now();

    let input = enricher.enrich(&key_event(sim, "cmk-auto"), now).await.unwrap();
    assert_eq!(input.event.kind, "key-new-version-created");
    assert_eq!(input.settings, r#"{"x":1}"#);
    let key = input.key.as_ref().unwrap();
    assert_eq!(
        (key.key_type.as_str(), key.key_size, key.enabled, key.has_rotation_policy),
        ("RSA-HSM", Some(3072), true, true)
    );
    assert_eq!((key.vault.soft_delete, key.vault.purge_protection), (Some(true), Some(true)));
    assert!(key.expires.is_some());
    assert_eq!(input.registries.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["acrauto"]);
    // The facts are the documented JSON format.
    cmkguard_model::PolicyInput::from_json(&serde_json::to_string(&input).unwrap()).unwrap();

    // A registry write without CMK: the registry, no key.
    let nocmk = Event {
        id: "evt-2".into(),
        time: now,
        subject: sim.registry_id("acrnocmk").unwrap(),
        event_type: "Microsoft.Resources.ResourceWriteSuccess".into(),
        kind: EventKind::RegistryWritten(RegistryWrite {
            registry: registry(sim, "acrnocmk"),
            correlation_id: None,
            caller: None,
        }),
    };
    let input = enricher.enrich(&nocmk, now).await.unwrap();
    assert!(input.key.is_none());
    assert_eq!(input.registries.len(), 1);
    assert!(!input.registries[0].encryption_enabled);

    // Sweeps: the registry and its key; a vault without purge protection is "not confirmed";
    // the key is fetched once per run.
    let sweep = |name: &str| Event {
        id: format!("sweep-{name}"),
        time: now,
        subject: name.into(),
        event_type: "cmkguard.Sweep".into(),
        kind: EventKind::Sweep { registry: registry(sim, name) },
    };
    let input = enricher.enrich(&sweep("acrweakvault"), now).await.unwrap();
    let key = input.key.unwrap();
    assert_eq!(key.name, "cmk-weak");
    assert_eq!(key.vault.purge_protection, None);
    let gets = sim.calls(Route::KvGetKey);
    let input = enricher.enrich(&sweep("acrweakvault"), now).await.unwrap();
    assert_eq!(input.key.unwrap().name, "cmk-weak");
    assert_eq!(sim.calls(Route::KvGetKey), gets, "key facts cached within a sweep run");

    // A key event from a vault outside the cloud is refused (terminal).
    let mut evil = key_event(sim, "cmk-auto");
    if let EventKind::KeyNewVersionCreated(k) = &mut evil.kind {
        k.key_id = KeyId::parse("https://attacker.example/keys/k/1").unwrap();
    }
    let e = enricher.enrich(&evil, now).await.unwrap_err();
    assert_eq!(e.class(), Class::Terminal, "{e}");
}

#[tokio::test]
async fn doctor_checks_against_azsim() {
    use cmkguard_azure::doctor::{self, DoctorInput, Status};
    let env = clients(start(Options::default()).await);
    let sim = &env.sim;
    let input = DoctorInput { subscriptions: vec![sub()], per_check: Duration::from_secs(10), ..Default::default() };
    let checks = doctor::run(&env.clients, &input).await;
    let table = doctor::render(&checks);
    assert!(checks.iter().all(|c| c.status != Status::Fail), "{table}");
    // Keys were discovered from the registries: kv-demo's and kv-nopurge's.
    assert!(
        checks.iter().filter(|c| c.name.starts_with("read key") && c.status == Status::Pass).count() >= 4,
        "{table}"
    );
    assert!(checks.iter().any(|c| c.name.starts_with("write permission") && c.status == Status::Skip), "{table}");
    let token = env.clients.http.tokens().get(azsim::ARM_AUDIENCE).await.unwrap();
    assert!(!table.contains(token.secret()), "no token in the table");

    // A key that does not exist fails with a fix.
    let missing = KeyId::parse(&sim.key_id("kv-demo", "no-such-key", None)).unwrap();
    let input = DoctorInput { keys: vec![missing], ..input };
    let checks = doctor::run(&env.clients, &input).await;
    let bad = checks.iter().find(|c| c.name.starts_with("read key")).unwrap();
    assert_eq!(bad.status, Status::Fail, "{}", doctor::render(&checks));
    assert!(bad.fix.is_some());
}

#[tokio::test]
async fn doctor_reports_a_broken_credential() {
    use cmkguard_azure::doctor::{self, DoctorInput, Status};
    let sim = start(Options { identity_header: Some("right".into()), ..Default::default() }).await;
    let mut env = clients(sim);
    // Same endpoint, wrong X-IDENTITY-HEADER: the platform's identity is not reachable.
    let profile = common::profile(&env.sim);
    let client = cmkguard_azure::http::build_client(&profile).unwrap();
    let source = std::sync::Arc::new(common::MsiSource {
        endpoint: env.sim.identity_endpoint(),
        header: "wrong".into(),
        client: client.clone(),
        fetches: Default::default(),
    });
    let http = cmkguard_azure::AzureHttp::with_client(
        profile,
        std::sync::Arc::new(cmkguard_azure::TokenCache::new(source)),
        client,
    );
    env.clients = cmkguard_azure::AzureClients::from_http(http);
    let checks = doctor::run(
        &env.clients,
        &DoctorInput { subscriptions: vec![sub()], per_check: Duration::from_secs(5), ..Default::default() },
    )
    .await;
    let token = checks.iter().find(|c| c.name.starts_with("token for ARM")).unwrap();
    assert_eq!(token.status, Status::Fail);
    assert!(token.fix.as_deref().unwrap().contains("AZURE_CLIENT_ID"));
}

#[tokio::test]
async fn rotate_a_vault_key_and_read_a_version() {
    let env = clients(start(Options::default()).await);
    let (sim, kv) = (&env.sim, &env.clients.keyvault);
    let key = KeyId::parse(&sim.key_id("kv-demo", "cmk-auto", None)).unwrap();
    let before = sim.key_versions("kv-demo", "cmk-auto");
    let rotated = kv.rotate_key(&key, &budget()).await.unwrap();
    let new = KeyId::parse(&rotated.key.kid).unwrap();
    let after = sim.key_versions("kv-demo", "cmk-auto");
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(new.version(), after.last().map(String::as_str));
    // The latest is the new version; the old version can still be read by id.
    assert_eq!(KeyId::parse(&kv.get_key(&key, &budget()).await.unwrap().key.kid).unwrap(), new);
    let old = key.with_version(&before[0]);
    assert_eq!(KeyId::parse(&kv.get_key(&old, &budget()).await.unwrap().key.kid).unwrap(), old);
    // The versionless registry follows the new version.
    let reg = env.clients.arm.get_registry(&registry(sim, "acrauto"), &budget()).await.unwrap();
    assert_eq!(KeyId::parse(reg.facts.versioned_key_identifier.as_deref().unwrap()).unwrap(), new);
}

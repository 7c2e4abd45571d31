//! Log capture: the real `cmkguard serve` against azsim, at debug level, through events
//! that fetch managed-identity tokens, read Key Vault and ARM, post to a chat webhook and
//! refuse bad keys. Its log must contain none of the secrets it handled: no bearer token
//! (azsim's are `azsim.` + 64 hex), no `X-IDENTITY-HEADER` value, no webhook URL or its
//! secret path, no direct-mode key.

use cmkguard_e2e::{ChatSink, Guard, GuardOptions, Sim, registry_id, registry_write_event, scenario};

/// Every `azsim.<64 hex>` token in `text`.
fn bearer_tokens(text: &str) -> Vec<String> {
    text.match_indices("azsim.")
        .filter_map(|(i, _)| {
            let rest = &text[i + 6..];
            let hex = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
            (hex >= 32).then(|| text[i..i + 6 + hex].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_the_e2e_server_carry_no_secrets() {
    let sim = Sim::start(&scenario("demo.json"), &[]);
    let sink = ChatSink::start().await.expect("chat sink");
    let options = GuardOptions::new("enforce")
        .teams_channel(&sink, "ops")
        .env("CMKGUARD_LOG", "debug")
        .env("CMKGUARD_LOG_FORMAT", "json");
    let guard = Guard::start(&sim, options);

    // Work that handles every secret: tokens for ARM and Key Vault, a chat post, the key.
    let reg = registry_id("rg-registries", "acrnocmk");
    guard.deliver(&registry_write_event("log-secrets-1", &reg)).await;
    let ev = sim.emit_key_event("kv-demo", "cmk-expiring", "Microsoft.KeyVault.KeyNearExpiry").await;
    guard.deliver(&ev).await;
    // A wrong key is refused (and must not be echoed either).
    let wrong = "wrong-key-but-also-secret-0123456789";
    let resp = reqwest::Client::new()
        .post(guard.server.url("/api/events"))
        .header("x-cmkguard-key", wrong)
        .json(&serde_json::json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let logs = guard.server.logs();
    // The capture is real: the server's debug log, from start to the refused key.
    assert!(logs.contains("cmkguard listening"), "{logs}");
    assert!(logs.lines().count() >= 20, "{logs}");

    let env = |k: &str| guard.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    let identity_header = env("IDENTITY_HEADER");
    let webhook_url = env("CMKGUARD_CHANNEL_OPS_URL");
    assert!(!identity_header.is_empty() && !webhook_url.is_empty(), "{:?}", guard.env);
    // The part of the webhook URL that makes it a credential: everything after the host.
    let url_path = webhook_url.splitn(4, '/').nth(3).unwrap_or_default().to_owned();
    assert!(url_path.len() >= 4, "{webhook_url}");
    let secrets = [
        ("X-IDENTITY-HEADER value", identity_header.as_str()),
        ("chat webhook URL", webhook_url.as_str()),
        ("chat webhook URL path", url_path.as_str()),
        ("direct-mode key", Guard::WEBHOOK_KEY),
        ("a wrong direct-mode key", wrong),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "the log contains the {what} ({secret:?})");
    }
    let tokens = bearer_tokens(&logs);
    assert!(tokens.is_empty(), "the log contains bearer tokens: {tokens:?}");
    assert!(!logs.to_ascii_lowercase().contains("bearer azsim"), "an Authorization header was logged");
    // The scan itself works: a token from azsim is found by it.
    let token = sim.token("https://management.azsim.test").await;
    assert_eq!(bearer_tokens(&format!("x {token} y")), [token]);
}

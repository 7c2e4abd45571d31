//! A realistic sample input (a key near expiry used by `n` registries, half of them
//! pinned to an older version): shared by `cmkguard policy bench`, the criterion
//! benches and the tests.

use cmkguard_model::PolicyInput;

/// The sample input with `n` registries.
pub fn sample_input(n: usize) -> PolicyInput {
    let vault = "https://kv-prod.vault.azure.net";
    let key = format!("{vault}/keys/acr-cmk");
    let registries: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let kid = if i % 2 == 0 { key.clone() } else { format!("{key}/0f1e2d3c4b5a69788796a5b4c3d2e1f0") };
            serde_json::json!({
                "id": format!("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-acr/providers/Microsoft.ContainerRegistry/registries/acr{i:02}"),
                "name": format!("acr{i:02}"), "sku": "Premium", "location": "westeurope",
                "encryption_enabled": true, "key_identifier": kid,
                "versioned_key_identifier": format!("{key}/0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
                "identity": "11111111-2222-3333-4444-555555555555", "key_rotation_enabled": i % 2 == 0,
                "tags": [["owner", format!("team-{}", i % 3)], ["env", "prod"]]
            })
        })
        .collect();
    let v = serde_json::json!({
        "event": {"kind": "key-near-expiry", "id": "evt-1", "time": "2026-11-23T11:59:00Z", "subject": "acr-cmk"},
        "now": "2026-11-23T12:00:00Z",
        "key": {"key_id": format!("{key}/a1b2c3d4e5f60718293a4b5c6d7e8f90"), "vault_uri": format!("{vault}/"), "name": "acr-cmk",
                "version": "a1b2c3d4e5f60718293a4b5c6d7e8f90", "key_type": "RSA", "key_size": 3072, "enabled": true,
                "expires": "2026-12-13T12:00:00Z", "created": "2026-01-01T00:00:00Z",
                "vault": {"soft_delete": true, "purge_protection": true}},
        "registries": registries,
        "settings": "{}"
    });
    serde_json::from_value(v).expect("the sample input matches the model")
}

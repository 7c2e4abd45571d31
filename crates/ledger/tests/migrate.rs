//! Opening a ledger file written by an older build: layout 2 kept a pending rotation's
//! poll kind as a prefix of `operationUrl`; layout 3 has a `pollKind` field. The file is
//! migrated in place once, and the operations read back the same.

use cmkguard_ledger::{PendingOperation, PollKind};
use rusqlite::Connection;

/// The tables exactly as layout 2 created them.
const LAYOUT_2: &str = "
CREATE TABLE claims (event_id TEXT NOT NULL UNIQUE, state TEXT NOT NULL, token TEXT NOT NULL,
    attempt INTEGER NOT NULL, expires_at INTEGER NOT NULL, progress TEXT NOT NULL DEFAULT '[]', record_id INTEGER);
CREATE TABLE records (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, recorded_at INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX records_by_time ON records (recorded_at);
CREATE TABLE pending (id TEXT PRIMARY KEY, registry TEXT NOT NULL, started_at INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE leases (registry TEXT PRIMARY KEY, lease_id TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE TABLE notifications (rule TEXT NOT NULL, resource TEXT NOT NULL, key_version TEXT NOT NULL,
    sent_at INTEGER NOT NULL, PRIMARY KEY (rule, resource, key_version));
PRAGMA user_version = 2;
";

const REG: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/r1";
const STATUS: &str = "https://management.azure.com/subscriptions/s/providers/Microsoft.ContainerRegistry/locations/westeurope/operationResults/op?api-version=2025-04-01";

fn legacy_body(id: &str, url: &str, minute: u32) -> String {
    serde_json::json!({
        "id": id, "registry": REG, "action": "rotate-registry-key", "operationUrl": url,
        "startedAt": format!("2026-11-01T08:{minute:02}:00Z"),
        "targetKey": "https://v.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef",
        "eventId": format!("evt-{id}"),
    })
    .to_string()
}

#[tokio::test]
async fn a_layout_2_file_is_migrated_and_its_pending_rotations_keep_their_poll_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).unwrap();
        c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        c.execute_batch(LAYOUT_2).unwrap();
        for (i, (id, url)) in
            [("loc", format!("location:{STATUS}")), ("async", format!("async:{STATUS}")), ("bare", STATUS.to_owned())]
                .iter()
                .enumerate()
        {
            c.execute(
                "INSERT INTO pending (id, registry, started_at, body) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id, REG, i as i64, legacy_body(id, url, i as u32)],
            )
            .unwrap();
        }
    }
    let ledger = cmkguard_ledger::open(&format!("sqlite:{}", path.display()), None).await.unwrap();
    let ops = ledger.list_pending(None).await.unwrap();
    let kinds: Vec<(&str, PollKind, &str)> =
        ops.iter().map(|o| (o.id.as_str(), o.poll_kind, o.operation_url.as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("loc", PollKind::Location, STATUS),
            ("async", PollKind::AsyncOperation, STATUS),
            ("bare", PollKind::AsyncOperation, STATUS)
        ]
    );
    drop(ledger);
    // The stored documents were rewritten in the new form, and the layout bumped.
    let c = Connection::open(&path).unwrap();
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 3);
    let body: String = c.query_row("SELECT body FROM pending WHERE id = 'loc'", [], |r| r.get(0)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["pollKind"].as_str(), v["operationUrl"].as_str()), (Some("location"), Some(STATUS)));
    // Opening again (already layout 3) changes nothing.
    let again = cmkguard_ledger::open(&format!("sqlite:{}", path.display()), None).await.unwrap();
    assert_eq!(again.list_pending(None).await.unwrap(), ops);
}

#[test]
fn pending_json_new_and_legacy_forms() {
    let op: PendingOperation = serde_json::from_str(&legacy_body("x", &format!("location:{STATUS}"), 0)).unwrap();
    assert_eq!((op.poll_kind, op.operation_url.as_str()), (PollKind::Location, STATUS));
    let json = serde_json::to_value(&op).unwrap();
    assert_eq!(json["pollKind"], "location");
    assert_eq!(serde_json::from_value::<PendingOperation>(json).unwrap(), op);
    // A new-form document whose URL happens to start like a prefix is taken as written.
    let mut v: serde_json::Value = serde_json::from_str(&legacy_body("y", "async:odd", 0)).unwrap();
    v["pollKind"] = "async-operation".into();
    let op: PendingOperation = serde_json::from_value(v).unwrap();
    assert_eq!(op.operation_url, "async:odd");
    // An unknown kind is refused, naming it.
    let mut v: serde_json::Value = serde_json::from_str(&legacy_body("z", STATUS, 0)).unwrap();
    v["pollKind"] = "carrier-pigeon".into();
    let e = serde_json::from_value::<PendingOperation>(v).unwrap_err().to_string();
    assert!(e.contains("carrier-pigeon"), "{e}");
}

#[tokio::test]
async fn a_file_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 9;").unwrap();
    let e = cmkguard_ledger::open(&format!("sqlite:{}", path.display()), None).await.unwrap_err().to_string();
    assert!(e.contains("layout 9"), "{e}");
}

//! The ledger: event-id idempotency, the audit trail, per-registry leases, pending
//! long-running operations and notification dedupe — everything the act stage must
//! remember across invocations, redeliveries and instances.
//!
//! Two backends implement one [`Ledger`] trait:
//!
//! - [`sqlite::SqliteLedger`] (`sqlite:PATH`): embedded SQLite in WAL mode, the default
//!   for local runs and the demo. All writes go through one writer thread that
//!   **group-commits**: concurrent requests share one transaction and one fsync, and each
//!   caller is answered only after its batch is durable.
//! - [`blob::BlobLedger`] (`https://ACCOUNT.blob.core.windows.net/CONTAINER`): Azure Blob
//!   Storage for production. Event-id claims are conditional creates (`If-None-Match: *`),
//!   updates are `If-Match: ETAG`, audit records are JSON blobs, the per-registry lock is
//!   a blob lease. Every acknowledged write is durable in Azure Storage.
//!
//! Open either with [`open`] (or [`open_with`] for a custom clock / HTTP transport).
//!
//! ## How the act stage uses it
//!
//! ```text
//! match ledger.claim(event_id, ttl).await? {
//!     Claim::AlreadyDone(record) => answer 2xx with the recorded outcome (redelivery)
//!     Claim::InProgress { .. }   => another instance is on it: answer 5xx (retryable)
//!     Claim::New(ticket)         => ticket.progress holds what an earlier, crashed
//!                                   attempt checkpointed; act, ledger.checkpoint(..)
//!                                   after each step, then ledger.complete(&ticket, &record)
//! }
//! ```
//!
//! A registry change additionally holds [`Ledger::acquire_lease`] for that registry, and a
//! rotation that outlasts the invocation is parked with [`Ledger::add_pending`] and finished
//! later ([`Ledger::list_pending`] / [`Ledger::complete_pending`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use cmkguard_model::Decision;
pub use cmkguard_model::outcome::{ActionOutcome, ActionStatus, Decided, PolicyRef};

pub mod blob;
mod names;
pub mod sqlite;

/// Current time as the ledger sees it. Injected so tests can move time forward; in
/// production this is [`SystemClock`].
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The audit record of one event: what it was, which policy decided what, and what
/// became of every action. Written once per event id by [`Ledger::complete`] (or
/// [`Ledger::record`]); its JSON form is what `cmkguard audit show --output json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// The Event Grid event id (or a sweep's synthetic id): the idempotency key.
    pub event_id: String,
    /// The event type as sent, e.g. `Microsoft.KeyVault.KeyNearExpiry`.
    pub event_type: String,
    /// The event's subject as sent.
    pub subject: String,
    /// When the event happened (`eventTime`).
    pub event_time: DateTime<Utc>,
    /// When the record was written; retention and `audit list --since` go by this.
    pub recorded_at: DateTime<Utc>,
    /// `monitor` or `enforce`: whether actions were carried out or only recorded.
    pub mode: String,
    /// The policy (name, version, digest) and its decision, or the policy failure.
    pub decided: Decided,
    /// Every action's outcome, in the order they were carried out.
    pub actions: Vec<ActionOutcome>,
}

impl AuditRecord {
    /// The policy that decided, when known.
    pub fn policy(&self) -> Option<&PolicyRef> {
        match &self.decided {
            Decided::Decision { policy, .. } => Some(policy),
            Decided::PolicyError { policy, .. } => policy.as_ref(),
        }
    }

    /// The decision, unless the policy failed.
    pub fn decision(&self) -> Option<&Decision> {
        match &self.decided {
            Decided::Decision { decision, .. } => Some(decision),
            Decided::PolicyError { .. } => None,
        }
    }
}

/// Proof that this caller owns an event id's claim. Pass it back to
/// [`Ledger::checkpoint`], [`Ledger::complete`] or [`Ledger::abandon`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimTicket {
    pub event_id: String,
    /// Unique per claim attempt; a takeover gets a new token and the old one stops working.
    pub token: String,
    /// 1 for the first attempt; more when an earlier attempt's claim expired and was taken over.
    pub attempt: u32,
    /// The claim is ours until then; after it another instance may take it over.
    pub expires_at: DateTime<Utc>,
    /// Outcomes an earlier attempt checkpointed before it stopped (empty on attempt 1):
    /// the act stage must not repeat what is listed here as done or pending.
    pub progress: Vec<ActionOutcome>,
}

/// The answer to [`Ledger::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller owns the event now (first time, or taking over an expired claim: see
    /// [`ClaimTicket::attempt`] and [`ClaimTicket::progress`]).
    New(ClaimTicket),
    /// The event was handled before: here is its record. Do nothing again.
    AlreadyDone(Box<AuditRecord>),
    /// Another invocation holds an unexpired claim. Retry later (a 5xx to Event Grid).
    InProgress { attempt: u32, expires_at: DateTime<Utc> },
}

/// How a parked ARM operation is followed (which header ARM named its status URL in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollKind {
    /// `Azure-AsyncOperation`: a GET answers `{"status": …}`.
    #[default]
    AsyncOperation,
    /// `Location`: 202 while running, 200/204 when done.
    Location,
}

/// A started ARM operation (e.g. a registry key rotation) to be finished later, by the
/// sweep or the next event for the same registry.
///
/// Stored as JSON (`pollKind` since ledger layout 3). Documents written before that kept
/// the poll kind as a prefix of `operationUrl` (`async:` / `location:`); they still read
/// correctly (see [`PendingOperation`]'s `Deserialize`), and the SQLite backend rewrites
/// them once when it opens an older file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "StoredPending")]
pub struct PendingOperation {
    /// Unique id (the caller chooses, e.g. a UUID); `add_pending` with an existing id replaces it.
    pub id: String,
    /// The registry's ARM resource id.
    pub registry: String,
    /// The action that started it, e.g. `rotate-registry-key`.
    pub action: String,
    /// Where ARM said to poll (the URL exactly as ARM sent it).
    pub operation_url: String,
    /// Which kind of status URL `operation_url` is.
    pub poll_kind: PollKind,
    pub started_at: DateTime<Utc>,
    /// The key id the registry should end up on.
    pub target_key: String,
    /// The event that started it.
    pub event_id: String,
}

/// [`PendingOperation`] as stored, in any layout: `pollKind` is absent in documents from
/// before layout 3, whose `operationUrl` carries the kind as a prefix instead.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPending {
    id: String,
    registry: String,
    action: String,
    operation_url: String,
    #[serde(default)]
    poll_kind: Option<PollKind>,
    started_at: DateTime<Utc>,
    target_key: String,
    event_id: String,
}

impl From<StoredPending> for PendingOperation {
    fn from(s: StoredPending) -> Self {
        let (poll_kind, operation_url) = match s.poll_kind {
            Some(kind) => (kind, s.operation_url),
            None => legacy_operation_url(&s.operation_url),
        };
        Self {
            id: s.id,
            registry: s.registry,
            action: s.action,
            operation_url,
            poll_kind,
            started_at: s.started_at,
            target_key: s.target_key,
            event_id: s.event_id,
        }
    }
}

/// Splits a layout-2 `operationUrl` (`async:URL`, `location:URL`, or a bare URL meaning
/// `Azure-AsyncOperation`) into its kind and URL.
pub fn legacy_operation_url(stored: &str) -> (PollKind, String) {
    match stored.split_once(':') {
        Some(("location", rest)) => (PollKind::Location, rest.to_owned()),
        Some(("async", rest)) => (PollKind::AsyncOperation, rest.to_owned()),
        _ => (PollKind::AsyncOperation, stored.to_owned()),
    }
}

/// An exclusive, expiring lock on one registry. Renew before `expires_at`; release when done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub registry: String,
    /// Identifies this holding; renew/release need it.
    pub lease_id: String,
    /// Our view of when the lease lapses (server-side expiry may be slightly later).
    pub expires_at: DateTime<Utc>,
}

/// What to list for `audit list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only records written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (newest first). `None` = no limit.
    pub limit: Option<usize>,
}

/// What [`Ledger::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    pub records: u64,
    pub claims: u64,
    pub notifications: u64,
}

/// Ledger failures, classed for the HTTP answer: [`LedgerError::is_retryable`] ones make
/// Event Grid redeliver (5xx); the others are terminal.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The ledger URL or settings are wrong (terminal; names what was wrong).
    #[error("ledger configuration: {0}")]
    Config(String),
    /// The store is unreachable, busy or failed (retryable).
    #[error("ledger storage unavailable: {0}")]
    Unavailable(String),
    /// Another attempt took the claim over (ours expired): stop acting on this event.
    #[error("claim on event {event_id:?} was lost (expired and taken over)")]
    ClaimLost { event_id: String },
    /// The lease expired or was taken by another holder: stop changing the registry.
    #[error("lease on registry {registry:?} was lost")]
    LeaseLost { registry: String },
    /// A stored item could not be decoded (terminal: names the item).
    #[error("ledger item {item} is corrupt: {message}")]
    Corrupt { item: String, message: String },
    /// The ledger was shut down.
    #[error("ledger is closed")]
    Closed,
}

impl LedgerError {
    /// Whether a later retry (an Event Grid redelivery) could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LedgerError::Unavailable(_) | LedgerError::Closed)
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// Everything the act stage and `cmkguard audit` need from durable state. Every method
/// returns only after its effect is durable (SQLite: committed with fsync; Blob: acknowledged
/// by Azure Storage). Cheap to share: hold it as `Arc<dyn Ledger>`.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + fmt::Debug {
    /// `sqlite` or `blob`.
    fn backend(&self) -> &'static str;

    /// Claims `event_id` before acting on it, for `ttl` (how long this attempt may take
    /// before another may take over). Atomic: of many concurrent callers exactly one gets
    /// [`Claim::New`]; the others see [`Claim::InProgress`] or [`Claim::AlreadyDone`].
    async fn claim(&self, event_id: &str, ttl: Duration) -> Result<Claim>;

    /// Saves the outcomes so far (replacing earlier ones) and extends the claim by `ttl`,
    /// so that a takeover after a crash resumes instead of repeating. Fails with
    /// [`LedgerError::ClaimLost`] if the claim was taken over.
    async fn checkpoint(&self, ticket: &ClaimTicket, progress: &[ActionOutcome], ttl: Duration) -> Result<ClaimTicket>;

    /// For an event whose outcome has **no side effect** (nothing to checkpoint, nothing
    /// changed outside the ledger: e.g. a monitor-mode decision without notifications),
    /// claims the event and writes its final record in **one** durable write.
    ///
    /// `None`: the event is now done with `record` (its id was new, or an earlier attempt
    /// lapsed having done nothing). `Some(claim)`: nothing was recorded, and `claim` is what
    /// [`Ledger::claim`] answered (a redelivery, another invocation on it, or a takeover
    /// of an interrupted attempt, to be carried on the ordinary way: act, then
    /// [`Ledger::complete`]).
    ///
    /// The default is `claim` followed by `complete` (two writes); backends that can do
    /// both atomically override it.
    async fn claim_or_record(&self, record: &AuditRecord, ttl: Duration) -> Result<Option<Claim>> {
        match self.claim(&record.event_id, ttl).await? {
            Claim::New(ticket) if ticket.progress.is_empty() => {
                self.complete(&ticket, record).await?;
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    /// Writes the final audit record and marks the event done, in one durable step.
    /// Fails with [`LedgerError::ClaimLost`] if the claim was taken over.
    async fn complete(&self, ticket: &ClaimTicket, record: &AuditRecord) -> Result<()>;

    /// Gives the claim up without a record (a retryable failure before anything was done),
    /// so a redelivery can claim it at once. Checkpointed progress is kept.
    async fn abandon(&self, ticket: &ClaimTicket) -> Result<()>;

    /// Writes an audit record for an event that was not claimed (e.g. an ignored or
    /// malformed event worth recording). Replaces any earlier record with the same id and
    /// marks the id done.
    async fn record(&self, record: &AuditRecord) -> Result<()>;

    /// The record of one event, if any.
    async fn get(&self, event_id: &str) -> Result<Option<AuditRecord>>;

    /// Records, newest first.
    async fn list(&self, query: &ListQuery) -> Result<Vec<AuditRecord>>;

    /// Parks a started long-running operation (replaces one with the same id).
    async fn add_pending(&self, op: &PendingOperation) -> Result<()>;

    /// Parked operations, oldest first; only those for `registry` when given.
    async fn list_pending(&self, registry: Option<&str>) -> Result<Vec<PendingOperation>>;

    /// Removes a finished (or abandoned) operation; `false` if it was not there.
    async fn complete_pending(&self, id: &str) -> Result<bool>;

    /// Tries to take the registry's lock for `ttl` (Blob: 15–60 s, clamped). `None` while
    /// another holder's lease is live. Never waits.
    async fn acquire_lease(&self, registry: &str, ttl: Duration) -> Result<Option<Lease>>;

    /// Extends a held lease by `ttl`; [`LedgerError::LeaseLost`] if it lapsed and was taken.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease>;

    /// Releases a held lease (a lapsed one is not an error).
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Notification dedupe: `true` (and the send recorded, atomically) unless the same
    /// `(rule, resource, key_version)` was recorded within `window`. Of concurrent callers
    /// at most one gets `true`.
    async fn should_send(&self, rule: &str, resource: &str, key_version: &str, window: Duration) -> Result<bool>;

    /// Forgets a recorded send (the notification failed for good), so a redelivery may try again.
    async fn forget_send(&self, rule: &str, resource: &str, key_version: &str) -> Result<()>;

    /// Deletes audit records (and their claims) written more than `max_age` ago, and
    /// dedupe entries last sent more than `max_age` ago.
    async fn prune(&self, max_age: Duration) -> Result<PruneStats>;
}

/// Settings beyond the URL; `Default` is right for production.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    pub clock: Arc<dyn Clock>,
    /// HTTP transport for the Blob backend (tests pass one that trusts Azurite's
    /// certificate). `None` = azure_core's default.
    pub blob_http_client: Option<Arc<dyn azure_core::http::HttpClient>>,
    /// SQLite: most requests committed in one transaction.
    pub max_batch: usize,
    /// SQLite: the page size of a **new** file (an existing file keeps its own).
    pub sqlite_page_size: u32,
    /// SQLite: WAL size (bytes) at which the checkpointer resets the WAL (see
    /// `sqlite::DEFAULT_WAL_RESET_BYTES`).
    pub sqlite_wal_reset_bytes: u64,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            blob_http_client: None,
            max_batch: 1024,
            sqlite_page_size: sqlite::DEFAULT_PAGE_SIZE,
            sqlite_wal_reset_bytes: sqlite::DEFAULT_WAL_RESET_BYTES,
        }
    }
}

/// Opens the ledger named by `url` (the `CMKGUARD_LEDGER` setting):
/// `sqlite:PATH` (created if missing) or `https://ACCOUNT.blob.core.windows.net/CONTAINER`
/// (container created if missing; needs `credential`, e.g. the managed identity).
pub async fn open(
    url: &str,
    credential: Option<Arc<dyn azure_core::credentials::TokenCredential>>,
) -> Result<Arc<dyn Ledger>> {
    open_with(url, credential, LedgerOptions::default()).await
}

/// [`open`] with explicit options.
pub async fn open_with(
    url: &str,
    credential: Option<Arc<dyn azure_core::credentials::TokenCredential>>,
    options: LedgerOptions,
) -> Result<Arc<dyn Ledger>> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        if path.trim().is_empty() {
            return Err(LedgerError::Config("sqlite: needs a file path, e.g. sqlite:cmkguard-ledger.db".into()));
        }
        Ok(Arc::new(sqlite::SqliteLedger::open(std::path::Path::new(path), options).await?))
    } else if url.starts_with("https://") || url.starts_with("http://") {
        let credential = credential.ok_or_else(|| {
            LedgerError::Config("a Blob Storage ledger needs an Azure credential (managed identity)".into())
        })?;
        Ok(Arc::new(blob::BlobLedger::open(url, credential, options).await?))
    } else {
        Err(LedgerError::Config(format!("{url:?} is neither sqlite:PATH nor an https Blob container URL")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmkguard_model::{Action, Finding, RotateTarget, Severity};
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,24}"
    }

    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        // 1970 .. 2100, microsecond precision (what both backends keep).
        (0i64..4_102_444_800_000_000).prop_map(names::from_micros)
    }

    fn severity() -> impl Strategy<Value = Severity> {
        proptest::sample::select(Severity::ALL.to_vec())
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Audit),
            (
                text(),
                prop_oneof![
                    Just(RotateTarget::Versionless),
                    Just(RotateTarget::LatestVersion),
                    text().prop_map(RotateTarget::KeyId)
                ]
            )
                .prop_map(|(registry, target)| Action::RotateRegistryKey { registry, target }),
            text().prop_map(|key| Action::RotateVaultKey { key }),
            (text(), severity(), text(), text()).prop_map(|(channel, severity, title, text)| Action::Notify {
                channel,
                severity,
                title,
                text
            }),
        ]
    }

    fn policy() -> impl Strategy<Value = PolicyRef> {
        (text(), text(), "[0-9a-f]{64}").prop_map(|(name, version, digest)| PolicyRef { name, version, digest })
    }

    fn decided() -> impl Strategy<Value = Decided> {
        let finding = (text(), severity(), text(), text()).prop_map(|(rule_id, severity, resource, message)| Finding {
            rule_id,
            severity,
            resource,
            message,
        });
        let decision = (proptest::collection::vec(finding, 0..3), proptest::collection::vec(action(), 0..3))
            .prop_map(|(findings, actions)| Decision { findings, actions });
        prop_oneof![
            (policy(), decision).prop_map(|(policy, decision)| Decided::Decision { policy, decision }),
            (proptest::option::of(policy()), text()).prop_map(|(policy, error)| Decided::PolicyError { policy, error }),
        ]
    }

    fn outcome() -> impl Strategy<Value = ActionOutcome> {
        let status = proptest::sample::select(vec![
            ActionStatus::Done,
            ActionStatus::WouldDo,
            ActionStatus::Skipped,
            ActionStatus::Pending,
            ActionStatus::Failed,
        ]);
        (text(), text(), status, text()).prop_map(|(action, target, status, detail)| ActionOutcome {
            action,
            target,
            status,
            detail,
        })
    }

    fn record() -> impl Strategy<Value = AuditRecord> {
        (
            (text(), text(), text(), time(), time()),
            prop_oneof![Just("monitor".to_owned()), Just("enforce".to_owned())],
            decided(),
            proptest::collection::vec(outcome(), 0..4),
        )
            .prop_map(|((event_id, event_type, subject, event_time, recorded_at), mode, decided, actions)| {
                AuditRecord { event_id, event_type, subject, event_time, recorded_at, mode, decided, actions }
            })
    }

    proptest! {
        /// Every record survives its stored JSON form unchanged.
        #[test]
        fn audit_record_json_round_trips(r in record()) {
            let json = serde_json::to_string(&r).unwrap();
            prop_assert_eq!(serde_json::from_str::<AuditRecord>(&json).unwrap(), r);
        }

        /// Truncated or altered JSON is refused with an error, never a panic or a wrong record.
        #[test]
        fn damaged_record_json_is_refused(r in record(), cut in 0usize..200) {
            let json = serde_json::to_string(&r).unwrap();
            let cut = cut.min(json.len().saturating_sub(1));
            let mut end = cut;
            while !json.is_char_boundary(end) { end -= 1; }
            prop_assert!(serde_json::from_str::<AuditRecord>(&json[..end]).is_err());
        }
    }

    #[test]
    fn record_json_uses_documented_field_names() {
        let r = AuditRecord {
            event_id: "e1".into(),
            event_type: "Microsoft.KeyVault.KeyNearExpiry".into(),
            subject: "k".into(),
            event_time: names::from_micros(0),
            recorded_at: names::from_micros(1),
            mode: "monitor".into(),
            decided: Decided::PolicyError { policy: None, error: "trap".into() },
            actions: vec![],
        };
        let v = serde_json::to_value(&r).unwrap();
        for k in ["eventId", "eventType", "subject", "eventTime", "recordedAt", "mode", "decided", "actions"] {
            assert!(v.get(k).is_some(), "{k} missing in {v}");
        }
        assert_eq!(v["decided"]["outcome"], "policy-error");
    }

    #[tokio::test]
    async fn open_names_what_is_wrong_with_the_url() {
        let e = open("postgres://x", None).await.unwrap_err().to_string();
        assert!(e.contains("postgres://x") && e.contains("sqlite:PATH"), "{e}");
        let e = open("sqlite:", None).await.unwrap_err().to_string();
        assert!(e.contains("file path"), "{e}");
        let e = open("https://acct.blob.core.windows.net/c", None).await.unwrap_err().to_string();
        assert!(e.contains("credential"), "{e}");
    }
}

//! The Azure Blob Storage backend (production): one container, small JSON blobs,
//! optimistic concurrency with ETags, blob leases for the per-registry lock.
//!
//! Layout (every name ends in the hex sha256 of its key, so any event id or resource id
//! is a safe blob name):
//!
//! | blob | content | metadata |
//! |---|---|---|
//! | `claims/{sha(event id)}` | claim state, token, attempt, expiry, checkpointed progress | `state`, `expiresat` |
//! | `records/{sha(event id)}` | the [`AuditRecord`] JSON | `recordedat` (µs) |
//! | `pending/{sha(op id)}` | a [`PendingOperation`] JSON | |
//! | `leases/{sha(registry)}` | empty; its blob lease is the registry lock | |
//! | `notify/{sha(rule, resource, key version)}` | last send time | `sentat` (µs) |
//!
//! Idempotency: a claim is created with `If-None-Match: *` (exactly one creator wins);
//! every later change is a read-modify-write with `If-Match: ETAG`, retried on conflict.
//! Audit records have deterministic names, so a retried write overwrites instead of
//! duplicating. Each write is durable once Azure Storage acknowledges it (Storage commits
//! synchronously to its replicas), so concurrent writers need no batching of their own:
//! they proceed in parallel over HTTP/1.1 keep-alive connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Etag, RequestContent, StatusCode, Transport, Url};
use azure_storage_blob::models::{
    BlobClientAcquireLeaseOptions, BlobClientUploadOptions, BlobContainerClientListBlobsOptions, BlobItem,
    ListBlobsIncludeItem,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::names::{chrono_duration, key, micros};
use crate::{
    ActionOutcome, AuditRecord, Claim, ClaimTicket, Clock, Lease, Ledger, LedgerError, LedgerOptions, ListQuery,
    PendingOperation, PruneStats, Result,
};

/// How often a read-modify-write is retried when another writer got in between.
const MAX_CONFLICT_RETRIES: usize = 8;
/// Downloads in flight at once for `list` / `list_pending`.
const PARALLEL_READS: usize = 16;

/// The Blob Storage ledger.
pub struct BlobLedger {
    container: BlobContainerClient,
    /// The container URL (no secrets: authentication is by token).
    url: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for BlobLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobLedger").field("url", &self.url).finish_non_exhaustive()
    }
}

/// A claim as stored in `claims/…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimDoc {
    event_id: String,
    /// `in-progress`, `done` or `abandoned`.
    state: String,
    token: String,
    attempt: u32,
    expires_at: DateTime<Utc>,
    #[serde(default)]
    progress: Vec<ActionOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SentDoc {
    sent_at: DateTime<Utc>,
}

/// Precondition for a write.
enum Cond {
    None,
    /// Create only (`If-None-Match: *`).
    Absent,
    /// Replace only this version (`If-Match`).
    Matches(Etag),
}

/// A write lost its precondition (the blob exists / changed meanwhile).
struct Conflict;

fn status_of(e: &azure_core::Error) -> Option<StatusCode> {
    e.http_status()
}

impl BlobLedger {
    /// Connects to the container at `url` (created if missing and allowed).
    pub async fn open(url: &str, credential: Arc<dyn TokenCredential>, options: LedgerOptions) -> Result<Self> {
        let parsed = Url::parse(url).map_err(|e| LedgerError::Config(format!("ledger URL {url:?}: {e}")))?;
        if parsed.query().is_some() || !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(LedgerError::Config(
                "the Blob ledger URL must not carry credentials or a query (SAS); it authenticates with the managed identity".into(),
            ));
        }
        let segments: Vec<&str> =
            parsed.path_segments().map(|s| s.filter(|p| !p.is_empty()).collect()).unwrap_or_default();
        // Azurite puts the account in the path: https://127.0.0.1:PORT/ACCOUNT/CONTAINER.
        let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        let expected = if loopback { 2 } else { 1 };
        if segments.len() != expected {
            return Err(LedgerError::Config(format!(
                "ledger URL {url:?} must name exactly one container, e.g. https://ACCOUNT.blob.core.windows.net/cmkguard-ledger"
            )));
        }
        let mut client_options = ClientOptions::default();
        if let Some(http) = options.blob_http_client.clone() {
            client_options.transport = Some(Transport::new(http));
        }
        let container = BlobContainerClient::new(
            parsed.clone(),
            Some(credential),
            Some(BlobContainerClientOptions { client_options, ..Default::default() }),
        )
        .map_err(|e| LedgerError::Config(format!("ledger URL {url:?}: {e}")))?;
        let ledger = Self { container, url: parsed.to_string(), clock: options.clock };
        match ledger.container.create(None).await {
            Ok(_) => tracing::info!(url = %ledger.url, "created ledger container"),
            Err(e) if status_of(&e) == Some(StatusCode::Conflict) => {}
            // May lack the right to create containers but have data access: carry on,
            // the first real operation reports a missing container clearly.
            Err(e) if status_of(&e) == Some(StatusCode::Forbidden) => {
                tracing::warn!(url = %ledger.url, "cannot create the ledger container (403); assuming it exists")
            }
            Err(e) => return Err(ledger.unavailable("create container", &e)),
        }
        Ok(ledger)
    }

    fn unavailable(&self, what: &str, e: &azure_core::Error) -> LedgerError {
        let status = status_of(e).map(|s| format!(" (HTTP {})", u16::from(s))).unwrap_or_default();
        LedgerError::Unavailable(format!("blob ledger {}: {what}{status}: {e}", self.url))
    }

    async fn put(
        &self,
        name: &str,
        body: Vec<u8>,
        cond: Cond,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<std::result::Result<(), Conflict>> {
        let mut opts = BlobClientUploadOptions {
            blob_content_type: Some("application/json".into()),
            metadata,
            ..Default::default()
        };
        match cond {
            Cond::None => {}
            Cond::Absent => opts.if_none_match = Some(Etag::from("*")),
            Cond::Matches(etag) => opts.if_match = Some(etag),
        }
        let blob = self.container.blob_client(name);
        match blob.upload(RequestContent::from(body), Some(opts)).await {
            Ok(_) => Ok(Ok(())),
            Err(e) if matches!(status_of(&e), Some(StatusCode::Conflict | StatusCode::PreconditionFailed)) => {
                Ok(Err(Conflict))
            }
            Err(e) => Err(self.unavailable(&format!("write {name}"), &e)),
        }
    }

    async fn get(&self, name: &str) -> Result<Option<(Vec<u8>, Etag)>> {
        let blob = self.container.blob_client(name);
        match blob.download(None).await {
            Ok(r) => {
                let etag = r.properties.etag.clone().unwrap_or_else(|| Etag::from("*"));
                let body = r.body.collect().await.map_err(|e| self.unavailable(&format!("read {name}"), &e))?;
                Ok(Some((body.to_vec(), etag)))
            }
            Err(e) if status_of(&e) == Some(StatusCode::NotFound) => Ok(None),
            Err(e) => Err(self.unavailable(&format!("read {name}"), &e)),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<(T, Etag)>> {
        match self.get(name).await? {
            None => Ok(None),
            Some((body, etag)) => serde_json::from_slice(&body)
                .map(|v| Some((v, etag)))
                .map_err(|e| LedgerError::Corrupt { item: name.to_owned(), message: e.to_string() }),
        }
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        match self.container.blob_client(name).delete(None).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(StatusCode::NotFound) => Ok(false),
            Err(e) => Err(self.unavailable(&format!("delete {name}"), &e)),
        }
    }

    async fn list_prefix(&self, prefix: &str, with_metadata: bool) -> Result<Vec<BlobItem>> {
        let opts = BlobContainerClientListBlobsOptions {
            prefix: Some(prefix.to_owned()),
            include: with_metadata.then(|| vec![ListBlobsIncludeItem::Metadata]),
            ..Default::default()
        };
        let mut pager = self.container.list_blobs(Some(opts)).map_err(|e| self.unavailable("list", &e))?;
        let mut out = Vec::new();
        while let Some(item) = pager.next().await {
            out.push(item.map_err(|e| self.unavailable(&format!("list {prefix}"), &e))?);
        }
        Ok(out)
    }

    fn to_json<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(v).map_err(|e| LedgerError::Corrupt { item: what.to_owned(), message: e.to_string() })
    }

    fn claim_meta(doc: &ClaimDoc) -> HashMap<String, String> {
        HashMap::from([("state".into(), doc.state.clone()), ("expiresat".into(), micros(doc.expires_at).to_string())])
    }

    async fn put_claim(&self, name: &str, doc: &ClaimDoc, cond: Cond) -> Result<std::result::Result<(), Conflict>> {
        self.put(name, Self::to_json(name, doc)?, cond, Some(Self::claim_meta(doc))).await
    }

    async fn put_record(&self, record: &AuditRecord) -> Result<()> {
        let name = format!("records/{}", key(&[&record.event_id]));
        let meta = HashMap::from([("recordedat".into(), micros(record.recorded_at).to_string())]);
        match self.put(&name, Self::to_json(&name, record)?, Cond::None, Some(meta)).await? {
            Ok(()) => Ok(()),
            Err(Conflict) => Err(LedgerError::Unavailable(format!("blob ledger {}: {name} is locked", self.url))),
        }
    }

    /// Read-modify-write of a claim this ticket owns.
    async fn update_claim(&self, ticket: &ClaimTicket, mut f: impl FnMut(&mut ClaimDoc)) -> Result<ClaimDoc> {
        let name = format!("claims/{}", key(&[&ticket.event_id]));
        for _ in 0..MAX_CONFLICT_RETRIES {
            let lost = || LedgerError::ClaimLost { event_id: ticket.event_id.clone() };
            let Some((mut doc, etag)) = self.get_json::<ClaimDoc>(&name).await? else { return Err(lost()) };
            if doc.token != ticket.token || doc.state != "in-progress" {
                return Err(lost());
            }
            f(&mut doc);
            if self.put_claim(&name, &doc, Cond::Matches(etag)).await?.is_ok() {
                return Ok(doc);
            }
        }
        Err(self.contention(&name))
    }

    fn contention(&self, name: &str) -> LedgerError {
        LedgerError::Unavailable(format!(
            "blob ledger {}: {name} kept changing ({MAX_CONFLICT_RETRIES} tries)",
            self.url
        ))
    }

    fn meta_micros(item: &BlobItem, field: &str) -> Option<i64> {
        let values = item.metadata.as_ref()?.values.as_ref()?;
        values.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).and_then(|(_, v)| v.parse().ok())
    }

    fn meta_str<'a>(item: &'a BlobItem, field: &str) -> Option<&'a str> {
        let values = item.metadata.as_ref()?.values.as_ref()?;
        values.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).map(|(_, v)| v.as_str())
    }
}

#[async_trait::async_trait]
impl Ledger for BlobLedger {
    fn backend(&self) -> &'static str {
        "blob"
    }

    async fn claim(&self, event_id: &str, ttl: Duration) -> Result<Claim> {
        let h = key(&[event_id]);
        let name = format!("claims/{h}");
        let token = uuid::Uuid::new_v4().to_string();
        for _ in 0..MAX_CONFLICT_RETRIES {
            let now = self.clock.now();
            let expires_at = now + chrono_duration(ttl);
            let fresh = ClaimDoc {
                event_id: event_id.to_owned(),
                state: "in-progress".into(),
                token: token.clone(),
                attempt: 1,
                expires_at,
                progress: Vec::new(),
            };
            if self.put_claim(&name, &fresh, Cond::Absent).await?.is_ok() {
                return Ok(Claim::New(ClaimTicket {
                    event_id: event_id.to_owned(),
                    token,
                    attempt: 1,
                    expires_at,
                    progress: vec![],
                }));
            }
            let Some((cur, etag)) = self.get_json::<ClaimDoc>(&name).await? else { continue };
            if cur.token == token && cur.state == "in-progress" {
                // Our own create succeeded but its answer was lost and the SDK retried.
                return Ok(Claim::New(ClaimTicket {
                    event_id: event_id.to_owned(),
                    token,
                    attempt: cur.attempt,
                    expires_at: cur.expires_at,
                    progress: cur.progress,
                }));
            }
            match cur.state.as_str() {
                "done" => {
                    let rec = format!("records/{h}");
                    return match self.get_json::<AuditRecord>(&rec).await? {
                        Some((r, _)) => Ok(Claim::AlreadyDone(Box::new(r))),
                        None => Err(LedgerError::Corrupt {
                            item: name,
                            message: "marked done but its record is missing".into(),
                        }),
                    };
                }
                "in-progress" if cur.expires_at > now => {
                    return Ok(Claim::InProgress { attempt: cur.attempt, expires_at: cur.expires_at });
                }
                _ => {
                    let next = ClaimDoc {
                        state: "in-progress".into(),
                        token: token.clone(),
                        attempt: cur.attempt + 1,
                        expires_at,
                        ..cur
                    };
                    if self.put_claim(&name, &next, Cond::Matches(etag)).await?.is_ok() {
                        return Ok(Claim::New(ClaimTicket {
                            event_id: event_id.to_owned(),
                            token,
                            attempt: next.attempt,
                            expires_at,
                            progress: next.progress,
                        }));
                    }
                }
            }
        }
        Err(self.contention(&name))
    }

    async fn checkpoint(&self, ticket: &ClaimTicket, progress: &[ActionOutcome], ttl: Duration) -> Result<ClaimTicket> {
        let expires_at = self.clock.now() + chrono_duration(ttl);
        self.update_claim(ticket, |d| {
            d.progress = progress.to_vec();
            d.expires_at = expires_at;
        })
        .await?;
        Ok(ClaimTicket { expires_at, progress: progress.to_vec(), ..ticket.clone() })
    }

    async fn complete(&self, ticket: &ClaimTicket, record: &AuditRecord) -> Result<()> {
        // Deterministic record name: if we crash between these two writes, the attempt
        // that takes over overwrites the same record instead of adding a second one.
        self.put_record(record).await?;
        self.update_claim(ticket, |d| {
            d.state = "done".into();
            d.progress.clear();
        })
        .await
        .map(drop)
    }

    async fn abandon(&self, ticket: &ClaimTicket) -> Result<()> {
        match self.update_claim(ticket, |d| d.state = "abandoned".into()).await {
            Ok(_) | Err(LedgerError::ClaimLost { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn record(&self, record: &AuditRecord) -> Result<()> {
        self.put_record(record).await?;
        let name = format!("claims/{}", key(&[&record.event_id]));
        for _ in 0..MAX_CONFLICT_RETRIES {
            let (doc, cond) = match self.get_json::<ClaimDoc>(&name).await? {
                Some((cur, etag)) => (ClaimDoc { state: "done".into(), progress: vec![], ..cur }, Cond::Matches(etag)),
                None => (
                    ClaimDoc {
                        event_id: record.event_id.clone(),
                        state: "done".into(),
                        token: String::new(),
                        attempt: 1,
                        expires_at: self.clock.now(),
                        progress: vec![],
                    },
                    Cond::Absent,
                ),
            };
            if self.put_claim(&name, &doc, cond).await?.is_ok() {
                return Ok(());
            }
        }
        Err(self.contention(&name))
    }

    async fn get(&self, event_id: &str) -> Result<Option<AuditRecord>> {
        Ok(self.get_json(&format!("records/{}", key(&[event_id]))).await?.map(|(r, _)| r))
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<AuditRecord>> {
        let since = query.since.map(micros).unwrap_or(i64::MIN);
        let mut items: Vec<(i64, String)> = self
            .list_prefix("records/", true)
            .await?
            .iter()
            .filter_map(|i| Some((Self::meta_micros(i, "recordedat")?, i.name.clone()?)))
            .filter(|(t, _)| *t >= since)
            .collect();
        items.sort_by(|a, b| b.cmp(a));
        items.truncate(query.limit.unwrap_or(usize::MAX));
        let fetched: Vec<Result<Option<(AuditRecord, Etag)>>> = futures::stream::iter(items)
            .map(|(_, name)| async move { self.get_json::<AuditRecord>(&name).await })
            .buffered(PARALLEL_READS)
            .collect()
            .await;
        let mut out = Vec::with_capacity(fetched.len());
        for r in fetched {
            if let Some((rec, _)) = r? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    async fn add_pending(&self, op: &PendingOperation) -> Result<()> {
        let name = format!("pending/{}", key(&[&op.id]));
        match self.put(&name, Self::to_json(&name, op)?, Cond::None, None).await? {
            Ok(()) => Ok(()),
            Err(Conflict) => Err(self.contention(&name)),
        }
    }

    async fn list_pending(&self, registry: Option<&str>) -> Result<Vec<PendingOperation>> {
        let names: Vec<String> =
            self.list_prefix("pending/", false).await?.into_iter().filter_map(|i| i.name).collect();
        let fetched: Vec<Result<Option<(PendingOperation, Etag)>>> = futures::stream::iter(names)
            .map(|name| async move { self.get_json::<PendingOperation>(&name).await })
            .buffered(PARALLEL_READS)
            .collect()
            .await;
        let mut out = Vec::new();
        for r in fetched {
            if let Some((op, _)) = r?
                && registry.is_none_or(|reg| op.registry.eq_ignore_ascii_case(reg))
            {
                out.push(op);
            }
        }
        out.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(out)
    }

    async fn complete_pending(&self, id: &str) -> Result<bool> {
        self.delete(&format!("pending/{}", key(&[id]))).await
    }

    async fn acquire_lease(&self, registry: &str, ttl: Duration) -> Result<Option<Lease>> {
        let registry = registry.to_ascii_lowercase();
        let name = format!("leases/{}", key(&[&registry]));
        // The lock blob must exist; whoever creates it first wins, the rest find it there.
        let _ = self.put(&name, Vec::new(), Cond::Absent, None).await?;
        let secs = ttl.as_secs().clamp(15, 60);
        let lease_id = uuid::Uuid::new_v4().to_string();
        let opts = BlobClientAcquireLeaseOptions { proposed_lease_id: Some(lease_id.clone()), ..Default::default() };
        match self.container.blob_client(&name).acquire_lease(secs as i32, Some(opts)).await {
            Ok(_) => Ok(Some(Lease {
                registry,
                lease_id,
                expires_at: self.clock.now() + chrono::Duration::seconds(secs as i64),
            })),
            Err(e) if status_of(&e) == Some(StatusCode::Conflict) => Ok(None),
            Err(e) => Err(self.unavailable(&format!("lease {name}"), &e)),
        }
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        let name = format!("leases/{}", key(&[&lease.registry]));
        // A blob lease's duration is fixed at acquisition; renewing restarts that period.
        let _ = ttl;
        match self.container.blob_client(&name).renew_lease(lease.lease_id.clone(), None).await {
            Ok(_) => {
                let period = (lease.expires_at - self.clock.now()).max(chrono::Duration::seconds(15));
                Ok(Lease { expires_at: self.clock.now() + period.min(chrono::Duration::seconds(60)), ..lease.clone() })
            }
            Err(e)
                if matches!(
                    status_of(&e),
                    Some(StatusCode::Conflict | StatusCode::PreconditionFailed | StatusCode::NotFound)
                ) =>
            {
                Err(LedgerError::LeaseLost { registry: lease.registry.clone() })
            }
            Err(e) => Err(self.unavailable(&format!("renew lease {name}"), &e)),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let name = format!("leases/{}", key(&[&lease.registry]));
        match self.container.blob_client(&name).release_lease(lease.lease_id.clone(), None).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    status_of(&e),
                    Some(StatusCode::Conflict | StatusCode::PreconditionFailed | StatusCode::NotFound)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.unavailable(&format!("release lease {name}"), &e)),
        }
    }

    async fn should_send(&self, rule: &str, resource: &str, key_version: &str, window: Duration) -> Result<bool> {
        let name = format!("notify/{}", key(&[rule, &resource.to_ascii_lowercase(), key_version]));
        for _ in 0..MAX_CONFLICT_RETRIES {
            let now = self.clock.now();
            let doc = SentDoc { sent_at: now };
            let meta = || Some(HashMap::from([("sentat".to_owned(), micros(now).to_string())]));
            if self.put(&name, Self::to_json(&name, &doc)?, Cond::Absent, meta()).await?.is_ok() {
                return Ok(true);
            }
            let Some((last, etag)) = self.get_json::<SentDoc>(&name).await? else { continue };
            if last.sent_at > now - chrono_duration(window) {
                return Ok(false);
            }
            // Outside the window: record this send unless another sender just did.
            return Ok(self.put(&name, Self::to_json(&name, &doc)?, Cond::Matches(etag), meta()).await?.is_ok());
        }
        Err(self.contention(&name))
    }

    async fn forget_send(&self, rule: &str, resource: &str, key_version: &str) -> Result<()> {
        self.delete(&format!("notify/{}", key(&[rule, &resource.to_ascii_lowercase(), key_version]))).await.map(drop)
    }

    async fn prune(&self, max_age: Duration) -> Result<PruneStats> {
        let cutoff = micros(self.clock.now() - chrono_duration(max_age));
        let mut stats = PruneStats::default();
        for item in self.list_prefix("records/", true).await? {
            let (Some(t), Some(name)) = (Self::meta_micros(&item, "recordedat"), item.name.as_deref()) else {
                continue;
            };
            if t < cutoff {
                let h = name.trim_start_matches("records/");
                if self.delete(&format!("claims/{h}")).await? {
                    stats.claims += 1;
                }
                if self.delete(name).await? {
                    stats.records += 1;
                }
            }
        }
        for item in self.list_prefix("claims/", true).await? {
            let stale = Self::meta_str(&item, "state").is_some_and(|s| s != "done")
                && Self::meta_micros(&item, "expiresat").is_some_and(|t| t < cutoff);
            if let (true, Some(name)) = (stale, item.name.as_deref())
                && self.delete(name).await?
            {
                stats.claims += 1;
            }
        }
        for item in self.list_prefix("notify/", true).await? {
            let old = Self::meta_micros(&item, "sentat").is_some_and(|t| t < cutoff);
            if let (true, Some(name)) = (old, item.name.as_deref())
                && self.delete(name).await?
            {
                stats.notifications += 1;
            }
        }
        Ok(stats)
    }
}

//! The embedded SQLite backend (`sqlite:PATH`): WAL journal, one writer thread that
//! group-commits, one reader connection for `get` / `list`.
//!
//! ## Group commit
//!
//! Every write is a request on a channel to a dedicated writer thread. The thread takes
//! the first waiting request and every other one already queued (up to
//! [`LedgerOptions::max_batch`]), applies them all in **one** `BEGIN IMMEDIATE …
//! COMMIT`, and only then answers each caller. Under load, many events share one fsync;
//! alone, an event pays exactly one. There is no artificial delay: requests that arrive
//! while a batch commits form the next batch.
//!
//! If a statement fails at the SQLite level (not a logical "no" such as an expired
//! claim), the batch is rolled back and its requests are re-run one transaction each,
//! so one bad request cannot fail its neighbours.
//!
//! ## Durability: `synchronous=FULL`
//!
//! In WAL mode `synchronous=NORMAL` does not fsync at commit: a committed transaction
//! survives a process crash but may be lost on power failure or an OS crash. The ledger
//! promises that an answered write is durable (a lost claim or record means a repeated
//! key rotation or notification), so it uses `FULL`: the WAL is fsynced at every commit.
//! Group commit is what makes that affordable — the fsync is paid once per batch, not
//! once per event.
//!
//! ## Checkpoints off the commit path
//!
//! The writer connection never checkpoints (`wal_autocheckpoint=0`): a checkpointer
//! thread with its own connection copies the WAL into the database file in the
//! background (`PASSIVE`, which never blocks the writer) a few times a second, so a
//! commit's latency is one WAL fsync and nothing else.
//!
//! SQLite starts the WAL over only when a writer begins a transaction while every frame
//! has been copied; under continuous writes a passive checkpoint never quite catches up,
//! so the WAL would grow for as long as the load lasts (727 MB after 30 s of the
//! direct-mode benchmark, BENCHMARKS.md "Throughput and memory"). Once the WAL passes
//! [`DEFAULT_WAL_RESET_BYTES`] the checkpointer therefore takes one `TRUNCATE` checkpoint:
//! it waits for the writer's current transaction, copies the few frames the passive one
//! left and empties the WAL; the writer waits that long (milliseconds), once per that
//! many bytes of WAL.
//!
//! Several processes may share the file (SQLite's own locking serialises their
//! writers; `busy_timeout` waits up to 5 s), so leases and claims hold across
//! processes on one machine too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::names::{chrono_duration, from_micros, micros};
use crate::{
    ActionOutcome, AuditRecord, Claim, ClaimTicket, Clock, Lease, Ledger, LedgerError, LedgerOptions, ListQuery,
    PendingOperation, PruneStats, Result,
};

const SCHEMA: &str = "
-- Layout chosen for write volume: event ids are random (GUIDs), and every random-key
-- B-tree insert dirties its own page in the WAL. Only claims(event_id) is keyed
-- randomly; claim rows and records are appended in rowid order (clustered by time),
-- and a record is found through its claim's record_id.
CREATE TABLE IF NOT EXISTS claims (
    event_id   TEXT NOT NULL UNIQUE,
    state      TEXT NOT NULL,            -- in-progress | done | abandoned
    token      TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,         -- unix micros
    progress   TEXT NOT NULL DEFAULT '[]',
    record_id  INTEGER                   -- records.id once done
);
CREATE TABLE IF NOT EXISTS records (
    id          INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    body        TEXT NOT NULL            -- AuditRecord as JSON
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (recorded_at);
CREATE TABLE IF NOT EXISTS pending (
    id         TEXT PRIMARY KEY,
    registry   TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    body       TEXT NOT NULL             -- PendingOperation as JSON
);
CREATE TABLE IF NOT EXISTS leases (
    registry   TEXT PRIMARY KEY,
    lease_id   TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    rule        TEXT NOT NULL,
    resource    TEXT NOT NULL,
    key_version TEXT NOT NULL,
    sent_at     INTEGER NOT NULL,
    PRIMARY KEY (rule, resource, key_version)
);
PRAGMA user_version = 3;
";

/// The layout version [`SCHEMA`] writes. 3: pending operations carry `pollKind` in their
/// JSON (layout 2 kept it as a prefix of `operationUrl`; [`migrate`] rewrites those).
const LAYOUT: i64 = 3;

/// The writer connection's page cache, KiB (SQLite's default is 2000). The writer appends
/// records in rowid order and inserts one random key per event, so it needs the B-trees'
/// upper levels, not the whole file; what it does not hold the OS page cache serves. A
/// quarter of the default lowered the handler's peak RSS under load by 1–2 MB at equal
/// events/s (BENCHMARKS "Harness").
const WRITER_CACHE_KIB: i64 = 512;

/// The page size of a new ledger file: SQLite's default. A smaller page writes fewer WAL
/// bytes per random `claims.event_id` insert, but 1 KiB measured no better here
/// (BENCHMARKS.md "Ledger"), so the option stays for measuring, not as a default.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;

/// The SQLite ledger. Cheap to share behind an `Arc`; dropping the last handle lets the
/// writer thread finish the queued requests and exit.
#[derive(Debug)]
pub struct SqliteLedger {
    path: PathBuf,
    writer: mpsc::Sender<Request>,
    reader: Arc<Mutex<Connection>>,
    stats: Arc<WriterStats>,
    /// Dropping it stops the checkpointer thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

/// Counters of the writer thread (for benchmarks and diagnostics).
#[derive(Debug, Default)]
pub struct WriterStats {
    commits: AtomicU64,
    requests: AtomicU64,
    busy_micros: AtomicU64,
    commit_micros: AtomicU64,
}

impl WriterStats {
    /// (transactions committed, requests answered) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (self.commits.load(Ordering::Relaxed), self.requests.load(Ordering::Relaxed))
    }

    /// Time the writer thread spent applying and committing batches, and within that
    /// in `COMMIT` (the WAL write and fsync), in microseconds.
    pub fn busy(&self) -> (u64, u64) {
        (self.busy_micros.load(Ordering::Relaxed), self.commit_micros.load(Ordering::Relaxed))
    }
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL size at which the checkpointer empties the WAL (module docs, "Checkpoints"): the
/// same as `journal_size_limit`, so the file never stays larger than that for long.
pub const DEFAULT_WAL_RESET_BYTES: u64 = 64 * 1024 * 1024;

/// One write, as sent to the writer thread. JSON is encoded by the caller, so the
/// writer thread only runs SQL.
#[derive(Debug)]
enum Op {
    Claim { event_id: String, ttl: Duration },
    Checkpoint { ticket: ClaimTicket, progress: String, ttl: Duration },
    Complete { ticket: ClaimTicket, recorded_at: i64, body: String },
    Abandon { ticket: ClaimTicket },
    Record { event_id: String, recorded_at: i64, body: String },
    ClaimOrRecord { event_id: String, ttl: Duration, recorded_at: i64, body: String },
    AddPending { id: String, registry: String, started_at: i64, body: String },
    CompletePending { id: String },
    AcquireLease { registry: String, ttl: Duration },
    RenewLease { lease: Lease, ttl: Duration },
    ReleaseLease { lease: Lease },
    ShouldSend { rule: String, resource: String, key_version: String, window: Duration },
    ForgetSend { rule: String, resource: String, key_version: String },
    Prune { max_age: Duration },
}

#[derive(Debug)]
enum Reply {
    Claim(Claim),
    Recorded(Option<Claim>),
    Ticket(ClaimTicket),
    Unit,
    Bool(bool),
    Lease(Option<Lease>),
    Pruned(PruneStats),
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.op.fmt(f)
    }
}

fn unavailable(path: &Path, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(format!("sqlite {}: {e}", path.display()))
}

fn corrupt(item: impl Into<String>, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt { item: item.into(), message: e.to_string() }
}

/// The oldest layout [`migrate`] can bring up to [`LAYOUT`].
const MIGRATABLE: i64 = 2;

/// Brings a file of layout `from` up to [`LAYOUT`] in one transaction.
fn migrate(conn: &mut Connection, from: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if from < 3 {
        // Layout 2 → 3: the poll kind moves out of `operationUrl` into `pollKind`.
        // `PendingOperation`'s reader understands the old form; write the new one back.
        let rows: Vec<(String, String)> = tx
            .prepare("SELECT id, body FROM pending")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, body) in rows {
            let op: PendingOperation = serde_json::from_str(&body).map_err(|e| {
                rusqlite::Error::InvalidParameterName(format!("pending operation {id} is corrupt: {e}"))
            })?;
            let body = serde_json::to_string(&op)
                .map_err(|e| rusqlite::Error::InvalidParameterName(format!("pending operation {id}: {e}")))?;
            tx.execute("UPDATE pending SET body = ?2 WHERE id = ?1", params![id, body])?;
        }
    }
    tx.pragma_update(None, "user_version", LAYOUT)?;
    tx.commit()
}

/// Opens a connection in WAL mode with `synchronous=FULL`. `page_size` applies to a file
/// that is still empty (it must precede the first write, including the switch to WAL).
fn open_connection(path: &Path, page_size: Option<u32>) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if let Some(size) = page_size {
        conn.pragma_update(None, "page_size", size)?;
    }
    // journal_mode answers with the resulting mode; WAL is persistent in the file.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!("journal_mode is {mode}, WAL is required")));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger file and starts its writer thread.
    pub async fn open(path: &Path, options: LedgerOptions) -> Result<Self> {
        let path = path.to_path_buf();
        let p = path.clone();
        let page_size = options.sqlite_page_size;
        let wal_reset_bytes = options.sqlite_wal_reset_bytes;
        let (writer_conn, reader, checkpointer) = tokio::task::spawn_blocking(move || -> rusqlite::Result<_> {
            let mut w = open_connection(&p, Some(page_size))?;
            let found: i64 = w.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if found != 0 && !(MIGRATABLE..=LAYOUT).contains(&found) {
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "the file has ledger layout {found}, this build uses {LAYOUT}: move it aside to start a new ledger"
                )));
            }
            if found != 0 && found < LAYOUT {
                migrate(&mut w, found)?;
            }
            w.execute_batch(SCHEMA)?;
            w.pragma_update(None, "wal_autocheckpoint", 0)?;
            w.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
            // After a checkpoint resets the WAL, truncate it back to this size.
            w.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
            let r = open_connection(&p, None)?;
            r.pragma_update(None, "query_only", "ON")?;
            let c = open_connection(&p, None)?;
            let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let reset_frames = i64::try_from(wal_reset_bytes / page.max(512) as u64).unwrap_or(i64::MAX).max(1);
            Ok((w, r, (c, reset_frames)))
        })
        .await
        .map_err(|e| unavailable(&path, e))?
        .map_err(|e| unavailable(&path, e))?;

        let (tx, rx) = mpsc::channel(options.max_batch.max(1) * 4);
        let clock = options.clock.clone();
        let max_batch = options.max_batch.max(1);
        let thread_path = path.clone();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("cmkguard-ledger-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, clock, max_batch, thread_path, &writer_stats))
            .map_err(|e| unavailable(&path, e))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("cmkguard-ledger-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer.0, checkpointer.1, stopped))
            .map_err(|e| unavailable(&path, e))?;
        tracing::debug!(path = %path.display(), "sqlite ledger open");
        Ok(Self { path, writer: tx, reader: Arc::new(Mutex::new(reader)), stats, _checkpointer: stop })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer thread's counters: `requests / commits` is the mean group-commit size.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
    }

    async fn write(&self, op: Op) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(Request { op, reply }).await.map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let reader = self.reader.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| unavailable(&path, "reader connection poisoned"))?;
            f(&conn)
        })
        .await
        .map_err(|e| unavailable(&self.path, e))?
    }
}

/// Copies the WAL into the database file until the ledger is dropped, then once more;
/// empties the WAL once it holds `reset_frames` frames (module docs, "Checkpoints").
fn checkpoint_loop(conn: Connection, reset_frames: i64, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    // The pragma answers (busy, frames in the WAL, frames copied).
    let frames = |mode: &str| conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(1));
    loop {
        let last = !matches!(stop.recv_timeout(CHECKPOINT_EVERY), Err(RecvTimeoutError::Timeout));
        match frames("PASSIVE") {
            Ok(n) if n >= reset_frames => {
                if let Err(e) = frames("TRUNCATE") {
                    tracing::debug!(error = %e, frames = n, "ledger WAL reset deferred");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "ledger checkpoint deferred"),
        }
        if last {
            return;
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Request>,
    clock: Arc<dyn Clock>,
    max_batch: usize,
    path: PathBuf,
    stats: &WriterStats,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let now = clock.now();
        stats.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let outcome = run_batch(&mut conn, &batch, now, stats);
        stats.busy_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match outcome {
            Ok(results) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                for (req, res) in batch.drain(..).zip(results) {
                    let _ = req.reply.send(res);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "ledger batch failed; retrying its requests one by one");
                for req in batch.drain(..) {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    let res = run_batch(&mut conn, std::slice::from_ref(&req), now, stats)
                        .map_err(|e| unavailable(&path, e))
                        .and_then(|mut v| v.pop().unwrap_or(Err(LedgerError::Closed)));
                    let _ = req.reply.send(res);
                }
            }
        }
    }
    tracing::debug!(path = %path.display(), "sqlite ledger writer stopped");
}

/// Applies every request in one transaction. `Err` = SQLite failed (nothing committed);
/// `Ok` holds each request's own answer, which may be a logical error.
fn run_batch(
    conn: &mut Connection,
    batch: &[Request],
    now: DateTime<Utc>,
    stats: &WriterStats,
) -> rusqlite::Result<Vec<Result<Reply>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(batch.len());
    for req in batch {
        out.push(apply(&tx, &req.op, now)?);
    }
    let started = std::time::Instant::now();
    tx.commit()?;
    stats.commit_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    Ok(out)
}

fn apply(tx: &Transaction<'_>, op: &Op, now: DateTime<Utc>) -> rusqlite::Result<Result<Reply>> {
    let now_us = micros(now);
    Ok(match op {
        Op::Claim { event_id, ttl } => claim(tx, event_id, *ttl, now)?.map(Reply::Claim),
        Op::Checkpoint { ticket, progress, ttl } => {
            let expires_at = now + chrono_duration(*ttl);
            let n = tx.prepare_cached(
                "UPDATE claims SET progress = ?3, expires_at = ?4 WHERE event_id = ?1 AND token = ?2 AND state = 'in-progress'",
            )?
            .execute(params![ticket.event_id, ticket.token, progress, micros(expires_at)])?;
            if n == 0 {
                Err(LedgerError::ClaimLost { event_id: ticket.event_id.clone() })
            } else {
                match serde_json::from_str::<Vec<ActionOutcome>>(progress) {
                    Ok(progress) => Ok(Reply::Ticket(ClaimTicket { expires_at, progress, ..ticket.clone() })),
                    Err(e) => Err(corrupt(format!("progress of {}", ticket.event_id), e)),
                }
            }
        }
        Op::Complete { ticket, recorded_at, body } => {
            let id = insert_record(tx, &ticket.event_id, *recorded_at, body)?;
            let n = tx
                .prepare_cached(
                    "UPDATE claims SET state = 'done', progress = '[]', record_id = ?3
                     WHERE event_id = ?1 AND token = ?2 AND state = 'in-progress'",
                )?
                .execute(params![ticket.event_id, ticket.token, id])?;
            if n == 0 {
                tx.prepare_cached("DELETE FROM records WHERE id = ?1")?.execute(params![id])?;
                Err(LedgerError::ClaimLost { event_id: ticket.event_id.clone() })
            } else {
                Ok(Reply::Unit)
            }
        }
        Op::Abandon { ticket } => {
            tx.prepare_cached(
                "UPDATE claims SET state = 'abandoned' WHERE event_id = ?1 AND token = ?2 AND state = 'in-progress'",
            )?
            .execute(params![ticket.event_id, ticket.token])?;
            Ok(Reply::Unit)
        }
        Op::Record { event_id, recorded_at, body } => {
            let existing: Option<Option<i64>> = tx
                .prepare_cached("SELECT record_id FROM claims WHERE event_id = ?1")?
                .query_row(params![event_id], |r| r.get(0))
                .optional()?;
            match existing {
                Some(Some(id)) => {
                    tx.prepare_cached("UPDATE records SET recorded_at = ?2, body = ?3 WHERE id = ?1")?
                        .execute(params![id, recorded_at, body])?;
                    tx.prepare_cached("UPDATE claims SET state = 'done', progress = '[]' WHERE event_id = ?1")?
                        .execute(params![event_id])?;
                }
                Some(None) => {
                    let id = insert_record(tx, event_id, *recorded_at, body)?;
                    tx.prepare_cached(
                        "UPDATE claims SET state = 'done', progress = '[]', record_id = ?2 WHERE event_id = ?1",
                    )?
                    .execute(params![event_id, id])?;
                }
                None => {
                    let id = insert_record(tx, event_id, *recorded_at, body)?;
                    tx.prepare_cached(
                        "INSERT INTO claims (event_id, state, token, attempt, expires_at, record_id)
                         VALUES (?1, 'done', '', 1, ?2, ?3)",
                    )?
                    .execute(params![event_id, now_us, id])?;
                }
            }
            Ok(Reply::Unit)
        }
        Op::ClaimOrRecord { event_id, ttl, recorded_at, body } => {
            // The common case, a new id: the record and a claim already done, in one write.
            let id = insert_record(tx, event_id, *recorded_at, body)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO claims (event_id, state, token, attempt, expires_at, record_id)
                     VALUES (?1, 'done', '', 1, ?2, ?3) ON CONFLICT (event_id) DO NOTHING",
                )?
                .execute(params![event_id, now_us, id])?;
            if inserted == 1 {
                Ok(Reply::Recorded(None))
            } else {
                // Known id: take the record back and answer as `claim` does.
                tx.prepare_cached("DELETE FROM records WHERE id = ?1")?.execute(params![id])?;
                claim(tx, event_id, *ttl, now)?.map(|c| Reply::Recorded(Some(c)))
            }
        }
        Op::AddPending { id, registry, started_at, body } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO pending (id, registry, started_at, body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, registry, started_at, body])?;
            Ok(Reply::Unit)
        }
        Op::CompletePending { id } => {
            let n = tx.prepare_cached("DELETE FROM pending WHERE id = ?1")?.execute(params![id])?;
            Ok(Reply::Bool(n > 0))
        }
        Op::AcquireLease { registry, ttl } => {
            let current: Option<i64> = tx
                .prepare_cached("SELECT expires_at FROM leases WHERE registry = ?1")?
                .query_row(params![registry], |r| r.get(0))
                .optional()?;
            if current.is_some_and(|exp| exp > now_us) {
                Ok(Reply::Lease(None))
            } else {
                let lease = Lease {
                    registry: registry.clone(),
                    lease_id: uuid::Uuid::new_v4().to_string(),
                    expires_at: now + chrono_duration(*ttl),
                };
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO leases (registry, lease_id, expires_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![lease.registry, lease.lease_id, micros(lease.expires_at)])?;
                Ok(Reply::Lease(Some(lease)))
            }
        }
        Op::RenewLease { lease, ttl } => {
            let expires_at = now + chrono_duration(*ttl);
            let n = tx
                .prepare_cached("UPDATE leases SET expires_at = ?3 WHERE registry = ?1 AND lease_id = ?2")?
                .execute(params![lease.registry, lease.lease_id, micros(expires_at)])?;
            if n == 0 {
                Err(LedgerError::LeaseLost { registry: lease.registry.clone() })
            } else {
                Ok(Reply::Lease(Some(Lease { expires_at, ..lease.clone() })))
            }
        }
        Op::ReleaseLease { lease } => {
            tx.prepare_cached("DELETE FROM leases WHERE registry = ?1 AND lease_id = ?2")?
                .execute(params![lease.registry, lease.lease_id])?;
            Ok(Reply::Unit)
        }
        Op::ShouldSend { rule, resource, key_version, window } => {
            let last: Option<i64> = tx
                .prepare_cached(
                    "SELECT sent_at FROM notifications WHERE rule = ?1 AND resource = ?2 AND key_version = ?3",
                )?
                .query_row(params![rule, resource, key_version], |r| r.get(0))
                .optional()?;
            let window_start = micros(now - chrono_duration(*window));
            if last.is_some_and(|sent| sent > window_start) {
                Ok(Reply::Bool(false))
            } else {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO notifications (rule, resource, key_version, sent_at) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![rule, resource, key_version, now_us])?;
                Ok(Reply::Bool(true))
            }
        }
        Op::ForgetSend { rule, resource, key_version } => {
            tx.prepare_cached("DELETE FROM notifications WHERE rule = ?1 AND resource = ?2 AND key_version = ?3")?
                .execute(params![rule, resource, key_version])?;
            Ok(Reply::Unit)
        }
        Op::Prune { max_age } => {
            let cutoff = micros(now - chrono_duration(*max_age));
            let claims = tx.execute(
                "DELETE FROM claims WHERE record_id IN (SELECT id FROM records WHERE recorded_at < ?1)
                    OR (state <> 'done' AND expires_at < ?1)",
                params![cutoff],
            )?;
            let records = tx.execute("DELETE FROM records WHERE recorded_at < ?1", params![cutoff])?;
            let notifications = tx.execute("DELETE FROM notifications WHERE sent_at < ?1", params![cutoff])?;
            tx.execute("DELETE FROM leases WHERE expires_at < ?1", params![cutoff])?;
            Ok(Reply::Pruned(PruneStats {
                records: records as u64,
                claims: claims as u64,
                notifications: notifications as u64,
            }))
        }
    })
}

/// Appends a record and returns its id.
fn insert_record(tx: &Transaction<'_>, event_id: &str, recorded_at: i64, body: &str) -> rusqlite::Result<i64> {
    tx.prepare_cached("INSERT INTO records (event_id, recorded_at, body) VALUES (?1, ?2, ?3)")?.execute(params![
        event_id,
        recorded_at,
        body
    ])?;
    Ok(tx.last_insert_rowid())
}

fn claim(tx: &Transaction<'_>, event_id: &str, ttl: Duration, now: DateTime<Utc>) -> rusqlite::Result<Result<Claim>> {
    let expires_at = now + chrono_duration(ttl);
    let token = uuid::Uuid::new_v4().to_string();
    // Fast path, the common case: a new event id is one INSERT.
    let inserted = tx
        .prepare_cached(
            "INSERT INTO claims (event_id, state, token, attempt, expires_at) VALUES (?1, 'in-progress', ?2, 1, ?3)
             ON CONFLICT (event_id) DO NOTHING",
        )?
        .execute(params![event_id, token, micros(expires_at)])?;
    if inserted == 1 {
        return Ok(Ok(Claim::New(ClaimTicket {
            event_id: event_id.to_owned(),
            token,
            attempt: 1,
            expires_at,
            progress: vec![],
        })));
    }
    let row: Option<(String, u32, i64, String)> = tx
        .prepare_cached("SELECT state, attempt, expires_at, progress FROM claims WHERE event_id = ?1")?
        .query_row(params![event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let (attempt, progress) = match row {
        // Inserted above unless it existed; gone meanwhile is impossible inside the transaction.
        None => return Ok(Err(corrupt(format!("claim {event_id}"), "vanished during its transaction"))),
        Some((state, _, _, _)) if state == "done" => {
            let body: Option<String> = tx
                .prepare_cached(
                    "SELECT r.body FROM claims c JOIN records r ON r.id = c.record_id WHERE c.event_id = ?1",
                )?
                .query_row(params![event_id], |r| r.get(0))
                .optional()?;
            return Ok(match body {
                Some(body) => serde_json::from_str::<AuditRecord>(&body)
                    .map(|r| Claim::AlreadyDone(Box::new(r)))
                    .map_err(|e| corrupt(format!("record {event_id}"), e)),
                None => Err(corrupt(format!("claim {event_id}"), "marked done but its record is missing")),
            });
        }
        Some((state, attempt, exp, _)) if state == "in-progress" && exp > micros(now) => {
            return Ok(Ok(Claim::InProgress { attempt, expires_at: from_micros(exp) }));
        }
        Some((_, attempt, _, progress)) => {
            // Expired or abandoned: take over, keeping what the earlier attempt checkpointed.
            let progress = match serde_json::from_str::<Vec<ActionOutcome>>(&progress) {
                Ok(p) => p,
                Err(e) => return Ok(Err(corrupt(format!("progress of {event_id}"), e))),
            };
            tx.prepare_cached(
                "UPDATE claims SET state = 'in-progress', token = ?2, attempt = ?3, expires_at = ?4 WHERE event_id = ?1",
            )?
            .execute(params![event_id, token, attempt + 1, micros(expires_at)])?;
            (attempt + 1, progress)
        }
    };
    Ok(Ok(Claim::New(ClaimTicket { event_id: event_id.to_owned(), token, attempt, expires_at, progress })))
}

fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| corrupt(what, e))
}

fn unexpected(r: Reply) -> LedgerError {
    LedgerError::Unavailable(format!("sqlite ledger: unexpected reply {r:?}"))
}

#[async_trait::async_trait]
impl Ledger for SqliteLedger {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn claim(&self, event_id: &str, ttl: Duration) -> Result<Claim> {
        match self.write(Op::Claim { event_id: event_id.to_owned(), ttl }).await? {
            Reply::Claim(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    async fn checkpoint(&self, ticket: &ClaimTicket, progress: &[ActionOutcome], ttl: Duration) -> Result<ClaimTicket> {
        let progress = to_json("progress", &progress)?;
        match self.write(Op::Checkpoint { ticket: ticket.clone(), progress, ttl }).await? {
            Reply::Ticket(t) => Ok(t),
            r => Err(unexpected(r)),
        }
    }

    async fn complete(&self, ticket: &ClaimTicket, record: &AuditRecord) -> Result<()> {
        let body = to_json("audit record", record)?;
        self.write(Op::Complete { ticket: ticket.clone(), recorded_at: micros(record.recorded_at), body })
            .await
            .map(drop)
    }

    async fn claim_or_record(&self, record: &AuditRecord, ttl: Duration) -> Result<Option<Claim>> {
        let body = to_json("audit record", record)?;
        let op =
            Op::ClaimOrRecord { event_id: record.event_id.clone(), ttl, recorded_at: micros(record.recorded_at), body };
        match self.write(op).await? {
            Reply::Recorded(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    async fn abandon(&self, ticket: &ClaimTicket) -> Result<()> {
        self.write(Op::Abandon { ticket: ticket.clone() }).await.map(drop)
    }

    async fn record(&self, record: &AuditRecord) -> Result<()> {
        let body = to_json("audit record", record)?;
        self.write(Op::Record { event_id: record.event_id.clone(), recorded_at: micros(record.recorded_at), body })
            .await
            .map(drop)
    }

    async fn get(&self, event_id: &str) -> Result<Option<AuditRecord>> {
        let path = self.path.clone();
        let event_id = event_id.to_owned();
        self.read(move |c| {
            let body: Option<String> = c
                .prepare_cached(
                    "SELECT r.body FROM claims c JOIN records r ON r.id = c.record_id WHERE c.event_id = ?1",
                )
                .and_then(|mut s| s.query_row(params![event_id], |r| r.get(0)).optional())
                .map_err(|e| unavailable(&path, e))?;
            body.map(|b| serde_json::from_str(&b).map_err(|e| corrupt(format!("record {event_id}"), e))).transpose()
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<AuditRecord>> {
        let path = self.path.clone();
        let since = query.since.map(micros).unwrap_or(i64::MIN);
        let limit = query.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)).unwrap_or(-1);
        self.read(move |c| {
            let rows: Vec<(String, String)> = c
                .prepare_cached(
                    "SELECT event_id, body FROM records WHERE recorded_at >= ?1 ORDER BY recorded_at DESC, id DESC LIMIT ?2",
                )
                .and_then(|mut s| s.query_map(params![since, limit], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|e| unavailable(&path, e))?;
            rows.into_iter()
                .map(|(id, b)| serde_json::from_str(&b).map_err(|e| corrupt(format!("record {id}"), e)))
                .collect()
        })
        .await
    }

    async fn add_pending(&self, op: &PendingOperation) -> Result<()> {
        let body = to_json("pending operation", op)?;
        self.write(Op::AddPending {
            id: op.id.clone(),
            registry: op.registry.clone(),
            started_at: micros(op.started_at),
            body,
        })
        .await
        .map(drop)
    }

    async fn list_pending(&self, registry: Option<&str>) -> Result<Vec<PendingOperation>> {
        let path = self.path.clone();
        let registry = registry.map(str::to_owned);
        self.read(move |c| {
            let rows: Vec<(String, String)> = c
                .prepare_cached(
                    "SELECT id, body FROM pending WHERE ?1 IS NULL OR registry = ?1 COLLATE NOCASE ORDER BY started_at, id",
                )
                .and_then(|mut s| s.query_map(params![registry], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|e| unavailable(&path, e))?;
            rows.into_iter()
                .map(|(id, b)| serde_json::from_str(&b).map_err(|e| corrupt(format!("pending operation {id}"), e)))
                .collect()
        })
        .await
    }

    async fn complete_pending(&self, id: &str) -> Result<bool> {
        match self.write(Op::CompletePending { id: id.to_owned() }).await? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    async fn acquire_lease(&self, registry: &str, ttl: Duration) -> Result<Option<Lease>> {
        match self.write(Op::AcquireLease { registry: registry.to_ascii_lowercase(), ttl }).await? {
            Reply::Lease(l) => Ok(l),
            r => Err(unexpected(r)),
        }
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        match self.write(Op::RenewLease { lease: lease.clone(), ttl }).await? {
            Reply::Lease(Some(l)) => Ok(l),
            r => Err(unexpected(r)),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.write(Op::ReleaseLease { lease: lease.clone() }).await.map(drop)
    }

    async fn should_send(&self, rule: &str, resource: &str, key_version: &str, window: Duration) -> Result<bool> {
        let op = Op::ShouldSend {
            rule: rule.to_owned(),
            resource: resource.to_ascii_lowercase(),
            key_version: key_version.to_owned(),
            window,
        };
        match self.write(op).await? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    async fn forget_send(&self, rule: &str, resource: &str, key_version: &str) -> Result<()> {
        let op = Op::ForgetSend {
            rule: rule.to_owned(),
            resource: resource.to_ascii_lowercase(),
            key_version: key_version.to_owned(),
        };
        self.write(op).await.map(drop)
    }

    async fn prune(&self, max_age: Duration) -> Result<PruneStats> {
        match self.write(Op::Prune { max_age }).await? {
            Reply::Pruned(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_corrupt_row_is_reported_with_its_event_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let ledger = SqliteLedger::open(&path, LedgerOptions::default()).await.unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO records (id, event_id, recorded_at, body) VALUES (7, 'evt-bad', 0, '{\"eventId\":')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO claims (event_id, state, token, attempt, expires_at, record_id) VALUES ('evt-bad', 'done', '', 1, 0, 7)",
            [],
        )
        .unwrap();
        let err = ledger.get("evt-bad").await.unwrap_err();
        assert!(matches!(&err, LedgerError::Corrupt { item, .. } if item.contains("evt-bad")), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn the_file_is_in_wal_mode_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let _ledger = SqliteLedger::open(&path, LedgerOptions::default()).await.unwrap();
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(conn.query_row("PRAGMA page_size", [], |r| r.get::<_, u32>(0)).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(
            open_connection(&path, None).unwrap().query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0)).unwrap(),
            2
        );
    }
}

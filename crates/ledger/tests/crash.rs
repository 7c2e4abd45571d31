//! Crash safety of the SQLite ledger: a child process writes as fast as it can and
//! reports each write only after the ledger acknowledged it; the parent kills it with
//! SIGKILL mid-stream (no clean shutdown, no destructor), reopens the file and checks
//! that every acknowledged claim and record is there.
//!
//! The child is this test binary itself, re-run with only `crash_child_writer` selected
//! and `CMKGUARD_LEDGER_CRASH_CHILD` naming the database file.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmkguard_ledger::Claim;

const CHILD_ENV: &str = "CMKGUARD_LEDGER_CRASH_CHILD";
const TTL: Duration = Duration::from_secs(3600);

/// The writer half. Does nothing unless started by `acknowledged_writes_survive_sigkill`.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let url = format!("sqlite:{}", std::path::Path::new(&path).display());
        let ledger = cmkguard_ledger::open(&url, None).await.unwrap();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let (ledger, out) = (ledger.clone(), out.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        let id = format!("evt-{w}-{i}");
                        let Claim::New(ticket) = ledger.claim(&id, TTL).await.unwrap() else {
                            panic!("{id} claimed twice")
                        };
                        say(&out, &format!("claimed {id}"));
                        ledger.complete(&ticket, &common::record(&id, chrono::Utc::now())).await.unwrap();
                        say(&out, &format!("recorded {id}"));
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
}

fn say(out: &std::sync::Mutex<std::io::Stdout>, line: &str) {
    let out = out.lock().unwrap();
    let mut out = out.lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader =
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>());

    // Let it write for a while, then kill it hard in the middle of its work.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the writer stopped by itself ({status})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let lines = reader.join().unwrap();

    let claimed: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("claimed ")).collect();
    let recorded: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("recorded ")).collect();
    assert!(recorded.len() >= 16, "the writer acknowledged too little to prove anything: {} records", recorded.len());

    let ledger = cmkguard_ledger::open(&format!("sqlite:{}", db.display()), None).await.unwrap();
    let mut missing = Vec::new();
    for id in &recorded {
        match ledger.get(id).await.unwrap() {
            Some(r) if r.event_id == *id => {}
            other => missing.push(format!("{id}: {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost: {:?}",
        missing.len(),
        recorded.len(),
        &missing[..missing.len().min(5)]
    );
    for id in claimed.iter().filter(|id| !recorded.contains(id)) {
        // Claimed but not completed when killed: the claim itself must have survived.
        let c = ledger.claim(id, TTL).await.unwrap();
        assert!(matches!(c, Claim::InProgress { attempt: 1, .. } | Claim::AlreadyDone(_)), "{id}: {c:?}");
    }
    eprintln!(
        "crash test: {} records and {} claims acknowledged before SIGKILL, all present",
        recorded.len(),
        claimed.len()
    );
}

//! Hostile requests against the real `cmkguard serve` binary over loopback TCP: each
//! gets a clear 4xx, memory stays bounded, and the server keeps serving the next normal
//! request. (tests/routes.rs checks the same refusals in-process, message by message;
//! this file checks them on the wire, where body limits, chunking and trickled bodies
//! really happen.) The table is in docs/fuzzing.md ("Hostile inputs").

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::WEBHOOK_KEY;

/// Body limit the server runs with (the default, 4 MiB).
const LIMIT: usize = 4 * 1024 * 1024;

struct Serve {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_cmkguard"))
            .arg("serve")
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("CMKGUARD_WEBHOOK_KEY", WEBHOOK_KEY)
            .env("CMKGUARD_LEDGER", format!("sqlite:{}", dir.path().join("ledger.db").display()))
            .env("CMKGUARD_POLICY_CACHE_DIR", dir.path().join("policy-cache"))
            .env("CMKGUARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cmkguard serve");
        let mut s = Self { child, port, _dir: dir };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("cmkguard serve exited: {status}");
            }
            if s.get("/").0 == 200 {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cmkguard serve not ready within 60 s");
    }

    fn connect(&self) -> TcpStream {
        let c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        c
    }

    /// Sends raw bytes (request head + body), returns status and body of the answer.
    fn raw(&self, request: &[u8]) -> (u16, String) {
        let mut c = self.connect();
        // A server that refuses early may close before it has read everything.
        let _ = c.write_all(request);
        read_response(&mut c)
    }

    fn get(&self, path: &str) -> (u16, String) {
        match TcpStream::connect(("127.0.0.1", self.port)) {
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes());
                read_response(&mut c)
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Peak resident memory of the server (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The normal requests that must keep working after every hostile one.
    fn assert_serving(&self, after: &str) {
        let (status, body) = self.get("/");
        assert_eq!(status, 200, "after {after}: GET / answered {status} {body}");
        let handshake =
            serde_json::to_string(&common::fixture("eventgrid/eventgrid.SubscriptionValidationEvent.docs-array.json"))
                .unwrap();
        let (status, body) = self.raw(&post("/api/events", "application/json", handshake.as_bytes()));
        assert_eq!(status, 200, "after {after}: the validation handshake answered {status} {body}");
        assert!(body.contains("validationResponse"), "after {after}: {body}");
    }
}

fn post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-cmkguard-key: {WEBHOOK_KEY}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn read_response(c: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A reset after the answer arrived (the server closed without reading the rest).
            Err(_) if !buf.is_empty() => break,
            Err(e) => return (0, format!("no answer: {e}")),
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes a chunked body of `total` bytes of `fill`, ignoring a server that stops reading.
fn chunked(s: &Serve, total: usize, fill: u8) -> (u16, String) {
    let mut c = s.connect();
    let head = format!(
        "POST /api/events HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-cmkguard-key: {WEBHOOK_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let mut ok = c.write_all(head.as_bytes()).is_ok();
    let piece = vec![fill; 64 * 1024];
    let mut sent = 0;
    while ok && sent < total {
        ok = c.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).is_ok()
            && c.write_all(&piece).is_ok()
            && c.write_all(b"\r\n").is_ok();
        sent += piece.len();
    }
    if ok {
        let _ = c.write_all(b"0\r\n\r\n");
    }
    read_response(&mut c)
}

/// The hostile table: request → the status it must get and a word of the answer.
#[test]
fn hostile_requests_get_a_clear_4xx_and_the_server_keeps_serving() {
    let s = Serve::start();
    s.assert_serving("start");
    let base_kib = s.peak_rss_kib();

    // Slow-loris: 64 connections each trickle a body that never completes, a byte after
    // every case below; all the while the table's requests are answered. Each gets 408
    // when the body read timeout (30 s) expires, checked at the end.
    let mut loris: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut c = s.connect();
            c.write_all(
                format!("POST /api/events HTTP/1.1\r\nhost: x\r\nx-cmkguard-key: {WEBHOOK_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n[")
                    .as_bytes(),
            )
            .unwrap();
            c
        })
        .collect();

    let event =
        serde_json::to_string(&common::fixture("eventgrid/keyvault.SecretNewVersionCreated.eventgrid.json")).unwrap();
    let mut bad_utf8 = event.replacen("\"topic\"", "\"xopic\"", 1).into_bytes();
    let at = find(&bad_utf8, b"resourceGroups").unwrap();
    bad_utf8[at] = 0xff;
    let deep = "[".repeat(100_000);
    let huge_array = format!("[{}0]", "0,".repeat((LIMIT - 16) / 2));
    let many_events = format!("[{}{{}}]", "{},".repeat((LIMIT - 16) / 3));

    type Case<'a> = (&'static str, Box<dyn Fn() -> (u16, String) + 'a>, u16, &'static str);
    let cases: Vec<Case<'_>> = vec![
        (
            "oversized, declared (content-length 1 GB, no body sent)",
            Box::new(|| {
                s.raw(
                    format!(
                        "POST /api/events HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-cmkguard-key: {WEBHOOK_KEY}\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n"
                    )
                    .as_bytes(),
                )
            }),
            413,
            "larger than the limit",
        ),
        (
            "oversized, chunked (64 MiB streamed, no length)",
            Box::new(|| chunked(&s, 64 * 1024 * 1024, b' ')),
            413,
            "larger than the limit",
        ),
        (
            "oversized Functions invocation (limit + 1 byte)",
            Box::new(|| s.raw(&post("/KeyVaultEvents", "application/json", &vec![b' '; LIMIT + 1]))),
            413,
            "larger than the limit",
        ),
        (
            "100,000 nested [",
            Box::new(|| s.raw(&post("/api/events", "application/json", deep.as_bytes()))),
            400,
            "nested too deeply",
        ),
        (
            "100,000 nested [ in a Functions invocation",
            Box::new(|| {
                s.raw(&post("/KeyVaultEvents", "application/json", format!("{{\"Data\":{{\"event\":{deep}").as_bytes()))
            }),
            400,
            "nested too deeply",
        ),
        (
            "invalid UTF-8 in a field the decoder skips",
            Box::new(|| s.raw(&post("/api/events", "application/json", &bad_utf8))),
            400,
            "not UTF-8",
        ),
        (
            "a 4 MiB array of numbers",
            Box::new(|| s.raw(&post("/api/events", "application/json", huge_array.as_bytes()))),
            400,
            "more than 5000 events",
        ),
        (
            "1.4 million empty events in one batch",
            Box::new(|| s.raw(&post("/api/events", "application/json", many_events.as_bytes()))),
            400,
            "more than 5000 events",
        ),
        (
            "content type text/plain",
            Box::new(|| s.raw(&post("/api/events", "text/plain", event.as_bytes()))),
            415,
            "not accepted",
        ),
        (
            "content type multipart/form-data",
            Box::new(|| s.raw(&post("/api/events", "multipart/form-data; boundary=x", b"--x--"))),
            415,
            "not accepted",
        ),
        (
            "content type application/xml",
            Box::new(|| s.raw(&post("/api/events", "application/xml", b"<a/>"))),
            415,
            "not accepted",
        ),
        (
            "no key",
            Box::new(|| {
                s.raw(
                    format!(
                        "POST /api/events HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{event}",
                        event.len()
                    )
                    .as_bytes(),
                )
            }),
            401,
            "missing key",
        ),
        (
            "wrong key (same length)",
            Box::new(|| {
                let wrong = "x".repeat(WEBHOOK_KEY.len());
                s.raw(
                    format!(
                        "POST /api/events HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-cmkguard-key: {wrong}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{event}",
                        event.len()
                    )
                    .as_bytes(),
                )
            }),
            401,
            "wrong key",
        ),
    ];
    for (i, (name, send, want, needle)) in cases.iter().enumerate() {
        let (status, body) = send();
        assert_eq!(status, *want, "{name}: {body}");
        assert!(body.contains(needle), "{name}: {body:?} should mention {needle:?}");
        s.assert_serving(name);
        // Trickle during the first cases only: well before the 30 s timeout, so no byte
        // can hit a connection the server has already answered and closed.
        if i < 3 {
            for c in &mut loris {
                c.write_all(b" ").unwrap();
            }
        }
    }
    drop(cases);
    for (i, c) in loris.iter_mut().enumerate() {
        let (status, body) = read_response(c);
        assert_eq!(status, 408, "slow-loris connection {i}: {body}");
        assert!(body.contains("not received in time"), "slow-loris connection {i}: {body}");
    }
    drop(loris);
    s.assert_serving("slow-loris");

    let peak_kib = s.peak_rss_kib();
    // A 4 MiB body is read once and parsed without building the document (the 1.4 M
    // empty events are refused at the first one): growth stays a small multiple of the limit.
    let growth_mib = peak_kib.saturating_sub(base_kib) / 1024;
    assert!(growth_mib < 64, "peak RSS grew by {growth_mib} MiB (from {base_kib} KiB to {peak_kib} KiB)");
    eprintln!("hostile: peak RSS {} MiB (start {} MiB)", peak_kib / 1024, base_kib / 1024);
}

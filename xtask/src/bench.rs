//! `cargo xtask bench`: reruns every performance target of the proof issue and prints one
//! table (what, target, measured median, met?), also written as Markdown for BENCHMARKS.md.
//!
//! Rows: policy decision p50/p99 (`cmkguard policy bench builtin`), HTTP throughput through
//! the real path in both shapes (`bench_serve` + the load generator in this process), peak
//! RSS of the server under that load (`VmHWM`), cold start of `cmkguard serve` to ready and
//! to the first event answered (against a local azsim process), and the 10,000-registry
//! sweep (`cargo bench -p cmkguard --bench sweep`). Every step is bounded; `--quick` runs
//! each once and briefly (≈ 1 min), the full run repeats and takes the median (≈ 3–5 min).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench_load::{self, LoadSpec, Shape, Template};
use crate::cargo::cargo;

/// Rows `--only` accepts.
pub const ROWS: &[&str] = &["policy", "http-functions", "http-direct", "cold-start", "sweep"];

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub only: Vec<String>,
    pub out: Option<PathBuf>,
    /// Connections of the Functions-envelope load (one event each in flight).
    pub functions_connections: u16,
    /// Connections of the direct-mode load (a batch each in flight).
    pub direct_connections: u16,
    pub batch: usize,
    /// Tokio workers of the server under load [default: one per core].
    pub server_workers: Option<usize>,
    /// Skip `cargo build` (binaries already built).
    pub no_build: bool,
}

/// One line of the table.
#[derive(Debug, Clone)]
struct Row {
    what: String,
    target: String,
    measured: String,
    met: Option<bool>,
    note: String,
}

impl Row {
    fn new(what: &str, target: &str, measured: String, met: Option<bool>, note: String) -> Self {
        Self { what: what.into(), target: target.into(), measured, met, note }
    }
    fn failed(what: &str, target: &str, e: &anyhow::Error) -> Self {
        Self::new(what, target, "—".into(), None, format!("not measured: {e:#}"))
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn wanted(opts: &Options, row: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|o| o == row)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores, {model}")
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    for o in &opts.only {
        if !ROWS.contains(&o.as_str()) {
            bail!("--only {o:?}: rows are {}", ROWS.join(", "));
        }
    }
    let root = crate::repo_root();
    let work = root.join("target/bench");
    std::fs::create_dir_all(&work)?;
    if !opts.no_build {
        build(&root)?;
    }
    let bin = root.join("target/release");
    let load_before = loadavg();
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    // Rows are also printed as soon as they are measured, so a run cut short still tells.
    let mut printed = 0;

    if wanted(opts, "policy") {
        eprintln!("== policy decision (cmkguard policy bench builtin)");
        match policy_rows(&bin, opts.quick) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => rows.push(Row::failed("policy decision", "p50 ≤ 15 µs, p99 ≤ 60 µs", &e)),
        }
    }
    let mut peak_rss: Vec<(String, u64, MemPeak)> = Vec::new();
    for (row, shape, conns) in [
        ("http-functions", Shape::Functions, opts.functions_connections),
        ("http-direct", Shape::Direct(opts.batch), opts.direct_connections),
    ] {
        if !wanted(opts, row) {
            continue;
        }
        eprintln!("== HTTP throughput: {} ({conns} connections)", shape.label());
        match throughput(&root, &bin, &work, shape, conns, opts) {
            Ok((r, (rss, mem))) => {
                rows.push(r);
                peak_rss.push((shape.label(), rss, mem));
            }
            Err(e) => rows.push(Row::failed(&format!("throughput: {}", shape.label()), "≥ 20,000 events/s", &e)),
        }
    }
    if let Some((label, rss, _)) = peak_rss.iter().max_by_key(|(_, r, _)| *r) {
        let mb = *rss as f64 / 1024.0;
        let all = peak_rss
            .iter()
            .map(|(l, r, m)| format!("{l}: {:.1} MB ({})", *r as f64 / 1024.0, m.describe()))
            .collect::<Vec<_>>();
        rows.push(Row::new(
            "peak RSS under the throughput load (VmHWM)",
            "≤ 40 MB",
            format!("{mb:.1} MB"),
            Some(mb <= 40.0),
            format!("max over the loads ({label}); {}", all.join(", ")),
        ));
    }
    print_new(&rows, &mut printed);
    if wanted(opts, "cold-start") {
        eprintln!("== cold start (cmkguard serve against a local azsim)");
        match cold_start(&root, &bin, &work, opts.quick) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                rows.push(Row::failed("cold start → ready on GET /", "≤ 30 ms", &e));
            }
        }
    }
    print_new(&rows, &mut printed);
    if wanted(opts, "sweep") {
        eprintln!("== sweep of 10,000 registries (cargo bench -p cmkguard --bench sweep)");
        match sweep(&root, opts.quick) {
            Ok(r) => rows.push(r),
            Err(e) => rows.push(Row::failed("sweep of 10,000 registries (azsim)", "≤ 5 s", &e)),
        }
    }

    print_new(&rows, &mut printed);
    let load_after = loadavg();
    let header = format!(
        "`cargo xtask bench{}` at {} (commit {}), {:.0} s; machine: {}; load average (1/5/15 min) before {load_before}, after {load_after}",
        if opts.quick { " --quick" } else { "" },
        utc_now(),
        git_head(&root),
        started.elapsed().as_secs_f64(),
        cpu_model(),
    );
    let text = render_text(&rows);
    println!("\n{header}\n\n{text}");
    let md = format!("{header}\n\n{}", render_markdown(&rows));
    let out = opts.out.clone().unwrap_or_else(|| work.join(if opts.quick { "harness-quick.md" } else { "harness.md" }));
    std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    println!("\nMarkdown: {}", out.display());
    if rows.iter().any(|r| r.met.is_none()) {
        bail!("some rows were not measured (see the table)");
    }
    Ok(())
}

fn print_new(rows: &[Row], printed: &mut usize) {
    for r in &rows[*printed..] {
        eprintln!("   => {}: {} (target {}, met: {})", r.what, r.measured, r.target, yes_no(r.met));
    }
    *printed = rows.len();
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn git_head(root: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    }
}

fn render_markdown(rows: &[Row]) -> String {
    let mut s = String::from("| what | target | measured (median) | met? | notes |\n|---|---|---|---|---|\n");
    for r in rows {
        s.push_str(&format!("| {} | {} | {} | {} | {} |\n", r.what, r.target, r.measured, yes_no(r.met), r.note));
    }
    s
}

fn render_text(rows: &[Row]) -> String {
    let w0 = rows.iter().map(|r| r.what.chars().count()).max().unwrap_or(4).max(4);
    let w1 = rows.iter().map(|r| r.target.chars().count()).max().unwrap_or(6).max(6);
    let w2 = rows.iter().map(|r| r.measured.chars().count()).max().unwrap_or(8).max(8);
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())));
    let mut s = format!("{}  {}  {}  met?\n", pad("what", w0), pad("target", w1), pad("measured", w2));
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "not measured",
        };
        s.push_str(&format!("{}  {}  {}  {met}\n", pad(&r.what, w0), pad(&r.target, w1), pad(&r.measured, w2)));
        if !r.note.is_empty() {
            s.push_str(&format!("    {}\n", r.note));
        }
    }
    s
}

fn build(root: &Path) -> anyhow::Result<()> {
    for args in [
        &["build", "--release", "--locked", "-p", "cmkguard", "--bin", "cmkguard", "--example", "bench_serve"][..],
        &["build", "--release", "--locked", "-p", "azsim", "--bin", "azsim"][..],
    ] {
        eprintln!("$ cargo {}", args.join(" "));
        let status = cargo().current_dir(root).args(args).status().context("running cargo")?;
        if !status.success() {
            bail!("cargo {} failed", args.join(" "));
        }
    }
    Ok(())
}

/// A child process killed (by its own pid) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn policy_rows(bin: &Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    let (runs, iterations) = if quick { (1, 1000) } else { (3, 5000) };
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = Command::new(bin.join("cmkguard"))
            .args(["policy", "bench", "builtin", "--iterations", &iterations.to_string()])
            .output()
            .context("running cmkguard policy bench")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("cmkguard policy bench failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        eprintln!("   {}", text.trim());
        p50s.push(number_after(&text, "p50 ").context("no p50 in the policy bench output")?);
        p99s.push(number_after(&text, "p99 ").context("no p99 in the policy bench output")?);
    }
    let note =
        format!("default policy, 10 registries, fresh sandbox; median of {runs} run(s) × {iterations} evaluations");
    let (p50, p99) = (median(&mut p50s), median(&mut p99s));
    Ok(vec![
        Row::new("policy decision p50", "≤ 15 µs", format!("{p50:.1} µs"), Some(p50 <= 15.0), note.clone()),
        Row::new("policy decision p99", "≤ 60 µs", format!("{p99:.1} µs"), Some(p99 <= 60.0), note),
    ])
}

/// The number that follows `label` in `text` (e.g. `p50 123.4 µs` → 123.4).
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    let num: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().ok()
}

/// Starts `bench_serve` (real pipeline) on a free port; returns it and its address.
fn start_bench_serve(bin: &Path, work: &Path, tag: &str, workers: Option<usize>) -> anyhow::Result<(Proc, SocketAddr)> {
    let ledger = work.join(format!("bench-ledger-{tag}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", ledger.display()));
    }
    let mut cmd = Command::new(bin.join("examples/bench_serve"));
    cmd.args(["--port", "0", "--pipeline", "real", "--ledger"])
        .arg(&ledger)
        .arg("--policy-cache-dir")
        .arg(work.join("policy-cache"));
    if let Some(w) = workers {
        cmd.args(["--workers", &w.to_string()]);
    }
    let log = std::fs::File::create(work.join(format!("bench-serve-{tag}.log")))?;
    let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().context("starting bench_serve")?;
    let stdout = child.stdout.take().context("bench_serve stdout")?;
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).context("bench_serve did not start within 60 s")?;
    let addr: SocketAddr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("bench_serve printed {line:?}, not its address"))?;
    Ok((proc, addr))
}

fn vm_hwm_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).context("VmHWM value")
}

/// What the server's resident memory was made of at its largest, sampled every 50 ms
/// while the load ran: anonymous memory (heap, stacks, the sandboxes' linear memories) and
/// file-backed pages (mostly the binary's code, whose mapped share depends on the page
/// cache: a binary just written by the linker may map more of it), each at its own peak,
/// and the most threads seen. VmHWM alone cannot tell those apart.
#[derive(Debug, Default, Clone, Copy)]
struct MemPeak {
    anon_kb: u64,
    file_kb: u64,
    threads: u64,
}

impl MemPeak {
    fn sample(&mut self, pid: u32) -> bool {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
        for line in status.lines() {
            let mut f = line.split_whitespace();
            let (Some(key), Some(v)) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) else { continue };
            match key {
                "RssAnon:" => self.anon_kb = self.anon_kb.max(v),
                "RssFile:" => self.file_kb = self.file_kb.max(v),
                "Threads:" => self.threads = self.threads.max(v),
                _ => {}
            }
        }
        true
    }

    /// Samples `pid` on a thread until the returned guard is finished.
    fn watch(pid: u32) -> MemWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = MemPeak::default();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && peak.sample(pid) {
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        MemWatch { stop, handle }
    }

    fn describe(&self) -> String {
        format!(
            "peaks: anonymous {:.1} MB, file-backed (code) {:.1} MB, {} threads",
            self.anon_kb as f64 / 1024.0,
            self.file_kb as f64 / 1024.0,
            self.threads
        )
    }
}

struct MemWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<MemPeak>,
}

impl MemWatch {
    fn finish(self, pid: u32) -> MemPeak {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut peak = self.handle.join().unwrap_or_default();
        peak.sample(pid);
        peak
    }
}

/// The process's CPU time so far (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces, so split after its ')'):
    // state is field 3, utime 14 and stime 15, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/PID/stat: no ')'")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        f.get(i - 3).and_then(|v| v.parse().ok()).with_context(|| format!("/proc/PID/stat field {i}"))
    };
    // Linux reports these in USER_HZ, 100 on every architecture it runs on.
    Ok(Duration::from_millis((ticks(14)? + ticks(15)?) * 10))
}

/// Events the server has handled so far (`GET /api/health`, `stats.events`).
fn events_handled(addr: SocketAddr) -> anyhow::Result<u64> {
    let (code, text) =
        http_once(addr, format!("GET /api/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).with_context(|| format!("GET /api/health: {code}"))?;
    v["stats"]["events"].as_u64().context("GET /api/health: no stats.events")
}

fn throughput(
    root: &Path,
    bin: &Path,
    work: &Path,
    shape: Shape,
    connections: u16,
    opts: &Options,
) -> anyhow::Result<(Row, (u64, MemPeak))> {
    let tag = match shape {
        Shape::Functions => "functions".to_owned(),
        Shape::Direct(n) => format!("direct{n}"),
    };
    let (server, addr) = start_bench_serve(bin, work, &tag, opts.server_workers)?;
    let template = Template::new(root, shape)?;
    // One request first: the real pipeline must have decided and recorded the event.
    let (status, body) = bench_load::probe(addr, &template)?;
    if status != 200 || !body.contains("\"reports\":[{") || !body.contains("would rotate") {
        bail!("the probe request was not handled by the real pipeline: {status} {}", &body[..body.len().min(400)]);
    }
    let (runs, warmup, duration) = if opts.quick {
        (1, Duration::from_secs(1), Duration::from_secs(3))
    } else {
        (3, Duration::from_secs(2), Duration::from_secs(8))
    };
    let mut eps = Vec::new();
    let mut results = Vec::new();
    // The server's CPU per event over all runs (their warm-ups included, on both sides).
    let (cpu0, events0) = (cpu_time(server.0.id())?, events_handled(addr)?);
    let watch = MemPeak::watch(server.0.id());
    for run in 0..runs {
        let spec = LoadSpec { addr, shape, connections, warmup, duration, run: run + 1 };
        let r = bench_load::run(&spec, &template)?;
        eprintln!("   run {}: {} (load {})", run + 1, r.summary(), loadavg());
        if r.requests == 0 {
            bail!("no request succeeded: {}", r.first_error.unwrap_or_default());
        }
        eps.push(r.events_per_s());
        results.push(r);
    }
    let (cpu1, events1) = (cpu_time(server.0.id())?, events_handled(addr)?);
    let cpu_per_event = (cpu1 - cpu0).as_secs_f64() * 1e6 / (events1 - events0).max(1) as f64;
    let mem = watch.finish(server.0.id());
    let rss = vm_hwm_kb(server.0.id())?;
    drop(server);
    let m = median(&mut eps);
    let mid = results.iter().min_by(|a, b| (a.events_per_s() - m).abs().total_cmp(&(b.events_per_s() - m).abs()));
    let lat = mid
        .map(|r| {
            format!(
                "; {:.0} req/s, latency p50 {:.1} ms / p99 {:.1} ms; {} errors, {} events answered fail-safe (policy failed)",
                r.req_per_s(),
                r.latency_ms(0.5),
                r.latency_ms(0.99),
                results.iter().map(|r| r.errors).sum::<u64>(),
                results.iter().map(|r| r.degraded).sum::<u64>()
            )
        })
        .unwrap_or_default();
    let note = format!(
        "{connections} keep-alive connections, {runs} run(s) × {} s after {} s warm-up, monitor mode, default policy, SQLite ledger; server CPU {cpu_per_event:.0} µs/event{lat}",
        duration.as_secs(),
        warmup.as_secs()
    );
    Ok((
        Row::new(
            &format!("throughput: {}", shape.label()),
            "≥ 20,000 events/s",
            format!("{m:.0} events/s"),
            Some(m >= 20_000.0),
            note,
        ),
        (rss, mem),
    ))
}

/// One HTTP/1.1 request on a fresh connection; returns the status code and body.
fn http_once(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Sim {
    _proc: Proc,
    info: serde_json::Value,
}

fn start_azsim(root: &Path, bin: &Path, work: &Path) -> anyhow::Result<Sim> {
    let ca = work.join("azsim-ca.pem");
    let mut child = Command::new(bin.join("azsim"))
        .arg("--scenario")
        .arg(root.join("azsim/scenarios/demo.json"))
        .arg("--write-ca")
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting azsim")?;
    let stdout = child.stdout.take().context("azsim stdout")?;
    let proc = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let info: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("azsim printed {line:?}"))?;
    let profile = serde_json::json!({
        "name": "azsim",
        "armEndpoint": info["armEndpoint"],
        "keyVaultSuffix": info["vaultSuffix"],
        "managedHsmSuffix": info["hsmSuffix"],
        "armAudience": info["armAudience"],
        "keyVaultAudience": info["vaultAudience"],
        "managedHsmAudience": format!("https://{}", info["hsmSuffix"].as_str().unwrap_or_default()),
        "authorityHost": "https://login.azsim.test",
        "identityEndpoint": info["identityEndpoint"],
        "port": info["port"],
        "test": {"extraCaPemFile": ca, "resolveToLoopback": true}
    });
    std::fs::write(work.join("azsim-profile.json"), serde_json::to_vec_pretty(&profile)?)?;
    Ok(Sim { _proc: proc, info })
}

/// Process start → `GET /` answers 200, and → the first event answered, `cmkguard serve`
/// against azsim (managed identity, cloud profile), with the policy precompiled.
///
/// `COLD_START_BASELINE=/path/to/an/older/cmkguard` measures that binary too, its starts
/// alternating with the current one's in the same run (a before/after on a busy machine).
fn cold_start(root: &Path, bin: &Path, work: &Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    let sim = start_azsim(root, bin, work)?;
    let n = if quick { 5 } else { 20 };
    let mut bins = vec![("", bin.join("cmkguard"))];
    if let Some(old) = std::env::var_os("COLD_START_BASELINE") {
        bins.push(("baseline ", PathBuf::from(old)));
    }
    let mut samples = vec![(Vec::new(), Vec::new()); bins.len()];
    // Iteration 0 fills the precompiled-policy cache and is not counted.
    for i in 0..=n {
        for (b, (_, exe)) in bins.iter().enumerate() {
            let (t_ready, t_first) = cold_start_once(exe, &sim, work, i)?;
            if i > 0 {
                samples[b].0.push(t_ready.as_secs_f64() * 1000.0);
                samples[b].1.push(t_first.as_secs_f64() * 1000.0);
            }
        }
    }
    let note = format!(
        "median of {n} starts of `cmkguard serve` (precompiled default policy, SQLite ledger, cloud profile and managed identity from a local azsim process); polled every 0.5 ms"
    );
    let mut rows = Vec::new();
    for ((label, exe), (mut ready, mut first)) in bins.iter().zip(samples) {
        let (r, f) = (median(&mut ready), median(&mut first));
        let note = if label.is_empty() {
            note.clone()
        } else {
            format!("{note}; {}, starts alternating with the current binary's", exe.display())
        };
        rows.push(Row::new(
            &format!("{label}cold start → ready on GET /"),
            "≤ 30 ms",
            format!("{r:.1} ms"),
            Some(r <= 30.0),
            note.clone(),
        ));
        rows.push(Row::new(
            &format!("{label}cold start → first event answered"),
            "≤ 50 ms",
            format!("{f:.1} ms"),
            Some(f <= 50.0),
            format!("{note}; the event: a registry write (token, ARM GET over TLS, policy, ledger)"),
        ));
    }
    Ok(rows)
}

/// One start of `exe serve`: (process start → ready, process start → first event answered).
fn cold_start_once(exe: &Path, sim: &Sim, work: &Path, i: usize) -> anyhow::Result<(Duration, Duration)> {
    let key = "bench-cold-start-key-0123456789";
    let registry = "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-registries/providers/Microsoft.ContainerRegistry/registries/acrnocmk";
    let port = free_port()?;
    let ledger = work.join("cold-ledger.db");
    let t0 = Instant::now();
    let child = Command::new(exe)
        .arg("serve")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("CMKGUARD_LEDGER", format!("sqlite:{}", ledger.display()))
        .env("CMKGUARD_POLICY_CACHE_DIR", work.join("policy-cache"))
        .env("CMKGUARD_CLOUD", work.join("azsim-profile.json"))
        .env("CMKGUARD_WEBHOOK_KEY", key)
        .env("CMKGUARD_LOG", "warn")
        .env("IDENTITY_ENDPOINT", sim.info["identityEndpoint"].as_str().unwrap_or_default())
        .env("IDENTITY_HEADER", sim.info["identityHeader"].as_str().unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} serve", exe.display()))?;
    let mut proc = Proc(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let get = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let t_ready = loop {
        if let Ok((200, _)) = http_once(addr, get.as_bytes()) {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("cmkguard serve was not ready within 30 s");
        }
        if let Some(status) = proc.0.try_wait()? {
            bail!("cmkguard serve exited before it was ready ({status})");
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let event = serde_json::json!([{
        "id": format!("cold-start-{}-{i}-{}", std::process::id(), t0.elapsed().as_nanos()),
        "topic": "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590",
        "subject": registry,
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": "2026-11-23T12:00:00Z",
        "dataVersion": "2",
        "metadataVersion": "1",
        "data": {"operationName": "Microsoft.ContainerRegistry/registries/write", "resourceUri": registry, "status": "Succeeded"}
    }])
    .to_string();
    let post = format!(
        "POST /api/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nx-cmkguard-key: {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{event}",
        event.len()
    );
    let (status, body) = http_once(addr, post.as_bytes())?;
    let t_first = t0.elapsed();
    if status != 200 || !body.contains("CMK001") {
        bail!("the first event was not handled: {status} {}", &body[..body.len().min(400)]);
    }
    drop(proc);
    Ok((t_ready, t_first))
}

fn sweep(root: &Path, quick: bool) -> anyhow::Result<Row> {
    let runs = if quick { 1 } else { 3 };
    let out = cargo()
        .current_dir(root)
        .args(["bench", "--locked", "-p", "cmkguard", "--bench", "sweep"])
        .env("SWEEP_REGISTRIES", "10000")
        .env("SWEEP_RUNS", runs.to_string())
        // The shipped sweep only, not the bench's earlier per-registry baseline.
        .env("SWEEP_BASELINE", "0")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench --bench sweep")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in text.lines() {
        eprintln!("   {l}");
    }
    if !out.status.success() {
        bail!("the sweep bench failed");
    }
    let s = number_after(&text, "sweep median: ")
        .or_else(|| number_after(&text, "median: "))
        .context("no median in the sweep bench output")?;
    Ok(Row::new(
        "sweep of 10,000 registries (azsim, monitor)",
        "≤ 5 s",
        format!("{s:.2} s"),
        Some(s <= 5.0),
        format!("`cargo bench -p cmkguard --bench sweep`, median of {runs} run(s); azsim in the same process"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_the_tools_output() {
        let policy = "cmkguard-default 1.0.0: 5000 evaluations, fresh sandbox each, 10 registries: p50 118.3 µs, p99 201.0 µs, max 900.0 µs";
        assert_eq!(number_after(policy, "p50 "), Some(118.3));
        assert_eq!(number_after(policy, "p99 "), Some(201.0));
        assert_eq!(number_after("run 0: …\nmedian: 7.17 s over 3 runs\n", "median: "), Some(7.17));
        assert_eq!(number_after("nothing", "p50 "), None);
    }

    #[test]
    fn markdown_marks_missed_targets() {
        let rows = vec![
            Row::new("a", "≤ 1", "2".into(), Some(false), String::new()),
            Row::new("b", "≤ 1", "1".into(), Some(true), "n".into()),
        ];
        let md = render_markdown(&rows);
        assert!(md.contains("| a | ≤ 1 | 2 | **no** |  |"), "{md}");
        assert!(md.contains("| b | ≤ 1 | 1 | yes | n |"), "{md}");
    }
}

//! `cmkguard audit list|show`: reads the audit trail from the configured ledger
//! (`CMKGUARD_LEDGER`: `sqlite:PATH` or a Blob container URL) as a table or JSON.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use chrono::{DateTime, Utc};
use cmkguard_ledger::{ActionStatus, AuditRecord, Decided, ListQuery};

use super::{CliError, exit};
use crate::config::{Config, Settings};

#[derive(Debug, clap::Args)]
#[command(long_about = "Read the audit trail: one record per event, with the policy (name, version, \
digest) that decided, its decision, and every action's outcome.\n\n\
The ledger comes from --ledger / CMKGUARD_LEDGER (sqlite:PATH, or an Azure Blob container URL \
read with the managed identity or developer credentials).")]
pub struct Args {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List records, newest first.
    List {
        /// Only records written since then: RFC 3339 (`2026-11-01T00:00:00Z`) or an age
        /// (`90m`, `24h`, `7d`).
        #[arg(long, value_parser = parse_since)]
        since: Option<Since>,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Show one event's record in full.
    Show {
        /// The event id (as Event Grid sent it).
        event_id: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        settings: Box<Settings>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `--since`: a point in time or an age relative to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    At(DateTime<Utc>),
    Ago(chrono::Duration),
}

impl Since {
    fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Since::At(t) => t,
            Since::Ago(d) => now - d,
        }
    }
}

/// Parses `--since`: RFC 3339, or a whole number followed by `s`, `m`, `h` or `d`.
pub fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Since::At(t.with_timezone(&Utc)));
    }
    let bad = || format!("{s:?} is neither an RFC 3339 time (2026-11-01T00:00:00Z) nor an age like 90m, 24h or 7d");
    let unit_at = s.len().checked_sub(1).filter(|&i| s.is_char_boundary(i)).ok_or_else(bad)?;
    let (n, unit) = s.split_at(unit_at);
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|&s| s <= 100 * 365 * 86_400)
    .ok_or_else(bad)?;
    Ok(Since::Ago(chrono::Duration::seconds(secs)))
}

pub async fn run(args: Args) -> Result<u8, CliError> {
    let settings = match &args.command {
        AuditCommand::List { settings, .. } | AuditCommand::Show { settings, .. } => (**settings).clone(),
    };
    let config = Config::from_settings(settings, |k| std::env::var(k).ok()).map_err(CliError::bad_input)?;
    let credential = ledger_credential(&config)?;
    let ledger = cmkguard_ledger::open(&config.ledger, credential)
        .await
        .map_err(|e| CliError::bad_input(format!("cannot open the ledger: {e}")))?;
    let failed = |e: cmkguard_ledger::LedgerError| CliError { code: 1, message: format!("reading the ledger: {e}") };
    match args.command {
        AuditCommand::List { since, limit, output, .. } => {
            let query = ListQuery { since: since.map(|s| s.resolve(Utc::now())), limit: Some(limit) };
            let records = ledger.list(&query).await.map_err(failed)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&records).unwrap_or_default()),
                Output::Table => print!("{}", list_table(&records)),
            }
        }
        AuditCommand::Show { event_id, output, .. } => {
            let Some(record) = ledger.get(&event_id).await.map_err(failed)? else {
                return Err(CliError::bad_input(format!(
                    "no audit record for event {event_id:?} in {}",
                    ledger.backend()
                )));
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&record).unwrap_or_default()),
                Output::Table => print!("{}", show_table(&record)),
            }
        }
    }
    Ok(exit::OK)
}

/// The credential for a Blob ledger (`None` for SQLite): the same identity the Azure
/// clients use (managed identity under Functions, developer credentials locally).
pub fn ledger_credential(config: &Config) -> Result<Option<Arc<dyn TokenCredential>>, CliError> {
    if config.ledger.starts_with("sqlite:") {
        return Ok(None);
    }
    let profile = cmkguard_azure::CloudProfile::load(&config.azure.cloud).map_err(CliError::bad_input)?;
    let source = cmkguard_azure::credential::IdentitySource::from_environment(
        &profile,
        config.azure.client_id.as_deref(),
        |k| std::env::var(k).ok(),
        None,
    )
    .map_err(CliError::bad_input)?;
    Ok(Some(Arc::new(SourceCredential(Arc::new(source)))))
}

/// Presents a [`cmkguard_azure::TokenSource`] as the `TokenCredential` the Blob SDK takes.
pub struct SourceCredential(pub Arc<dyn cmkguard_azure::TokenSource>);

impl std::fmt::Debug for SourceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SourceCredential").field(&self.0.describe()).finish()
    }
}

#[async_trait::async_trait]
impl TokenCredential for SourceCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let audience = scopes.first().map(|s| s.trim_end_matches("/.default")).unwrap_or("https://storage.azure.com");
        let token =
            self.0.fetch(audience).await.map_err(|e| {
                azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, e.to_string())
            })?;
        let expires_on = azure_core::time::OffsetDateTime::from_unix_timestamp(token.expires_on.timestamp())
            .unwrap_or_else(|_| azure_core::time::OffsetDateTime::now_utc());
        Ok(azure_core::credentials::AccessToken::new(token.secret().to_owned(), expires_on))
    }
}

fn status_word(s: ActionStatus) -> &'static str {
    match s {
        ActionStatus::Done => "done",
        ActionStatus::WouldDo => "would-do",
        ActionStatus::Skipped => "skipped",
        ActionStatus::Pending => "pending",
        ActionStatus::Failed => "FAILED",
    }
}

/// `Microsoft.KeyVault.KeyNearExpiry` → `KeyVault.KeyNearExpiry`.
fn short_type(t: &str) -> &str {
    t.strip_prefix("Microsoft.").unwrap_or(t)
}

/// The last path segment of a resource id (the registry or key name), else the whole.
fn short_name(s: &str) -> &str {
    s.trim_end_matches('/').rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or(s)
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_owned() } else { s.chars().take(max - 1).chain(['…']).collect() }
}

fn decision_summary(r: &AuditRecord) -> String {
    match &r.decided {
        Decided::Decision { decision, .. } => match decision.max_severity() {
            Some(sev) => format!("{} finding(s), max {sev}", decision.findings.len()),
            None => "compliant".to_owned(),
        },
        Decided::PolicyError { error, .. } => format!("policy error: {}", clip(error, 40)),
    }
}

fn actions_summary(r: &AuditRecord) -> String {
    if r.actions.is_empty() {
        return "-".to_owned();
    }
    r.actions.iter().map(|a| format!("{} {}", a.action, status_word(a.status))).collect::<Vec<_>>().join(", ")
}

/// Lays rows out in columns (the last column is not padded).
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..n).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list_table(records: &[AuditRecord]) -> String {
    if records.is_empty() {
        return "no audit records\n".to_owned();
    }
    let mut rows = vec![
        ["RECORDED (UTC)", "EVENT ID", "TYPE", "SUBJECT", "MODE", "DECISION", "ACTIONS"].map(String::from).to_vec(),
    ];
    for r in records {
        rows.push(vec![
            r.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            clip(&r.event_id, 38),
            short_type(&r.event_type).to_owned(),
            clip(short_name(&r.subject), 30),
            r.mode.clone(),
            decision_summary(r),
            actions_summary(r),
        ]);
    }
    columns(&rows)
}

fn show_table(r: &AuditRecord) -> String {
    let policy = match r.policy() {
        Some(p) => format!("{} {} (sha256 {})", p.name, p.version, p.digest),
        None => "unknown".to_owned(),
    };
    let field = |k: &str, v: String| vec![k.to_owned(), v];
    let mut out = columns(&[
        field("event id", r.event_id.clone()),
        field("type", r.event_type.clone()),
        field("subject", r.subject.clone()),
        field("event time", r.event_time.to_rfc3339()),
        field("recorded", r.recorded_at.to_rfc3339()),
        field("mode", r.mode.clone()),
        field("policy", policy),
        field("decision", decision_summary(r)),
    ]);
    match &r.decided {
        Decided::Decision { decision, .. } if !decision.findings.is_empty() => {
            out.push_str("\nfindings:\n");
            let rows: Vec<Vec<String>> = decision
                .findings
                .iter()
                .map(|f| vec![format!("  {}", f.severity), f.rule_id.clone(), f.resource.clone(), f.message.clone()])
                .collect();
            out.push_str(&columns(&rows));
        }
        Decided::PolicyError { error, .. } => out.push_str(&format!("\npolicy error:\n  {error}\n")),
        _ => {}
    }
    if !r.actions.is_empty() {
        out.push_str("\nactions:\n");
        let rows: Vec<Vec<String>> = r
            .actions
            .iter()
            .map(|a| {
                vec![format!("  {}", a.action), status_word(a.status).to_owned(), a.target.clone(), a.detail.clone()]
            })
            .collect();
        out.push_str(&columns(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmkguard_ledger::{ActionOutcome, PolicyRef};
    use cmkguard_model::{Decision, Finding, Severity};
    use proptest::prelude::*;

    fn sample() -> AuditRecord {
        AuditRecord {
            event_id: "6f1c0a36-3c5e-4c55-9a2b-1d2f3e4a5b6c".into(),
            event_type: "Microsoft.KeyVault.KeyNearExpiry".into(),
            subject: "cmk-key".into(),
            event_time: "2026-11-01T08:00:00Z".parse().unwrap(),
            recorded_at: "2026-11-01T08:00:01Z".parse().unwrap(),
            mode: "enforce".into(),
            decided: Decided::Decision {
                policy: PolicyRef { name: "default".into(), version: "1.0.0".into(), digest: "ab".repeat(32) },
                decision: Decision {
                    findings: vec![Finding {
                        rule_id: "CMK010".into(),
                        severity: Severity::High,
                        resource: "https://v.vault.azure.net/keys/cmk-key".into(),
                        message: "key expires in 10 days".into(),
                    }],
                    actions: vec![],
                },
            },
            actions: vec![ActionOutcome {
                action: "notify".into(),
                target: "ops".into(),
                status: ActionStatus::Done,
                detail: "sent".into(),
            }],
        }
    }

    #[test]
    fn since_accepts_times_and_ages_and_names_bad_input() {
        assert_eq!(parse_since("7d").unwrap(), Since::Ago(chrono::Duration::days(7)));
        assert_eq!(parse_since("90m").unwrap(), Since::Ago(chrono::Duration::minutes(90)));
        assert_eq!(parse_since("2026-11-01T00:00:00Z").unwrap(), Since::At("2026-11-01T00:00:00Z".parse().unwrap()));
        for bad in ["", "d", "7w", "-1d", "1.5h", "yesterday", "99999999999999d"] {
            let e = parse_since(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    proptest! {
        /// Any input parses or is refused with a message; ages round-trip.
        #[test]
        fn since_never_panics(s in "\\PC{0,30}") {
            let _ = parse_since(&s);
        }

        #[test]
        fn ages_parse_to_their_value(n in 0i64..36_000, unit in prop::sample::select(vec![("s", 1i64), ("m", 60), ("h", 3600), ("d", 86_400)])) {
            prop_assert_eq!(parse_since(&format!("{n}{}", unit.0)).unwrap(), Since::Ago(chrono::Duration::seconds(n * unit.1)));
        }
    }

    #[test]
    fn list_table_has_one_row_per_record_with_the_essentials() {
        let t = list_table(&[sample()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("RECORDED (UTC)"), "{t}");
        for needle in
            ["2026-11-01 08:00:01", "KeyVault.KeyNearExpiry", "enforce", "1 finding(s), max high", "notify done"]
        {
            assert!(lines[1].contains(needle), "{needle} missing: {t}");
        }
        assert_eq!(list_table(&[]), "no audit records\n");
    }

    #[test]
    fn show_table_lists_policy_findings_and_actions() {
        let t = show_table(&sample());
        for needle in ["default 1.0.0 (sha256 abab", "CMK010", "key expires in 10 days", "notify", "sent"] {
            assert!(t.contains(needle), "{needle} missing: {t}");
        }
        let mut failed = sample();
        failed.decided = Decided::PolicyError { policy: None, error: "wasm trap: unreachable".into() };
        assert!(show_table(&failed).contains("policy error:\n  wasm trap: unreachable"));
    }

    #[tokio::test]
    async fn list_and_show_read_a_sqlite_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("l.db").display());
        let ledger = cmkguard_ledger::open(&url, None).await.unwrap();
        ledger.record(&sample()).await.unwrap();
        drop(ledger);
        let parse = |args: &[&str]| {
            use clap::Parser;
            #[derive(clap::Parser)]
            struct T {
                #[command(flatten)]
                a: Args,
            }
            T::try_parse_from(std::iter::once("audit").chain(args.iter().copied())).unwrap().a
        };
        let ok = run(parse(&["list", "--ledger", &url, "--since", "3650d", "--output", "json"])).await.unwrap();
        assert_eq!(ok, exit::OK);
        let ok = run(parse(&["show", "6f1c0a36-3c5e-4c55-9a2b-1d2f3e4a5b6c", "--ledger", &url])).await.unwrap();
        assert_eq!(ok, exit::OK);
        let missing = run(parse(&["show", "nope", "--ledger", &url])).await.unwrap_err();
        assert_eq!(missing.code, exit::BAD_INPUT);
        assert!(missing.message.contains("nope"), "{}", missing.message);
    }
}

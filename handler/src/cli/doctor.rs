//! `cmkguard doctor`: a post-deployment check an operator runs (locally or in the app's
//! console) with the app's settings: configuration valid, a token per audience, ARM read
//! on the watched scope, a Resource Graph query, a read of each key, the write
//! permissions enforce mode needs (asked of the permissions API; nothing is changed) and
//! the chat channels. Prints a pass/fail table with the fix for each failure; exits 0
//! when nothing failed, 1 otherwise.

use std::time::Duration;

use cmkguard_azure::doctor::{self, Check, DoctorInput, Status};
use cmkguard_model::KeyId;

use super::{CliError, exit};
use crate::config::{Config, Mode, Settings};

#[derive(Debug, clap::Args)]
#[command(long_about = "Check a deployment: configuration, identity, Azure permissions and chat channels.\n\n\
Uses the same settings (flags / app settings) as `serve`. Changes nothing in Azure. \
Exit code 0 when every check passed or was skipped, 1 when one failed.")]
pub struct Args {
    #[command(flatten)]
    pub settings: Settings,

    /// Key ids to read (repeatable) [default: every key the registries in scope use].
    #[arg(long = "key")]
    pub keys: Vec<String>,

    /// Seconds each check may take.
    #[arg(long, default_value_t = 20)]
    pub check_timeout_secs: u64,

    /// Print the checks as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: Args) -> Result<u8, CliError> {
    let checks = checks(args.settings, &args.keys, Duration::from_secs(args.check_timeout_secs.max(1)), |k| {
        std::env::var(k).ok()
    })
    .await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks).map_err(CliError::bad_input)?);
    } else {
        print!("{}", doctor::render(&checks));
    }
    Ok(if checks.iter().any(|c| c.status == Status::Fail) { exit::FINDINGS } else { exit::OK })
}

/// Every check, in order. `env` looks up environment variables (per-channel secrets,
/// credentials).
pub async fn checks(
    settings: Settings,
    keys: &[String],
    per_check: Duration,
    env: impl Fn(&str) -> Option<String> + Clone,
) -> Vec<Check> {
    let mut out = Vec::new();
    let config = match Config::from_settings(settings, env.clone()) {
        Ok(c) => {
            out.push(Check::pass(
                "configuration",
                format!("valid ({} mode, cloud {})", c.mode.as_str(), c.azure.cloud),
            ));
            c
        }
        Err(e) => {
            out.push(Check::fail(
                "configuration",
                e.to_string(),
                "correct the setting named in the message (see `cmkguard serve --help`)",
            ));
            return out;
        }
    };

    let mut key_ids = Vec::new();
    for k in keys {
        match KeyId::parse(k) {
            Ok(id) => key_ids.push(id),
            Err(e) => out.push(Check::fail(
                format!("key {k}"),
                e.to_string(),
                "pass key ids as https://<vault>.vault.azure.net/keys/<name>[/<version>]",
            )),
        }
    }

    match cmkguard_azure::AzureClients::from_settings(&crate::enrich::azure_settings(&config), env) {
        Ok(clients) => {
            out.push(Check::pass(
                "Azure clients",
                format!(
                    "cloud profile {:?}, credential: {}",
                    clients.http.profile().name,
                    clients.http.tokens().describe()
                ),
            ));
            let input = DoctorInput {
                subscriptions: config.azure.subscriptions.clone(),
                keys: key_ids,
                enforce: config.mode == Mode::Enforce,
                vault_key_rotation: config.mode == Mode::Enforce && config.enable_vault_key_rotation,
                per_check,
            };
            out.extend(doctor::run(&clients, &input).await);
        }
        Err(e) => out.push(Check::fail(
            "Azure clients",
            e.to_string(),
            "check CMKGUARD_CLOUD (public, usgov, china or a profile file) and the credential settings",
        )),
    }

    if config.channels.is_empty() {
        out.push(Check::fail(
            "chat channels",
            "none configured: notifications go nowhere",
            "set CMKGUARD_CHANNELS (e.g. ops=teams) and CMKGUARD_CHANNEL_OPS_URL (a Key Vault reference)",
        ));
    } else {
        // Names and kinds only: channel URLs are secrets.
        let list: Vec<String> =
            config.channels.iter().map(|c| format!("{}={:?}", c.name, c.kind).to_ascii_lowercase()).collect();
        out.push(Check::pass("chat channels", list.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: Settings,
    }

    fn settings(args: &[&str]) -> Settings {
        T::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap().s
    }

    #[tokio::test]
    async fn bad_configuration_is_the_only_row() {
        let checks = checks(settings(&["--subscriptions", "not a sub"]), &[], Duration::from_secs(1), |_| None).await;
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].detail.contains("CMKGUARD_SUBSCRIPTIONS"));
    }

    #[tokio::test]
    async fn unreadable_cloud_profile_and_missing_channels_fail_with_fixes() {
        let checks = checks(
            settings(&["--cloud", "/nonexistent/profile.json"]),
            &["not-a-key".into()],
            Duration::from_secs(1),
            |_| None,
        )
        .await;
        let by = |n: &str| checks.iter().find(|c| c.name.starts_with(n)).unwrap_or_else(|| panic!("{n}: {checks:?}"));
        assert_eq!(by("configuration").status, Status::Pass);
        assert_eq!(by("key not-a-key").status, Status::Fail);
        assert_eq!(by("Azure clients").status, Status::Fail);
        assert!(by("Azure clients").fix.as_deref().unwrap().contains("CMKGUARD_CLOUD"));
        assert_eq!(by("chat channels").status, Status::Fail);
    }

    #[tokio::test]
    async fn channels_are_listed_without_urls() {
        let env = |k: &str| {
            (k == "CMKGUARD_CHANNEL_OPS_URL").then(|| "https://example.webhook.office.com/secret-token".to_owned())
        };
        let checks = checks(
            settings(&["--channels", "ops=teams", "--cloud", "/nonexistent.json"]),
            &[],
            Duration::from_secs(1),
            env,
        )
        .await;
        let ch = checks.iter().find(|c| c.name == "chat channels").unwrap();
        assert_eq!(ch.status, Status::Pass);
        assert!(ch.detail.contains("ops=teams"));
        assert!(!format!("{checks:?}").contains("secret-token"));
    }
}

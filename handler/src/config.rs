//! All settings, read once at start from flags and environment (app settings under
//! Azure Functions), validated into one [`Config`] with messages that name the setting.
//!
//! Every setting has an environment variable; [`Settings`] is the clap view (so
//! `--help` documents each one) and [`Config`] the validated result. The list of
//! variables is introspectable ([`setting_names`]) so tests can check that the ARM
//! templates set only settings that exist.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, ValueEnum};

/// Whether cmkguard may change Azure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide and record what *would* be done; change nothing in Azure (the default).
    Monitor,
    /// Carry remediations out.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON lines (the default under Azure Functions).
    Json,
    /// Human-readable lines (the default elsewhere).
    Text,
}

/// Settings shared by every command that runs the pipeline. Each flag can also be
/// given as the environment variable shown (an app setting under Azure Functions).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Port to listen on (127.0.0.1). The Functions host sets FUNCTIONS_CUSTOMHANDLER_PORT.
    #[arg(long, env = "FUNCTIONS_CUSTOMHANDLER_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to bind. Under Functions only loopback is needed; a container may use 0.0.0.0.
    #[arg(long, env = "CMKGUARD_BIND", default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,

    /// monitor: record what would be done, change nothing. enforce: remediate.
    #[arg(long, env = "CMKGUARD_MODE", value_enum, default_value_t = Mode::Monitor)]
    pub mode: Mode,

    /// Log format [default: json under Azure Functions, text otherwise].
    #[arg(long, env = "CMKGUARD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `cmkguard=debug,info`.
    #[arg(long, env = "CMKGUARD_LOG", default_value = "info")]
    pub log: String,

    /// Largest request body accepted, in bytes (larger → 413). The default fits Event Grid's
    /// 1 MB events and batches even after the Functions host string-encodes them.
    #[arg(long, env = "CMKGUARD_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Key that direct-webhook mode (`POST /api/events`) requires, in the `x-cmkguard-key`
    /// header or the `code` query parameter. Without it direct mode answers 503 (disabled).
    /// At least 16 characters. Keep it in Key Vault (app setting as a Key Vault reference).
    #[arg(long, env = "CMKGUARD_WEBHOOK_KEY", hide_env_values = true)]
    pub webhook_key: Option<String>,

    /// Policy module: a file path or an https URL (then --policy-sha256 is required).
    /// Default: the embedded default policy.
    #[arg(long, env = "CMKGUARD_POLICY")]
    pub policy: Option<String>,

    /// Expected sha256 (hex) of the policy module; a mismatch refuses the module.
    #[arg(long, env = "CMKGUARD_POLICY_SHA256")]
    pub policy_sha256: Option<String>,

    /// https URL of a policy manifest `{"url": "...", "sha256": "..."}` re-checked for hot reload.
    #[arg(long, env = "CMKGUARD_POLICY_MANIFEST")]
    pub policy_manifest: Option<String>,

    /// The policy's own settings as a JSON object (validated by the policy).
    #[arg(long, env = "CMKGUARD_POLICY_SETTINGS", default_value = "{}")]
    pub policy_settings: String,

    /// Directory for precompiled policy artifacts [default: a cmkguard folder in the temp dir].
    #[arg(long, env = "CMKGUARD_POLICY_CACHE_DIR")]
    pub policy_cache_dir: Option<PathBuf>,

    /// Wall-clock limit for one policy evaluation, in milliseconds.
    #[arg(long, env = "CMKGUARD_POLICY_TIMEOUT_MS", default_value_t = 50)]
    pub policy_timeout_ms: u64,

    /// How often the policy source is re-checked for hot reload, in seconds (0 = never).
    #[arg(long, env = "CMKGUARD_POLICY_RELOAD_SECS", default_value_t = 30)]
    pub policy_reload_secs: u64,

    /// Azure cloud: `public`, `usgov`, `china`, or a path to a cloud-profile JSON file.
    #[arg(long, env = "CMKGUARD_CLOUD", default_value = "public")]
    pub cloud: String,

    /// Client id of the user-assigned managed identity to authenticate with.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub azure_client_id: Option<String>,

    /// Subscriptions in scope for sweeps and Resource Graph queries (comma-separated ids).
    #[arg(long, env = "CMKGUARD_SUBSCRIPTIONS", value_delimiter = ',')]
    pub subscriptions: Vec<String>,

    /// Time budget for Azure calls within one invocation, in seconds (retries included).
    #[arg(long, env = "CMKGUARD_AZURE_BUDGET_SECS", default_value_t = 25)]
    pub azure_budget_secs: u64,

    /// Ledger location: `sqlite:PATH` or an Azure Blob container URL
    /// (`https://ACCOUNT.blob.core.windows.net/CONTAINER`).
    #[arg(long, env = "CMKGUARD_LEDGER", default_value = "sqlite:cmkguard-ledger.db")]
    pub ledger: String,

    /// Audit records older than this many days are pruned.
    #[arg(long, env = "CMKGUARD_RETENTION_DAYS", default_value_t = 400)]
    pub retention_days: u32,

    /// How long one invocation holds an event's claim, in seconds. A redelivery of an event
    /// whose handler died (crash, SIGKILL, scale-in) is answered "in progress" (retryable)
    /// until the claim lapses. Must exceed the longest invocation: at least twice the Azure
    /// budget plus 30 s (notification retries).
    #[arg(long, env = "CMKGUARD_CLAIM_TTL_SECS", default_value_t = 300)]
    pub claim_ttl_secs: u64,

    /// Chat channels as `name=kind` pairs (kind: teams, slack, webhook), comma-separated.
    /// Each channel's URL comes from CMKGUARD_CHANNEL_<NAME>_URL (a secret), and a
    /// webhook channel's signing key from CMKGUARD_CHANNEL_<NAME>_SECRET.
    #[arg(long, env = "CMKGUARD_CHANNELS", value_delimiter = ',')]
    pub channels: Vec<String>,

    /// Window within which the same notification (rule, resource, key version) is sent once, in hours.
    #[arg(long, env = "CMKGUARD_NOTIFY_DEDUPE_HOURS", default_value_t = 24)]
    pub notify_dedupe_hours: u64,

    /// Allow the `rotate-vault-key` action (changes a key other services may use).
    #[arg(long, env = "CMKGUARD_ENABLE_VAULT_KEY_ROTATION", default_value_t = false)]
    pub enable_vault_key_rotation: bool,
}

/// Why the settings were refused. Every message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {message}")]
    Invalid { setting: &'static str, message: String },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, message: message.into() }
}

/// A chat channel as configured (URL kept secret: never printed by `Debug`).
#[derive(Clone)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub url: String,
    pub secret: Option<String>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Teams,
    Slack,
    Webhook,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub mode: Mode,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub max_body_bytes: usize,
    pub webhook_key: Option<Secret>,
    pub policy: PolicyConfig,
    pub azure: AzureConfig,
    pub ledger: String,
    pub retention: Duration,
    pub channels: Vec<Channel>,
    pub notify_dedupe: Duration,
    pub enable_vault_key_rotation: bool,
    /// How long an invocation holds an event's claim (CMKGUARD_CLAIM_TTL_SECS).
    pub claim_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// `None`: the embedded default policy.
    pub source: Option<String>,
    pub sha256: Option<String>,
    pub manifest: Option<String>,
    pub settings: String,
    pub cache_dir: PathBuf,
    pub timeout: Duration,
    pub reload_every: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub cloud: String,
    pub client_id: Option<String>,
    pub subscriptions: Vec<String>,
    pub budget: Duration,
}

/// A secret string: compared in constant time, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison (the length may leak; the content does not).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// True when the process runs under the Azure Functions host.
pub fn under_functions_host() -> bool {
    std::env::var_os("FUNCTIONS_CUSTOMHANDLER_WORKER_ID").is_some()
        || std::env::var_os("FUNCTIONS_WORKER_RUNTIME").is_some()
}

impl Config {
    /// Validates settings; `env` looks up variables not covered by flags (per-channel secrets).
    pub fn from_settings(s: Settings, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        if s.port == 0 {
            return Err(invalid("FUNCTIONS_CUSTOMHANDLER_PORT (--port)", "must be between 1 and 65535"));
        }
        if s.max_body_bytes < 1024 {
            return Err(invalid(
                "CMKGUARD_MAX_BODY_BYTES",
                format!("{} is too small (at least 1024 bytes)", s.max_body_bytes),
            ));
        }
        let webhook_key = match s.webhook_key.as_deref() {
            Some(k) if k.trim().len() < 16 => {
                return Err(invalid("CMKGUARD_WEBHOOK_KEY", "must be at least 16 characters"));
            }
            Some(k) => Some(Secret(k.trim().to_owned())),
            None => None,
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&s.log) {
            return Err(invalid("CMKGUARD_LOG", format!("{:?} is not a valid filter: {e}", s.log)));
        }
        let policy = policy_config(&s)?;
        for sub in &s.subscriptions {
            if sub.trim().is_empty() || !sub.trim().bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                return Err(invalid("CMKGUARD_SUBSCRIPTIONS", format!("{sub:?} is not a subscription id")));
            }
        }
        if !(1..=600).contains(&s.azure_budget_secs) {
            return Err(invalid("CMKGUARD_AZURE_BUDGET_SECS", "must be between 1 and 600 seconds"));
        }
        if !(s.ledger.starts_with("sqlite:")
            || s.ledger.starts_with("https://")
            || s.ledger.starts_with("http://127.0.0.1"))
        {
            return Err(invalid(
                "CMKGUARD_LEDGER",
                format!("{:?} is neither sqlite:PATH nor an https blob container URL", s.ledger),
            ));
        }
        if s.retention_days == 0 {
            return Err(invalid("CMKGUARD_RETENTION_DAYS", "must be at least 1"));
        }
        let min_claim = 2 * s.azure_budget_secs + 30;
        if !(min_claim..=86_400).contains(&s.claim_ttl_secs) {
            return Err(invalid(
                "CMKGUARD_CLAIM_TTL_SECS",
                format!(
                    "{} is out of range: at least twice CMKGUARD_AZURE_BUDGET_SECS plus 30 ({min_claim}), at most 86400",
                    s.claim_ttl_secs
                ),
            ));
        }
        let channels = channels(&s.channels, &env)?;
        Ok(Self {
            listen: SocketAddr::new(s.bind, s.port),
            mode: s.mode,
            log_format: s.log_format.unwrap_or(if under_functions_host() { LogFormat::Json } else { LogFormat::Text }),
            log_filter: s.log,
            max_body_bytes: s.max_body_bytes,
            webhook_key,
            policy,
            azure: AzureConfig {
                cloud: s.cloud,
                client_id: s.azure_client_id.filter(|c| !c.trim().is_empty()),
                subscriptions: s.subscriptions.into_iter().map(|x| x.trim().to_owned()).collect(),
                budget: Duration::from_secs(s.azure_budget_secs),
            },
            ledger: s.ledger,
            retention: Duration::from_secs(u64::from(s.retention_days) * 86_400),
            channels,
            notify_dedupe: Duration::from_secs(s.notify_dedupe_hours * 3600),
            enable_vault_key_rotation: s.enable_vault_key_rotation,
            claim_ttl: Duration::from_secs(s.claim_ttl_secs),
        })
    }
}

fn policy_config(s: &Settings) -> Result<PolicyConfig, ConfigError> {
    let source = s.policy.clone().filter(|p| !p.trim().is_empty());
    if let Some(src) = &source {
        if src.starts_with("http://") {
            return Err(invalid("CMKGUARD_POLICY", "a policy URL must use https"));
        }
        if src.starts_with("https://") && s.policy_sha256.is_none() {
            return Err(invalid(
                "CMKGUARD_POLICY_SHA256",
                "is required when CMKGUARD_POLICY is a URL (pin the module by digest)",
            ));
        }
    }
    if s.policy_sha256.as_ref().is_some_and(|d| d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(invalid("CMKGUARD_POLICY_SHA256", "must be 64 hex characters"));
    }
    if s.policy_manifest.as_ref().is_some_and(|m| !m.starts_with("https://")) {
        return Err(invalid("CMKGUARD_POLICY_MANIFEST", "must be an https URL"));
    }
    match serde_json::from_str::<serde_json::Value>(&s.policy_settings) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => return Err(invalid("CMKGUARD_POLICY_SETTINGS", "must be a JSON object")),
        Err(e) => return Err(invalid("CMKGUARD_POLICY_SETTINGS", format!("is not valid JSON: {e}"))),
    }
    if !(1..=10_000).contains(&s.policy_timeout_ms) {
        return Err(invalid("CMKGUARD_POLICY_TIMEOUT_MS", "must be between 1 and 10000"));
    }
    Ok(PolicyConfig {
        source,
        sha256: s.policy_sha256.as_ref().map(|d| d.to_ascii_lowercase()),
        manifest: s.policy_manifest.clone(),
        settings: s.policy_settings.clone(),
        cache_dir: s.policy_cache_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("cmkguard-policy-cache")),
        timeout: Duration::from_millis(s.policy_timeout_ms),
        reload_every: (s.policy_reload_secs > 0).then(|| Duration::from_secs(s.policy_reload_secs)),
    })
}

fn channels(specs: &[String], env: &impl Fn(&str) -> Option<String>) -> Result<Vec<Channel>, ConfigError> {
    let mut out: Vec<Channel> = Vec::new();
    for spec in specs.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (name, kind) = spec
            .split_once('=')
            .ok_or_else(|| invalid("CMKGUARD_CHANNELS", format!("{spec:?} is not name=kind (e.g. ops=teams)")))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(invalid(
                "CMKGUARD_CHANNELS",
                format!("channel name {name:?} may only use letters, digits, - and _"),
            ));
        }
        if out.iter().any(|c| c.name.eq_ignore_ascii_case(name)) {
            return Err(invalid("CMKGUARD_CHANNELS", format!("channel {name:?} is named twice")));
        }
        let kind = match kind.trim().to_ascii_lowercase().as_str() {
            "teams" => ChannelKind::Teams,
            "slack" => ChannelKind::Slack,
            "webhook" => ChannelKind::Webhook,
            other => {
                return Err(invalid(
                    "CMKGUARD_CHANNELS",
                    format!("channel {name:?} has unknown kind {other:?} (teams, slack or webhook)"),
                ));
            }
        };
        let var = channel_var(name, "URL");
        let url = env(&var)
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| invalid("CMKGUARD_CHANNELS", format!("channel {name:?} needs its URL in {var}")))?;
        if !url.starts_with("https://") && !url.starts_with("http://127.0.0.1") && !url.starts_with("http://localhost")
        {
            return Err(invalid("CMKGUARD_CHANNELS", format!("{var} must be an https URL")));
        }
        let secret = env(&channel_var(name, "SECRET")).filter(|s| !s.is_empty());
        if kind == ChannelKind::Webhook && secret.is_none() {
            return Err(invalid(
                "CMKGUARD_CHANNELS",
                format!("webhook channel {name:?} needs a signing key in {}", channel_var(name, "SECRET")),
            ));
        }
        out.push(Channel { name: name.to_owned(), kind, url: url.trim().to_owned(), secret });
    }
    Ok(out)
}

impl Config {
    /// Parses flags (as `cmkguard serve` takes them, without the program name) and
    /// validates them. Variables in the environment fill unset flags, as on the command line.
    pub fn from_args<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            settings: Settings,
        }
        let args = std::iter::once(std::ffi::OsString::from("cmkguard")).chain(args.into_iter().map(Into::into));
        let flags = <Flags as clap::Parser>::try_parse_from(args).map_err(|e| e.to_string())?;
        Self::from_settings(flags.settings, |k| std::env::var(k).ok()).map_err(|e| e.to_string())
    }
}

/// The environment variable holding a channel's URL (`what = "URL"`) or signing key (`"SECRET"`).
pub fn channel_var(name: &str, what: &str) -> String {
    format!("CMKGUARD_CHANNEL_{}_{what}", name.to_ascii_uppercase().replace('-', "_"))
}

/// Every environment variable the settings read (for template consistency checks);
/// per-channel variables follow the pattern of [`channel_var`].
pub fn setting_names() -> Vec<String> {
    #[derive(clap::Parser)]
    struct Probe {
        #[command(flatten)]
        settings: Settings,
    }
    Probe::command().get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
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

    fn parse(args: &[&str]) -> Settings {
        T::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap().s
    }

    #[test]
    fn defaults_are_safe() {
        let c = Config::from_settings(parse(&[]), |_| None).unwrap();
        assert_eq!(c.mode, Mode::Monitor);
        assert!(c.webhook_key.is_none());
        assert!(!c.enable_vault_key_rotation);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.claim_ttl, Duration::from_secs(300));
        let short = Config::from_settings(parse(&["--azure-budget-secs", "5", "--claim-ttl-secs", "40"]), |_| None);
        assert_eq!(short.unwrap().claim_ttl, Duration::from_secs(40));
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--webhook-key", "short"], "CMKGUARD_WEBHOOK_KEY"),
            (&["--policy", "https://x/p.wasm"], "CMKGUARD_POLICY_SHA256"),
            (&["--policy-sha256", "abc"], "CMKGUARD_POLICY_SHA256"),
            (&["--policy-settings", "[1]"], "CMKGUARD_POLICY_SETTINGS"),
            (&["--policy-settings", "{"], "CMKGUARD_POLICY_SETTINGS"),
            (&["--subscriptions", "not a sub"], "CMKGUARD_SUBSCRIPTIONS"),
            (&["--ledger", "postgres://x"], "CMKGUARD_LEDGER"),
            (&["--channels", "ops"], "CMKGUARD_CHANNELS"),
            (&["--channels", "ops=pager"], "CMKGUARD_CHANNELS"),
            (&["--channels", "ops=teams"], "CMKGUARD_CHANNEL_OPS_URL"),
            (&["--log", "=[bad"], "CMKGUARD_LOG"),
            (&["--max-body-bytes", "10"], "CMKGUARD_MAX_BODY_BYTES"),
            (&["--claim-ttl-secs", "59"], "CMKGUARD_CLAIM_TTL_SECS"),
            (&["--azure-budget-secs", "5", "--claim-ttl-secs", "39"], "CMKGUARD_CLAIM_TTL_SECS"),
        ];
        for (args, needle) in cases {
            let err = Config::from_settings(parse(args), |_| None).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn channels_read_their_secrets_and_never_print_them() {
        let env = |k: &str| match k {
            "CMKGUARD_CHANNEL_OPS_URL" => Some("https://example.webhook.office.com/secret-token".to_owned()),
            "CMKGUARD_CHANNEL_HOOK_URL" => Some("https://hooks.example/x".to_owned()),
            "CMKGUARD_CHANNEL_HOOK_SECRET" => Some("s3cr3t".to_owned()),
            _ => None,
        };
        let c = Config::from_settings(parse(&["--channels", "ops=teams,hook=webhook"]), env).unwrap();
        assert_eq!(c.channels.len(), 2);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret-token") && !dbg.contains("s3cr3t"), "{dbg}");
    }

    #[test]
    fn setting_names_cover_the_app_settings() {
        let names = setting_names();
        for n in [
            "FUNCTIONS_CUSTOMHANDLER_PORT",
            "CMKGUARD_MODE",
            "CMKGUARD_WEBHOOK_KEY",
            "AZURE_CLIENT_ID",
            "CMKGUARD_LEDGER",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn secret_compares_exactly() {
        let s = Secret::new("0123456789abcdef".into());
        assert!(s.matches(b"0123456789abcdef"));
        assert!(!s.matches(b"0123456789abcdeF"));
        assert!(!s.matches(b"0123456789abcde"));
    }
}

//! Named chat channels, as configured. Policies refer to a channel by name only; the
//! host maps its settings (`CMKGUARD_CHANNELS`, `CMKGUARD_CHANNEL_<NAME>_URL`,
//! `CMKGUARD_CHANNEL_<NAME>_SECRET`) into [`ChannelConfig`]s and looks names up in
//! [`Channels`]. An unknown name is a [`ChannelError::Unknown`] the caller records.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::redact::{SecretUrl, UrlError};

/// What a channel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Teams Workflows ("Post to a channel when a webhook request is received") or a
    /// legacy incoming webhook: a `message` with an Adaptive Card attachment.
    Teams,
    /// Slack incoming webhook: Block Kit blocks plus a plain-text fallback.
    Slack,
    /// Any HTTP receiver: a CloudEvent 1.0 (structured JSON), HMAC-SHA256 signed.
    Webhook,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 3] = [Self::Teams, Self::Slack, Self::Webhook];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Teams => "teams",
            Self::Slack => "slack",
            Self::Webhook => "webhook",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ChannelKind {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, ChannelError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ChannelError::UnknownKind(s.trim().chars().take(40).collect()))
    }
}

/// A webhook channel's HMAC key (the bytes of the `CMKGUARD_CHANNEL_<NAME>_SECRET`
/// setting, UTF-8). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// The smallest key accepted, in bytes (HMAC-SHA256 wants at least 32 bytes of
    /// entropy; 16 characters is the floor we enforce so typos are caught).
    pub const MIN_LEN: usize = 16;

    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, ChannelError> {
        let bytes = secret.into();
        if bytes.len() < Self::MIN_LEN {
            return Err(ChannelError::WeakSecret { min: Self::MIN_LEN });
        }
        Ok(Self(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// One configured channel. `Debug` shows the URL as `scheme://host/…` only.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// The name policies use (letters, digits, `-`, `_`; matched case-insensitively).
    pub name: String,
    pub kind: ChannelKind,
    pub url: SecretUrl,
    /// Required for [`ChannelKind::Webhook`], ignored otherwise.
    pub secret: Option<SigningKey>,
}

impl ChannelConfig {
    /// Validates one channel. Errors name the channel, never the URL or secret.
    pub fn new(name: &str, kind: ChannelKind, url: &str, secret: Option<&str>) -> Result<Self, ChannelError> {
        let name = name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ChannelError::BadName(name.chars().take(64).collect()));
        }
        let url = SecretUrl::parse(url).map_err(|source| ChannelError::BadUrl { channel: name.to_owned(), source })?;
        let secret = match (kind, secret.filter(|s| !s.is_empty())) {
            (ChannelKind::Webhook, None) => return Err(ChannelError::MissingSecret { channel: name.to_owned() }),
            (ChannelKind::Webhook, Some(s)) => Some(
                SigningKey::new(s.as_bytes())
                    .map_err(|_| ChannelError::WeakSecretFor { channel: name.to_owned(), min: SigningKey::MIN_LEN })?,
            ),
            (_, _) => None,
        };
        Ok(Self { name: name.to_owned(), kind, url, secret })
    }
}

/// Why a channel could not be configured or found. Never contains a URL or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("unknown channel {0:?} (not in CMKGUARD_CHANNELS)")]
    Unknown(String),
    #[error("unknown channel kind {0:?} (teams, slack or webhook)")]
    UnknownKind(String),
    #[error("channel name {0:?} may only use letters, digits, - and _ (at most 64)")]
    BadName(String),
    #[error("channel {0:?} is configured twice")]
    Duplicate(String),
    #[error("channel {channel:?}: URL {source}")]
    BadUrl { channel: String, source: UrlError },
    #[error("webhook channel {channel:?} needs a signing secret (CMKGUARD_CHANNEL_<NAME>_SECRET)")]
    MissingSecret { channel: String },
    #[error("webhook channel {channel:?}: the signing secret must be at least {min} bytes")]
    WeakSecretFor { channel: String, min: usize },
    #[error("a signing secret must be at least {min} bytes")]
    WeakSecret { min: usize },
}

/// The configured channels, looked up by name (case-insensitive).
#[derive(Debug, Clone, Default)]
pub struct Channels(Vec<ChannelConfig>);

impl Channels {
    /// Refuses two channels whose names differ only in case.
    pub fn new(channels: Vec<ChannelConfig>) -> Result<Self, ChannelError> {
        for (i, c) in channels.iter().enumerate() {
            if channels[..i].iter().any(|d| d.name.eq_ignore_ascii_case(&c.name)) {
                return Err(ChannelError::Duplicate(c.name.clone()));
            }
        }
        Ok(Self(channels))
    }

    /// The channel a policy named, or [`ChannelError::Unknown`].
    pub fn get(&self, name: &str) -> Result<&ChannelConfig, ChannelError> {
        let name = name.trim();
        self.0
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| ChannelError::Unknown(name.chars().take(64).collect()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &ChannelConfig> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_by_name_case_insensitive_and_unknown_is_an_error() {
        let chans = Channels::new(vec![
            ChannelConfig::new("ops", ChannelKind::Teams, "https://x.example/a", None).unwrap(),
            ChannelConfig::new("sec-hook", ChannelKind::Webhook, "https://y.example/b", Some("0123456789abcdef"))
                .unwrap(),
        ])
        .unwrap();
        assert_eq!(chans.get("OPS").unwrap().kind, ChannelKind::Teams);
        assert_eq!(chans.get("nope").unwrap_err(), ChannelError::Unknown("nope".into()));
        assert!(chans.get("nope").unwrap_err().to_string().contains("\"nope\""));
    }

    #[test]
    fn configuration_errors_name_the_channel_not_the_secret() {
        let e = ChannelConfig::new("hook", ChannelKind::Webhook, "https://y.example/tok3n", None).unwrap_err();
        assert!(e.to_string().contains("hook") && e.to_string().contains("SECRET"), "{e}");
        let e = ChannelConfig::new("hook", ChannelKind::Webhook, "https://y.example/b", Some("short")).unwrap_err();
        assert!(!e.to_string().contains("short"), "{e}");
        let e = ChannelConfig::new("ops", ChannelKind::Slack, "http://hooks.example/tok3n", None).unwrap_err();
        assert!(e.to_string().contains("https") && !e.to_string().contains("tok3n"), "{e}");
        assert!(ChannelConfig::new("a b", ChannelKind::Slack, "https://x.example/", None).is_err());
        let dup = Channels::new(vec![
            ChannelConfig::new("ops", ChannelKind::Slack, "https://x.example/", None).unwrap(),
            ChannelConfig::new("OPS", ChannelKind::Teams, "https://x.example/", None).unwrap(),
        ]);
        assert_eq!(dup.unwrap_err(), ChannelError::Duplicate("OPS".into()));
    }

    #[test]
    fn debug_hides_url_and_secret() {
        let c = ChannelConfig::new(
            "hook",
            ChannelKind::Webhook,
            "https://y.example/path-tok3n?sig=qq",
            Some("super-secret-signing-key"),
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("tok3n") && !d.contains("sig=") && !d.contains("super-secret"), "{d}");
        assert!(d.contains("y.example"), "{d}");
    }

    #[test]
    fn kinds_parse() {
        assert_eq!("Teams".parse::<ChannelKind>().unwrap(), ChannelKind::Teams);
        assert!("pager".parse::<ChannelKind>().is_err());
    }
}

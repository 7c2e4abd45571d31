//! Webhook URLs carry their credential in the path or query (Teams Workflows `sig=`,
//! Slack's `/services/T…/B…/secret`), so they are secrets: this module is how one is
//! held ([`SecretUrl`]) and how it may appear in logs, errors and `Debug` output
//! (scheme and host only).

use std::fmt;

/// The loggable form of a URL: `scheme://host[:port]/…`; anything unparsable becomes
/// `<redacted url>`. Never contains the path, query, fragment or user info.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(u) => match u.host_str() {
            Some(host) => match u.port() {
                Some(port) => format!("{}://{host}:{port}/…", u.scheme()),
                None => format!("{}://{host}/…", u.scheme()),
            },
            None => "<redacted url>".to_owned(),
        },
        Err(_) => "<redacted url>".to_owned(),
    }
}

/// Replaces every occurrence of `url` in `text` by its redacted form: a last line of
/// defence for messages that came from elsewhere (e.g. an HTTP library's error).
pub fn scrub(text: &str, url: &SecretUrl) -> String {
    let raw = url.expose().as_str();
    let mut out = if raw.is_empty() { text.to_owned() } else { text.replace(raw, &url.redacted()) };
    // The URL may also appear without a trailing slash normalisation, or only its path.
    let path = url.expose().path();
    if path.len() > 1 {
        out = out.replace(path, "/…");
    }
    if let Some(q) = url.expose().query()
        && !q.is_empty()
    {
        out = out.replace(q, "…");
    }
    out
}

/// A webhook URL: usable for sending, printed only as `scheme://host/…`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(reqwest::Url);

/// Why a channel URL was refused. The message never contains the URL itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is not a valid URL")]
    Invalid,
    #[error("must use https (plain http is allowed for 127.0.0.1 and localhost only)")]
    NotHttps,
    #[error("must not carry user:password@ credentials")]
    UserInfo,
}

impl SecretUrl {
    /// Parses a channel URL: `https://…`, or `http://` to loopback (local sinks).
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let u = reqwest::Url::parse(s.trim()).map_err(|_| UrlError::Invalid)?;
        let host = u.host_str().ok_or(UrlError::Invalid)?;
        match u.scheme() {
            "https" => {}
            "http" if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => {}
            _ => return Err(UrlError::NotHttps),
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(UrlError::UserInfo);
        }
        Ok(Self(u))
    }

    /// The real URL, for sending only.
    pub fn expose(&self) -> &reqwest::Url {
        &self.0
    }

    /// `scheme://host[:port]/…`
    pub fn redacted(&self) -> String {
        redact_url(self.0.as_str())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEAMS: &str = "https://prod-12.westeurope.logic.azure.com:443/workflows/abc123/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers&sv=1.0&sig=SUPERSECRETSIG";
    const SLACK: &str = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX";

    #[test]
    fn redaction_keeps_scheme_and_host_only() {
        assert_eq!(redact_url(TEAMS), "https://prod-12.westeurope.logic.azure.com/…");
        assert_eq!(redact_url(SLACK), "https://hooks.slack.com/…");
        assert_eq!(redact_url("http://127.0.0.1:8080/teams/ops"), "http://127.0.0.1:8080/…");
        assert_eq!(redact_url("not a url with sig=secret"), "<redacted url>");
        assert_eq!(redact_url("https://user:pw@host.example/x"), "https://host.example/…");
    }

    #[test]
    fn debug_and_display_never_show_the_secret_parts() {
        for raw in [TEAMS, SLACK] {
            let u = SecretUrl::parse(raw).unwrap();
            for shown in [format!("{u:?}"), format!("{u}"), format!("{:?}", Some(&u))] {
                assert!(!shown.contains("SECRET"), "{shown}");
                assert!(!shown.contains("/services/") && !shown.contains("/workflows/"), "{shown}");
            }
        }
    }

    #[test]
    fn scrub_removes_the_url_from_foreign_messages() {
        let u = SecretUrl::parse(SLACK).unwrap();
        let msg = format!("error sending request for url ({SLACK}): connection refused");
        let s = scrub(&msg, &u);
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("hooks.slack.com"), "{s}");
        let t = SecretUrl::parse(TEAMS).unwrap();
        let s = scrub(&format!("bad path {} and query {}", t.expose().path(), t.expose().query().unwrap()), &t);
        assert!(!s.contains("SUPERSECRETSIG") && !s.contains("abc123"), "{s}");
    }

    #[test]
    fn url_rules() {
        assert_eq!(SecretUrl::parse("http://hooks.example/x"), Err(UrlError::NotHttps));
        assert_eq!(SecretUrl::parse("ftp://hooks.example/x"), Err(UrlError::NotHttps));
        assert_eq!(SecretUrl::parse("https://a:b@hooks.example/x"), Err(UrlError::UserInfo));
        assert_eq!(SecretUrl::parse("nonsense"), Err(UrlError::Invalid));
        assert!(SecretUrl::parse("http://127.0.0.1:9/x").is_ok());
        assert!(SecretUrl::parse(" https://hooks.example/x ").is_ok());
    }

    proptest! {
        #[test]
        fn redacted_form_never_contains_path_or_query(
            host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,5}){1,2}",
            path in "(/[A-Za-z0-9_-]{1,12}){1,4}",
            secret in "[A-Za-z0-9]{16,40}",
        ) {
            let raw = format!("https://{host}{path}/{secret}?sig={secret}");
            let shown = redact_url(&raw);
            // Exactly scheme and host: a `contains(path)` check would be wrong for a path
            // such as `/e` that the `//e.aa` of the host already spells.
            prop_assert_eq!(shown, format!("https://{host}/…"));
            let parsed = SecretUrl::parse(&raw).unwrap();
            let shown_debug = format!("{:?}", parsed);
            prop_assert!(!shown_debug.contains(&secret));
        }

        #[test]
        fn parse_never_panics_and_errors_never_echo_input(s in ".{0,120}") {
            if let Err(e) = SecretUrl::parse(&s) {
                let msg = e.to_string();
                prop_assert!(s.len() < 8 || !msg.contains(&s));
            }
            let _ = redact_url(&s);
        }
    }
}

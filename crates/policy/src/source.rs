//! Where a policy comes from: the embedded default, a file, or an https URL pinned by
//! sha256; and the hot-reload manifest (`{"url": …, "sha256": …}`). HTTP itself is the
//! caller's business ([`Fetch`]): this crate knows no HTTP client.

use std::path::PathBuf;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::error::LoadError;

/// The configured policy module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The default policy built into the binary ([`crate::DEFAULT_POLICY`]).
    Embedded,
    /// A component file, optionally pinned by sha256 (hex).
    File { path: PathBuf, sha256: Option<String> },
    /// An https URL, always pinned by sha256 (hex).
    Url { url: String, sha256: String },
}

impl PolicySource {
    /// From the `CMKGUARD_POLICY` / `CMKGUARD_POLICY_SHA256` settings.
    pub fn from_setting(source: Option<&str>, sha256: Option<&str>) -> Result<Self, LoadError> {
        let sha256 = sha256.map(str::to_ascii_lowercase);
        match source {
            None => Ok(Self::Embedded),
            Some(s) if s.starts_with("https://") => match sha256 {
                Some(sha256) => Ok(Self::Url { url: s.to_owned(), sha256 }),
                None => {
                    Err(LoadError::Fetch { url: s.to_owned(), message: "a policy URL must be pinned by sha256".into() })
                }
            },
            Some(s) if s.contains("://") => Err(LoadError::Fetch {
                url: s.to_owned(),
                message: "only https URLs (or file paths) are accepted".into(),
            }),
            Some(path) => Ok(Self::File { path: PathBuf::from(path), sha256 }),
        }
    }
}

/// The hot-reload manifest an operator publishes next to the module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub url: String,
    pub sha256: String,
}

impl Manifest {
    /// Parses and checks a manifest document.
    pub fn parse(text: &[u8], from: &str) -> Result<Self, LoadError> {
        let bad = |message: String| LoadError::Manifest { url: from.to_owned(), message };
        let mut m: Manifest =
            serde_json::from_slice(text).map_err(|e| bad(format!("not {{\"url\", \"sha256\"}} JSON: {e}")))?;
        if !m.url.starts_with("https://") {
            return Err(bad(format!("url {:?} must be https", m.url)));
        }
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("sha256 must be 64 hex characters".into()));
        }
        m.sha256.make_ascii_lowercase();
        Ok(m)
    }
}

/// Fetches a document over https (the handler implements it with its HTTP client).
#[async_trait]
pub trait Fetch: Send + Sync {
    /// The body of a successful GET of `url`, at most `max_bytes` long.
    async fn fetch(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, String>;
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Refuses `bytes` unless they hash to `expected`.
pub fn verify_digest(bytes: &[u8], expected: &str) -> Result<(), LoadError> {
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(LoadError::DigestMismatch { expected: expected.to_ascii_lowercase(), actual });
    }
    Ok(())
}

/// Reads a source's bytes (verified against its pin, if any).
pub async fn read_source(
    source: &PolicySource,
    fetch: Option<&dyn Fetch>,
    max_bytes: usize,
) -> Result<Vec<u8>, LoadError> {
    match source {
        PolicySource::Embedded => Ok(crate::DEFAULT_POLICY.to_vec()),
        PolicySource::File { path, sha256 } => {
            let bytes = tokio::fs::read(path).await.map_err(|source| LoadError::Read { path: path.clone(), source })?;
            if let Some(expected) = sha256 {
                verify_digest(&bytes, expected)?;
            }
            Ok(bytes)
        }
        PolicySource::Url { url, sha256 } => {
            let fetch = fetch
                .ok_or_else(|| LoadError::Fetch { url: url.clone(), message: "no HTTP client configured".into() })?;
            let bytes =
                fetch.fetch(url, max_bytes).await.map_err(|message| LoadError::Fetch { url: url.clone(), message })?;
            verify_digest(&bytes, sha256)?;
            Ok(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn manifest_parses_and_names_what_is_wrong() {
        let m = Manifest::parse(
            format!(r#"{{"url":"https://x/p.wasm","sha256":"{}"}}"#, SHA.to_uppercase()).as_bytes(),
            "m",
        )
        .unwrap();
        assert_eq!(m, Manifest { url: "https://x/p.wasm".into(), sha256: SHA.into() });
        for (doc, needle) in [
            (r#"{"url":"http://x/p.wasm","sha256":"00"}"#, "must be https"),
            (r#"{"url":"https://x/p.wasm","sha256":"00"}"#, "64 hex"),
            (r#"{"url":"https://x/p.wasm"}"#, "sha256"),
            (r#"{"url":"https://x","sha256":"00","extra":1}"#, "extra"),
            ("[]", "JSON"),
        ] {
            let e = Manifest::parse(doc.as_bytes(), "https://ops/manifest.json").unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("https://ops/manifest.json"), "{doc}: {e}");
        }
    }

    #[test]
    fn sources_from_settings() {
        assert_eq!(PolicySource::from_setting(None, None).unwrap(), PolicySource::Embedded);
        assert!(matches!(PolicySource::from_setting(Some("https://x/p.wasm"), None), Err(LoadError::Fetch { .. })));
        assert!(matches!(PolicySource::from_setting(Some("ftp://x/p.wasm"), None), Err(LoadError::Fetch { .. })));
        assert_eq!(
            PolicySource::from_setting(Some("https://x/p.wasm"), Some(&SHA.to_uppercase())).unwrap(),
            PolicySource::Url { url: "https://x/p.wasm".into(), sha256: SHA.into() }
        );
        assert!(matches!(
            PolicySource::from_setting(Some("/p.wasm"), None).unwrap(),
            PolicySource::File { sha256: None, .. }
        ));
    }

    #[test]
    fn digests_are_checked() {
        assert!(verify_digest(b"test", SHA).is_ok());
        assert!(matches!(verify_digest(b"tesT", SHA), Err(LoadError::DigestMismatch { .. })));
    }

    proptest! {
        #[test]
        fn manifest_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Manifest::parse(&bytes, "m");
        }

        #[test]
        fn valid_manifests_round_trip(path in "[a-z0-9/]{1,40}", digest in "[0-9a-fA-F]{64}") {
            let url = format!("https://example.net/{path}");
            let doc = serde_json::json!({"url": url, "sha256": digest}).to_string();
            let m = Manifest::parse(doc.as_bytes(), "m").unwrap();
            prop_assert_eq!(m.url, url);
            prop_assert_eq!(m.sha256, digest.to_ascii_lowercase());
        }
    }
}

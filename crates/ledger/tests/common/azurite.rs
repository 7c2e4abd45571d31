//! Test harness for the Blob backend: starts Azurite (blob service only) on a free
//! loopback port, over HTTPS with a freshly generated certificate and `--oauth basic`,
//! and stops it when dropped. Azurite itself is installed by
//! `scripts/setup.d/50-azurite.sh`; when it is missing, `start` fails saying so.
//!
//! Shared by this crate's tests and its benchmark (included with `#[path]`); other
//! crates' end-to-end tests may include it the same way.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};

/// A running Azurite blob service. Dropping it kills the process.
pub struct Azurite {
    child: tokio::process::Child,
    port: u16,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Azurite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Azurite").field("port", &self.port).finish_non_exhaustive()
    }
}

/// Where `scripts/setup.d/50-azurite.sh` installs Azurite (or `AZURITE_BLOB` if set).
pub fn azurite_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AZURITE_BLOB") {
        return PathBuf::from(p);
    }
    // The target dir: CARGO_TARGET_DIR, else the one this test executable runs from
    // (target/release/deps/…), which holds for any crate that includes this file.
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.ancestors().nth(3).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
    });
    target.join("azurite/node_modules/.bin/azurite-blob")
}

impl Azurite {
    /// Starts Azurite and waits until it accepts connections (at most 60 s).
    pub async fn start() -> Result<Self, String> {
        let bin = azurite_binary();
        if !bin.exists() {
            return Err(format!(
                "Azurite is not installed at {} — run `bash scripts/setup.d/50-azurite.sh` (or set AZURITE_BLOB)",
                bin.display()
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let (ca_pem, cert_pem, key_pem) = certificates()?;
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, cert_pem).map_err(|e| e.to_string())?;
        std::fs::write(&key, key_pem).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = tokio::process::Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--oauth", "basic", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--disableProductStyleUrl", "--disableTelemetry"])
            .arg("--silent")
            // In-memory: nothing is written; the temp dir as working directory keeps any
            // stray file out of the source tree.
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut me = Self { child, port, ca_pem, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(me);
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(format!("Azurite exited early ({status})"));
            }
            if Instant::now() > deadline {
                return Err("Azurite did not start listening within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `https://127.0.0.1:PORT/devstoreaccount1/CONTAINER`.
    pub fn container_url(&self, container: &str) -> String {
        format!("https://127.0.0.1:{}/devstoreaccount1/{container}", self.port)
    }

    /// A token credential Azurite's `--oauth basic` accepts (a well-formed, unsigned JWT).
    pub fn credential(&self) -> Arc<dyn TokenCredential> {
        Arc::new(FakeEntraToken)
    }

    /// An HTTP client that trusts only this Azurite's certificate authority.
    pub fn http_client(&self) -> Arc<dyn azure_core::http::HttpClient> {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("generated CA parses");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .pool_max_idle_per_host(256)
            .build()
            .expect("reqwest client builds");
        Arc::new(client)
    }

    /// The CA certificate (PEM) that signed Azurite's server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// A CA and a server certificate for 127.0.0.1 / localhost signed by it (all PEM).
fn certificates() -> Result<(String, String, String), String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let e = |e: rcgen::Error| format!("certificate generation: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "cmkguard test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(e)?).map_err(e)?;
    let leaf_key = KeyPair::generate().map_err(e)?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(e)?
        .signed_by(&leaf_key, &ca)
        .map_err(e)?;
    Ok((ca.pem(), leaf.pem(), leaf_key.serialize_pem()))
}

/// Issues unsigned JWTs with the claims Azurite checks in `--oauth basic` mode
/// (issuer, audience, nbf/exp). Never valid against real Entra ID.
#[derive(Debug)]
pub struct FakeEntraToken;

#[async_trait::async_trait]
impl TokenCredential for FakeEntraToken {
    async fn get_token(&self, _scopes: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        use azure_core::base64::encode_url_safe;
        let now = chrono::Utc::now().timestamp();
        let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let header = encode_url_safe(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "aud": "https://storage.azure.com",
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
            "tid": tenant, "oid": "00000000-0000-0000-0000-00000000c0de", "appid": "cmkguard-tests",
        });
        let payload = encode_url_safe(claims.to_string());
        let token = format!("{header}.{payload}.{}", encode_url_safe(b"unsigned"));
        Ok(AccessToken::new(token, azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1)))
    }
}

//! The on-disk cache of precompiled policies, keyed by the module's sha256 and the
//! engine's compatibility hash. An entry stores its own sha256 ahead of the artifact
//! and is checked before it is deserialized; a corrupt or incompatible entry is
//! rebuilt, never trusted.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::LoadError;

/// A directory of precompiled artifacts for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    /// Hex of the engine's compatibility hash (wasmtime version, target, settings).
    compat: String,
}

/// Feeds `Hash` into sha256 so the key is stable across Rust releases.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

impl ArtifactCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Result<Self, LoadError> {
        std::fs::create_dir_all(&dir).map_err(|source| LoadError::Cache { path: dir.clone(), source })?;
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        let compat = hex::encode(&h.0.finalize()[..12]);
        Ok(Self { dir, compat })
    }

    /// Where the artifact of the module with `digest` lives.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.compat))
    }

    /// The compiled component for `bytes` (sha256 `digest`): from the cache when a
    /// verified entry exists, else compiled and stored. Returns whether it came from the cache.
    pub fn component(&self, engine: &Engine, bytes: &[u8], digest: &str) -> Result<(Component, bool), LoadError> {
        let path = self.path(digest);
        match self.read_verified(&path) {
            Some(artifact) => match deserialize(engine, &artifact) {
                Ok(c) => return Ok((c, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cached policy artifact is incompatible; rebuilding")
                }
            },
            None if path.exists() => {
                tracing::warn!(path = %path.display(), "cached policy artifact is corrupt; rebuilding")
            }
            None => {}
        }
        let artifact = engine.precompile_component(bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let component = deserialize(engine, &artifact).map_err(LoadError::Compile)?;
        if let Err(source) = write_atomically(&path, &artifact) {
            // A cache that cannot be written costs time, not correctness.
            tracing::warn!(path = %path.display(), error = %source, "could not store the precompiled policy");
        }
        Ok((component, false))
    }

    /// The artifact, if the file exists and its stored digest matches its content.
    fn read_verified(&self, path: &Path) -> Option<Vec<u8>> {
        let data = std::fs::read(path).ok()?;
        if data.len() < 32 {
            return None;
        }
        let (stored, artifact) = data.split_at(32);
        (Sha256::digest(artifact).as_slice() == stored).then(|| artifact.to_vec())
    }
}

fn deserialize(engine: &Engine, artifact: &[u8]) -> Result<Component, String> {
    // SAFETY: `artifact` was produced by `Engine::precompile_component` — either just now,
    // or read from our cache file whose embedded sha256 matched its content (so it is the
    // exact byte sequence this process family wrote, not a truncated or altered file) and
    // whose name carries the engine's compatibility hash. wasmtime additionally checks
    // the artifact's header against this engine's configuration and refuses a mismatch.
    // The cache directory must be writable only by this service (as the temp dir or
    // CMKGUARD_POLICY_CACHE_DIR under Functions is).
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, artifact) };
    component.map_err(|e| format!("{e:#}"))
}

fn write_atomically(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut data = Vec::with_capacity(artifact.len() + 32);
    data.extend_from_slice(&Sha256::digest(artifact));
    data.extend_from_slice(artifact);
    std::fs::write(&tmp, &data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

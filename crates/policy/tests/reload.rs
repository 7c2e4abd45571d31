//! Hot reload under load: evaluations keep flowing while the module file is replaced
//! (good → good, good → broken, broken → good); none fails and none is lost. The https
//! sources against a real loopback https server: a URL pinned by sha256, and the
//! manifest (`url` + `sha256`) that drives reloads. Also the precompiled cache: reused
//! when valid, rebuilt when corrupt.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cmkguard_policy::source::sha256_hex;
use cmkguard_policy::{LoadError, PolicyEngine, PolicyHost, PolicySource, Refresh};
use common::https::HttpsFiles;
use common::{built, patient_engine as engine, sample_input};

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cmkguard-policy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_nothing() {
    let dir = tempdir("reload");
    let path = dir.join("policy.wasm");
    let default = cmkguard_policy::DEFAULT_POLICY.to_vec();
    let template = std::fs::read(built("template-policy.wasm")).unwrap();
    std::fs::write(&path, &default).unwrap();
    let source = PolicySource::File { path: path.clone(), sha256: None };
    let host = Arc::new(PolicyHost::open(engine(), source, None, "{}".into(), None).await.unwrap());
    let first = host.current().reference().digest.clone();

    // Load: four workers evaluating in a loop, counting every outcome.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let names = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::<String>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (host, stop, ok, failed, names) =
                (host.clone(), stop.clone(), ok.clone(), failed.clone(), names.clone());
            std::thread::spawn(move || {
                let input = sample_input(10);
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    let policy = host.current();
                    match policy.evaluate(&input) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            names.lock().unwrap().insert(policy.reference().name.clone());
                        }
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                }
                sent
            })
        })
        .collect();

    // good → good
    std::fs::write(&path, &template).unwrap();
    let r = host.refresh().await.unwrap();
    assert!(matches!(&r, Refresh::Swapped { from, .. } if *from == first), "{r:?}");
    assert_eq!(host.current().reference().name, "template");
    // unchanged file → nothing to do
    assert_eq!(host.refresh().await.unwrap(), Refresh::Unchanged);
    // good → broken: refused, the template keeps serving; reported once.
    std::fs::write(&path, b"\0asm\x0d\0\x01\0broken").unwrap();
    let e = host.refresh().await.unwrap_err();
    assert!(e.to_string().contains("does not compile"), "{e}");
    assert_eq!(host.current().reference().name, "template");
    assert_eq!(host.refresh().await.unwrap(), Refresh::Unchanged, "a refused module is reported once");
    // broken → good
    std::fs::write(&path, &default).unwrap();
    assert!(matches!(host.refresh().await.unwrap(), Refresh::Swapped { .. }));
    assert_eq!(host.current().reference().name, "cmkguard-default");

    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let sent: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "{} evaluations failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert_eq!(ok.load(Ordering::Relaxed), sent, "every evaluation sent got a decision");
    assert!(sent > 0);
    let names = names.lock().unwrap();
    assert!(names.contains("template") && names.contains("cmkguard-default"), "{names:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_https_url_loads_only_with_its_digest() {
    let server = HttpsFiles::start().await;
    let default = cmkguard_policy::DEFAULT_POLICY.to_vec();
    server.put("/policies/default.wasm", default.clone());
    let url = server.url("/policies/default.wasm");

    let source = PolicySource::from_setting(Some(&url), Some(&sha256_hex(&default).to_uppercase())).unwrap();
    let host = PolicyHost::open(engine(), source, None, "{}".into(), Some(server.fetch())).await.unwrap();
    assert_eq!(host.current().reference().digest, sha256_hex(&default));
    assert!(host.current().evaluate(&sample_input(3)).is_ok());
    // Without a manifest a pinned URL cannot change: nothing is fetched again.
    let before = server.requests();
    assert_eq!(host.refresh().await.unwrap(), Refresh::Unchanged);
    assert_eq!(server.requests(), before);

    // Another digest: refused before anything is compiled, naming both digests.
    let wrong = sha256_hex(b"another module");
    let source = PolicySource::Url { url: url.clone(), sha256: wrong.clone() };
    let e = PolicyHost::open(engine(), source, None, "{}".into(), Some(server.fetch())).await.unwrap_err();
    assert!(
        matches!(&e, LoadError::DigestMismatch { expected, actual } if *expected == wrong && *actual == sha256_hex(&default)),
        "{e}"
    );
    // A missing module is a fetch error that names the URL.
    let missing = server.url("/policies/missing.wasm");
    let source = PolicySource::Url { url: missing.clone(), sha256: wrong };
    let e = PolicyHost::open(engine(), source, None, "{}".into(), Some(server.fetch())).await.unwrap_err();
    assert!(e.to_string().contains(&missing) && e.to_string().contains("404"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_swaps_good_modules_and_refuses_bad_ones() {
    let server = HttpsFiles::start().await;
    let default = cmkguard_policy::DEFAULT_POLICY.to_vec();
    let template = std::fs::read(built("template-policy.wasm")).unwrap();
    let broken = b"\0asm\x0d\0\x01\0broken".to_vec();
    server.put("/v1.wasm", default.clone());
    server.put("/v2.wasm", template.clone());
    server.put("/broken.wasm", broken.clone());
    let manifest = |path: &str, digest: &str| {
        server.put("/manifest.json", serde_json::json!({"url": server.url(path), "sha256": digest}).to_string());
    };
    manifest("/v1.wasm", &sha256_hex(&default));

    let source = PolicySource::Url { url: server.url("/v1.wasm"), sha256: sha256_hex(&default) };
    let host = Arc::new(
        PolicyHost::open(engine(), source, Some(server.url("/manifest.json")), "{}".into(), Some(server.fetch()))
            .await
            .unwrap(),
    );
    // The manifest names the serving module: unchanged, and the module is not fetched.
    let before = server.requests();
    assert_eq!(host.refresh().await.unwrap(), Refresh::Unchanged);
    assert_eq!(server.requests(), before + 1, "only the manifest was fetched");

    // Evaluations flow through every step below; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (host, stop) = (host.clone(), stop.clone());
        std::thread::spawn(move || {
            let input = sample_input(10);
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match host.current().evaluate(&input) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };

    // good → good
    manifest("/v2.wasm", &sha256_hex(&template));
    let r = host.refresh().await.unwrap();
    assert_eq!(r, Refresh::Swapped { from: sha256_hex(&default), to: sha256_hex(&template) });
    assert_eq!(host.current().reference().name, "template");

    // A digest that does not match what the URL serves: refused, reported once.
    manifest("/v1.wasm", &sha256_hex(b"not the module"));
    let e = host.refresh().await.unwrap_err();
    assert!(matches!(e, LoadError::DigestMismatch { .. }), "{e}");
    assert_eq!(host.current().reference().name, "template");
    assert_eq!(host.refresh().await.unwrap(), Refresh::Unchanged, "a refused digest is reported once");

    // A module that matches its digest but does not compile: refused, the old one serves.
    manifest("/broken.wasm", &sha256_hex(&broken));
    let e = host.refresh().await.unwrap_err();
    assert!(e.to_string().contains("does not compile"), "{e}");
    assert_eq!(host.current().reference().name, "template");
    assert_eq!(host.refresh().await.unwrap(), Refresh::Unchanged);

    // A manifest that is not one: refused with the manifest's URL, nothing changes.
    server.put("/manifest.json", "{\"url\": \"http://plain/v1.wasm\"}");
    let e = host.refresh().await.unwrap_err();
    assert!(matches!(&e, LoadError::Manifest { url, .. } if url.ends_with("/manifest.json")), "{e}");
    assert_eq!(host.current().reference().name, "template");

    // And back to a good module.
    manifest("/v1.wasm", &sha256_hex(&default));
    assert!(matches!(host.refresh().await.unwrap(), Refresh::Swapped { .. }));
    assert_eq!(host.current().reference().name, "cmkguard-default");

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = worker.join().unwrap();
    assert!(failed.is_empty(), "{} evaluations failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert!(ok > 0);
}

#[test]
fn precompiled_cache_is_reused_and_corruption_is_rebuilt() {
    let dir = tempdir("cache");
    let limits = cmkguard_policy::Limits::default();
    let engine = PolicyEngine::new(limits.clone(), Some(dir.clone())).unwrap();
    let p = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").unwrap();
    assert!(!p.info().from_cache);
    let p = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").unwrap();
    assert!(p.info().from_cache);
    assert!(p.evaluate(&sample_input(2)).is_ok());

    // Flip one byte in the stored artifact: it must not be trusted.
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();
    let p = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").unwrap();
    assert!(!p.info().from_cache, "a corrupt entry is rebuilt");
    assert!(p.evaluate(&sample_input(2)).is_ok());
    // …and the rebuilt entry serves the next load.
    let p = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").unwrap();
    assert!(p.info().from_cache);

    // Garbage with a valid self-digest (e.g. another engine's artifact): refused by
    // wasmtime's own header check, then rebuilt.
    let junk = b"not an artifact".to_vec();
    let mut framed = <sha2::Sha256 as sha2::Digest>::digest(&junk).to_vec();
    framed.extend_from_slice(&junk);
    std::fs::write(&entry, &framed).unwrap();
    let p = engine.load(cmkguard_policy::DEFAULT_POLICY, "default", "{}").unwrap();
    assert!(!p.info().from_cache);
    std::fs::remove_dir_all(&dir).ok();
}

//! Hot reload under load: evaluations keep flowing while the module file is replaced
//! (good → good, good → broken, broken → good); none fails and none is lost. Also the
//! precompiled cache: reused when valid, rebuilt when corrupt.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cmkguard_policy::{PolicyEngine, PolicyHost, PolicySource, Refresh};
use common::{built, engine, sample_input};

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

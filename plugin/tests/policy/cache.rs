//! The compile cache: a second engine loads from it; a tampered entry is recompiled, never
//! loaded.

use std::os::unix::fs::PermissionsExt;

use kata_nri_manager::policy::{EngineOptions, PolicyEngine};
use serde_json::json;

use crate::support::{limits, load};

fn cached_engine(dir: &std::path::Path) -> PolicyEngine {
    PolicyEngine::new(EngineOptions {
        limits: limits(),
        cache_dir: Some(dir.to_owned()),
    })
    .expect("engine")
}

fn entries(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .expect("read cache")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    found
}

#[test]
fn compiled_policies_are_cached_privately_and_verified() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("cache");
    let settings = json!({"from": "nvcr.io", "to": "m.local"});
    load(&cached_engine(&dir), "mirror", settings.clone());
    let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let compiled = entries(&dir, "cwasm");
    assert_eq!(compiled.len(), 1);
    let file_mode = std::fs::metadata(&compiled[0])
        .expect("file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(file_mode, 0o600);

    // A warm start loads the entry as it is.
    let before = std::fs::read(&compiled[0]).expect("read");
    load(&cached_engine(&dir), "mirror", settings.clone());
    assert_eq!(std::fs::read(&compiled[0]).expect("read"), before);

    // A tampered entry is detected: the policy is compiled again and the entry rewritten.
    let mut tampered = before.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    std::fs::write(&compiled[0], &tampered).expect("tamper");
    let policy = load(&cached_engine(&dir), "mirror", settings);
    assert_eq!(policy.name(), "mirror");
    assert_eq!(std::fs::read(&compiled[0]).expect("read"), before);
}

//! Hot reload: a changed directory changes decisions without a restart; a broken replacement
//! keeps the previous decisions.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kata_nri_manager::config::Policies;
use kata_nri_manager::policy::{PolicyChain, ReloadOutcome, SourceOutcome};
use serde_json::json;

use crate::support::{HANG, component, engine, guard, node, request};

fn policies(dir: &Path) -> Policies {
    Policies {
        dir: dir.to_owned(),
        settings: [
            (
                "mirror".to_owned(),
                json!({"from": "nvcr.io", "to": "m.local"}),
            ),
            ("gate".to_owned(), json!({"namespaces": ["ml"]})),
        ]
        .into(),
        ..Policies::default()
    }
}

/// Replaces `name` in `dir` the way an operator's tooling would: write aside, rename over.
fn install(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

async fn decision(chain: &PolicyChain) -> String {
    let decision = chain
        .select_source(request("kata", "nvcr.io/k:1"), Arc::new(node(&[])))
        .await;
    match decision.outcome {
        SourceOutcome::Pull { sources } => sources[0].reference.to_string(),
        SourceOutcome::Deny(denial) => format!("deny: {}", denial.reason),
        SourceOutcome::Skip { reason, .. } => format!("skip: {reason}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_policy_changes_decisions_and_a_broken_one_keeps_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = std::fs::read(component("mirror")).expect("read");
    // First `10-mirror.wasm` is the hostile policy, which accepts any settings and, given no
    // mode, denies with "unknown mode".
    install(
        dir.path(),
        "10-mirror.wasm",
        &std::fs::read(component("misbehave")).expect("read"),
    );
    let (chain, errors) = PolicyChain::start(engine(), policies(dir.path()), guard());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(decision(&chain).await, "deny: unknown mode");
    // Once a decision is answered, its thread makes the next one's store ahead.
    let first = chain.current();
    let started = Instant::now();
    while !first.has_spare() {
        assert!(
            started.elapsed() < HANG,
            "no store made ahead after a decision"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(decision(&chain).await, "deny: unknown mode");
    let watcher = chain.watch(Duration::from_millis(50));

    // The watcher picks the replacement up by itself.
    install(dir.path(), "10-mirror.wasm", &mirror);
    let started = Instant::now();
    while decision(&chain).await != "m.local/k:1" {
        assert!(started.elapsed() < HANG, "reload not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chain.last_error(), None);
    // The replaced chain gave its spare's pool slots back at the swap.
    assert!(
        !first.has_spare(),
        "a replaced chain keeps no store made ahead"
    );

    // A truncated replacement is refused: decisions stay, the error is reported.
    install(dir.path(), "10-mirror.wasm", &mirror[..mirror.len() / 3]);
    let started = Instant::now();
    while chain.last_error().is_none() {
        assert!(started.elapsed() < HANG, "broken set not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = chain.last_error().expect("error");
    assert!(error.starts_with("policy mirror:"), "{error}");
    assert_eq!(decision(&chain).await, "m.local/k:1");
    watcher.abort();
}

#[test]
fn reload_reports_what_it_did() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (chain, errors) = PolicyChain::start(engine(), policies(dir.path()), guard());
    assert!(errors.is_empty());
    assert!(chain.current().is_empty());
    assert_eq!(chain.reload(), ReloadOutcome::Unchanged);
    std::fs::copy(component("mirror"), dir.path().join("10-mirror.wasm")).expect("copy");
    match chain.reload() {
        ReloadOutcome::Swapped(policies) => assert_eq!(policies[0].name, "mirror"),
        other => panic!("expected a swap, got {other:?}"),
    }
    std::fs::write(dir.path().join("20-gate.wasm"), b"not wasm").expect("write");
    match chain.reload() {
        ReloadOutcome::Kept { error } => assert!(error.contains("policy gate"), "{error}"),
        other => panic!("expected the old set kept, got {other:?}"),
    }
    assert_eq!(chain.current().policies().len(), 1);
}

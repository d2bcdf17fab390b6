//! The hostile corpus: each is refused cleanly, in bounded time, while other decisions go on.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use kata_nri_manager::config::{FailurePolicy, Policies};
use kata_nri_manager::policy::{
    Chain, FailureKind, LoadedPolicy, PolicyEngine, PolicyError, SourceOutcome,
};
use serde_json::json;

use crate::support::{HANG, component, engine, guard, limits, load, node, request};

/// Runs `misbehave` in `mode` and returns how its decision failed, while a mirror chain on the
/// same engine keeps deciding on another thread.
fn misbehaving(mode: &str) -> (FailureKind, String) {
    let engine = engine();
    let hostile = load(&engine, "misbehave", json!({ "mode": mode }));
    let hostile = Chain::new(vec![hostile], guard());
    let healthy = Arc::new(Chain::new(
        vec![load(
            &engine,
            "mirror",
            json!({"from": "nvcr.io", "to": "m.local"}),
        )],
        guard(),
    ));
    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let other = {
        let (healthy, done, served) = (healthy.clone(), done.clone(), served.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let d = healthy.select_source(&request("kata", "nvcr.io/k:1"), &node(&[]));
                assert!(matches!(d.outcome, SourceOutcome::Pull { .. }), "{d:?}");
                served.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    let decision = hostile.select_source(&request("kata", "nvcr.io/k:1"), &node(&[]));
    let took = started.elapsed();
    // Let the healthy side show it still answers after the hostile call.
    let before = served.load(Ordering::Relaxed);
    while served.load(Ordering::Relaxed) < before + 2 {
        std::thread::yield_now();
    }
    done.store(true, Ordering::Relaxed);
    other.join().expect("healthy decisions never failed");
    assert!(took < HANG, "{mode}: took {took:?}");
    match decision.outcome {
        SourceOutcome::Deny(denial) => {
            assert_eq!(denial.policy, "misbehave");
            (
                denial.failure.expect("a failure, not a verdict"),
                denial.reason,
            )
        }
        other => panic!("{mode}: expected a denial, got {other:?}"),
    }
}

#[test]
fn an_infinite_loop_is_stopped_at_the_deadline() {
    let started = Instant::now();
    let (kind, reason) = misbehaving("loop");
    assert_eq!(kind, FailureKind::Deadline);
    assert_eq!(reason, "policy misbehave ran past its deadline of 200ms");
    let deadline = limits().deadline.get();
    assert!(started.elapsed() >= deadline, "stopped before its deadline");
}

/// `validate-settings` at load runs cold (code not paged in yet) and on no pod's path, so it
/// gets at least a second, not the call deadline; a loop there is still stopped.
#[test]
fn a_loop_at_load_is_stopped_at_the_load_deadline() {
    let engine = engine();
    let started = Instant::now();
    let error = LoadedPolicy::load(
        &engine,
        "misbehave",
        &component("misbehave"),
        Some(&json!({"mode": "loop-at-load"})),
        FailurePolicy::Deny,
    )
    .expect_err("a policy that loops at load does not load");
    let took = started.elapsed();
    assert_eq!(
        error.to_string(),
        "policy misbehave: settings refused: policy misbehave ran past its deadline of 1s (policies.settings.misbehave in the config)"
    );
    assert!(took >= std::time::Duration::from_secs(1), "{took:?}");
    assert!(took < HANG, "{took:?}");
}

#[test]
fn a_4gib_allocation_hits_the_memory_cap() {
    let (kind, reason) = misbehaving("alloc");
    assert_eq!(kind, FailureKind::MemoryCap);
    assert_eq!(reason, "policy misbehave hit its memory cap of 64Mi");
}

#[test]
fn a_panic_is_a_trap() {
    let (kind, reason) = misbehaving("trap");
    assert_eq!(kind, FailureKind::Trap);
    assert!(reason.starts_with("policy misbehave trapped:"), "{reason}");
}

#[test]
fn a_stack_overflow_is_a_trap() {
    let (kind, reason) = misbehaving("recurse");
    assert_eq!(kind, FailureKind::Trap);
    // Rust's shadow stack lives in linear memory: overflowing it is an out-of-bounds access
    // (wasmtime's own stack limit catches deep recursion without a shadow stack).
    assert!(
        reason.ends_with("stack overflow") || reason.ends_with("out of bounds memory access"),
        "{reason}"
    );
}

#[test]
fn a_10mb_string_is_an_invalid_result() {
    let (kind, reason) = misbehaving("huge-string");
    assert_eq!(kind, FailureKind::InvalidResult);
    assert!(reason.contains("a reason of 10485760 bytes"), "{reason}");
}

fn load_bytes(bytes: &[u8]) -> PolicyError {
    LoadedPolicy::from_bytes(
        &engine(),
        "bad",
        Path::new("bad.wasm"),
        bytes,
        None,
        FailurePolicy::Deny,
    )
    .expect_err("must not load")
}

#[test]
fn a_component_of_another_world_is_refused() {
    let bytes = std::fs::read(component("wrong_world")).expect("read");
    let err = load_bytes(&bytes);
    assert!(matches!(err, PolicyError::WrongWorld { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("does not implement the kata-nri-manager:policy@0.2.0 world"),
        "{err}"
    );
}

#[test]
fn a_core_module_is_refused() {
    // The smallest valid core module: magic and version, no sections.
    let err = load_bytes(b"\0asm\x01\0\0\0");
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
    assert!(
        err.to_string().contains("is not a WebAssembly component"),
        "{err}"
    );
}

#[test]
fn a_truncated_component_is_refused() {
    let bytes = std::fs::read(component("mirror")).expect("read");
    let err = load_bytes(&bytes[..bytes.len() / 2]);
    assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
}

#[test]
fn an_unloadable_policy_denies_at_start_up_naming_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("10-broken.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::copy(component("mirror"), dir.path().join("20-mirror.wasm")).expect("copy");
    let policies = Policies {
        dir: dir.path().to_owned(),
        settings: [(
            "mirror".to_owned(),
            json!({"from": "nvcr.io", "to": "m.local"}),
        )]
        .into(),
        ..Policies::default()
    };
    let (chain, errors) = Chain::load_lenient(&engine(), &policies, guard()).expect("listed");
    assert_eq!(errors.len(), 1);
    match chain
        .select_source(&request("kata", "nvcr.io/k:1"), &node(&[]))
        .outcome
    {
        SourceOutcome::Deny(denial) => {
            assert_eq!(denial.policy, "broken");
            assert_eq!(denial.failure, Some(FailureKind::Unloadable));
        }
        other => panic!("expected deny, got {other:?}"),
    }
}

#[test]
fn failure_policy_ignore_skips_the_broken_policy() {
    let engine = engine();
    let file = component("misbehave");
    let hostile = LoadedPolicy::load(
        &engine,
        "misbehave",
        &file,
        Some(&json!({"mode": "trap"})),
        FailurePolicy::Ignore,
    )
    .expect("loads");
    let mirror = load(
        &engine,
        "mirror",
        json!({"from": "nvcr.io", "to": "m.local"}),
    );
    let chain = Chain::new(vec![hostile, mirror], guard());
    let decision = chain.select_source(&request("kata", "nvcr.io/k:1"), &node(&[]));
    match &decision.outcome {
        SourceOutcome::Pull { sources } => assert_eq!(sources[0].reference.as_str(), "m.local/k:1"),
        other => panic!("expected pull, got {other:?}"),
    }
    assert_eq!(decision.ignored.len(), 1);
    assert_eq!(decision.ignored[0].kind, FailureKind::Trap);
}

/// `misbehave` counting its calls, under `name`; `pass` answers the sources unchanged when the
/// instance is fresh, so the next policy of the chain runs. A chain's policies share `engine`,
/// as in the daemon, so its decisions share stores.
fn counter(
    engine: &PolicyEngine,
    name: &str,
    pass: bool,
    failure_policy: FailurePolicy,
) -> LoadedPolicy {
    // The guest looks for the key, not its value.
    let settings = if pass {
        json!({"mode": "count", "pass": true})
    } else {
        json!({"mode": "count"})
    };
    LoadedPolicy::load(
        engine,
        name,
        &component("misbehave"),
        Some(&settings),
        failure_policy,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The denial a decision of `chain` ends in; with `tidy`, made as the daemon makes it, which
/// leaves the next decision's store made ahead.
fn denial_of(chain: &Chain, tidy: bool) -> (String, String, Option<FailureKind>) {
    let mut store = chain.decision_store();
    let decision = chain.select_source_in(&mut store, &request("kata", "nvcr.io/k:1"), &node(&[]));
    if tidy {
        chain.tidy(store);
    }
    match decision.outcome {
        SourceOutcome::Deny(denial) => (denial.policy, denial.reason, denial.failure),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn no_guest_state_carries_over_between_decisions_or_policies() {
    // Six policies: more than one decision's store holds, so the chain crosses into a second
    // store too. Each passing policy passes only if its static and heap counters start afresh;
    // a policy that saw state left over would deny with its counts, naming itself.
    let engine = engine();
    let mut policies: Vec<LoadedPolicy> = (1..=5)
        .map(|i| counter(&engine, &format!("pass-{i}"), true, FailurePolicy::Deny))
        .collect();
    policies.push(counter(&engine, "last", false, FailurePolicy::Deny));
    let chain = Chain::new(policies, guard());
    let alone = Chain::new(
        vec![counter(&engine, "alone", false, FailurePolicy::Deny)],
        guard(),
    );
    for decision in 0..20 {
        // Pool slots are reset in place and reused at once: the same slots every round. Every
        // other round runs in the store the previous decision's tidy made ahead, as in the
        // daemon, with the first four policies instantiated before the decision began.
        let made_ahead = decision % 2 == 1;
        assert_eq!(chain.has_spare(), made_ahead, "decision {decision}");
        assert_eq!(alone.has_spare(), made_ahead, "decision {decision}");
        assert_eq!(
            denial_of(&chain, !made_ahead),
            ("last".into(), "call 1, heap 1".into(), None),
            "decision {decision}"
        );
        assert_eq!(
            denial_of(&alone, !made_ahead),
            ("alone".into(), "call 1, heap 1".into(), None),
            "decision {decision}"
        );
    }
}

#[test]
fn a_failure_is_put_down_to_its_policy_and_not_to_the_next() {
    // Each failing policy is ignored; the counter after it must still run fresh and with
    // nothing of the failure (cap flag, spent deadline) held against it.
    let engine = engine();
    for mode in ["alloc", "loop", "trap"] {
        let hostile = LoadedPolicy::load(
            &engine,
            "misbehave",
            &component("misbehave"),
            Some(&json!({ "mode": mode })),
            FailurePolicy::Ignore,
        )
        .expect("loads");
        let chain = Chain::new(
            vec![
                counter(&engine, "before", true, FailurePolicy::Deny),
                hostile,
                counter(&engine, "after", false, FailurePolicy::Deny),
            ],
            guard(),
        );
        // The second decision runs in instances made ahead: a failure there is put down the
        // same way, and the instances after it are not used beside the failed one.
        for made_ahead in [false, true] {
            if made_ahead {
                chain.tidy(chain.decision_store());
                assert!(chain.has_spare(), "{mode}");
            }
            one_failure_is_ignored(&chain, mode);
        }
    }
}

fn one_failure_is_ignored(chain: &Chain, mode: &str) {
    let decision = chain.select_source(&request("kata", "nvcr.io/k:1"), &node(&[]));
    let expected_kind = match mode {
        "alloc" => FailureKind::MemoryCap,
        "loop" => FailureKind::Deadline,
        _ => FailureKind::Trap,
    };
    assert_eq!(decision.ignored.len(), 1, "{mode}: {decision:?}");
    assert_eq!(decision.ignored[0].policy, "misbehave", "{mode}");
    assert_eq!(decision.ignored[0].kind, expected_kind, "{mode}");
    match decision.outcome {
        SourceOutcome::Deny(denial) => assert_eq!(
            (
                denial.policy.as_str(),
                denial.reason.as_str(),
                denial.failure
            ),
            ("after", "call 1, heap 1", None),
            "{mode}"
        ),
        other => panic!("{mode}: expected the counter's denial, got {other:?}"),
    }
}

//! Each example policy's behaviour through the real host.

use kata_nri_manager::kata::{KataSetting, VfioPort};
use kata_nri_manager::policy::{
    AdmitOutcome, Chain, PodInfo, RuntimeOutcome, RuntimeOverrides, SourceOutcome,
};
use serde_json::json;

use crate::support::{engine, guard, load, node, request};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn pulled(outcome: &SourceOutcome) -> Vec<(String, Option<String>)> {
    match outcome {
        SourceOutcome::Pull { sources } => sources
            .iter()
            .map(|s| {
                (
                    s.reference.to_string(),
                    s.digest.as_ref().map(ToString::to_string),
                )
            })
            .collect(),
        other => panic!("expected pull, got {other:?}"),
    }
}

#[test]
fn mirror_rewrites_the_registry() {
    let engine = engine();
    let mirror = load(
        &engine,
        "mirror",
        json!({"from": "nvcr.io", "to": "registry.local:5000"}),
    );
    let chain = Chain::new(vec![mirror], guard());
    let decision = chain.select_source(&request("kata", "nvcr.io/nvidia/kata:1.0"), &node(&[]));
    assert_eq!(
        pulled(&decision.outcome),
        [("registry.local:5000/nvidia/kata:1.0".to_owned(), None)]
    );
    let other = chain.select_source(&request("kata", "quay.io/kata/x:1"), &node(&[]));
    assert_eq!(
        pulled(&other.outcome),
        [("quay.io/kata/x:1".to_owned(), None)]
    );
}

#[test]
fn mirror_refuses_bad_settings_at_load() {
    let engine = engine();
    let file = crate::support::component("mirror");
    let err = kata_nri_manager::policy::LoadedPolicy::load(
        &engine,
        "mirror",
        &file,
        Some(&json!({"from": "https://nvcr.io", "to": "m"})),
        Default::default(),
    )
    .expect_err("bad settings");
    let text = err.to_string();
    assert!(
        text.starts_with("policy mirror: settings refused:"),
        "{text}"
    );
    assert!(text.contains("without a scheme"), "{text}");
}

#[test]
fn pin_digests_pins_and_denies_unpinned() {
    let engine = engine();
    let pin = load(
        &engine,
        "pin_digests",
        json!({"pins": {"nvcr.io/kata:1": DIGEST}, "denyUnpinned": true}),
    );
    let chain = Chain::new(vec![pin], guard());
    let pinned = chain.select_source(&request("kata", "nvcr.io/kata:1"), &node(&[]));
    assert_eq!(
        pulled(&pinned.outcome),
        [("nvcr.io/kata:1".to_owned(), Some(DIGEST.to_owned()))]
    );
    let unpinned = chain.select_source(&request("kata", "nvcr.io/kata:2"), &node(&[]));
    match unpinned.outcome {
        SourceOutcome::Deny(denial) => {
            assert_eq!(denial.policy, "pin_digests");
            assert_eq!(denial.reason, "nvcr.io/kata:2 has no pinned digest");
            assert_eq!(denial.failure, None);
        }
        other => panic!("expected deny, got {other:?}"),
    }
}

fn gpu_settings() -> serde_json::Value {
    json!({
        "gpuClasses": ["kata-gpu"],
        "vendors": {"10de": "nvidia"},
        "devices": {"10de:2330": "h100"},
        "coldPlugVfio": true
    })
}

#[test]
fn gpu_variant_follows_the_node_gpus() {
    let engine = engine();
    let chain = Chain::new(vec![load(&engine, "gpu_variant", gpu_settings())], guard());
    let req = request("kata-gpu", "nvcr.io/kata:1.0");
    let h100 = chain.select_source(&req, &node(&[(0x10de, 0x2330)]));
    assert_eq!(
        pulled(&h100.outcome),
        [("nvcr.io/kata:1.0-h100".to_owned(), None)]
    );
    let other = chain.select_source(&req, &node(&[(0x10de, 0x1eb8)]));
    assert_eq!(
        pulled(&other.outcome),
        [("nvcr.io/kata:1.0-nvidia".to_owned(), None)]
    );
    match chain.select_source(&req, &node(&[])).outcome {
        SourceOutcome::Skip { policy, reason } => {
            assert_eq!(policy, "gpu_variant");
            assert_eq!(reason, "kata-gpu needs a GPU and this node has none");
        }
        other => panic!("expected skip, got {other:?}"),
    }
    let cpu_class = chain.select_source(&request("kata-qemu", "nvcr.io/kata:1.0"), &node(&[]));
    assert_eq!(
        pulled(&cpu_class.outcome),
        [("nvcr.io/kata:1.0".to_owned(), None)]
    );
}

#[test]
fn gpu_variant_cold_plugs_the_gpus() {
    let engine = engine();
    let chain = Chain::new(vec![load(&engine, "gpu_variant", gpu_settings())], guard());
    let decision = chain.mutate_runtime(
        &request("kata-gpu", "nvcr.io/kata:1.0"),
        &node(&[(0x10de, 0x2330), (0x10de, 0x2330)]),
        &RuntimeOverrides::default(),
    );
    match decision.outcome {
        RuntimeOutcome::Settings { settings } => assert_eq!(
            settings.kata_config,
            [
                KataSetting::ColdPlugVfio(VfioPort::RootPort),
                KataSetting::PcieRootPorts(2)
            ]
        ),
        other => panic!("expected settings, got {other:?}"),
    }
}

#[test]
fn kata_settings_sizes_the_listed_classes_and_the_guard_bounds_them() {
    let engine = engine();
    let chain = Chain::new(
        vec![load(
            &engine,
            "kata_settings",
            json!({"classes": {
                "kata-qemu": {"defaultVcpus": 2, "memorySlots": 16, "guestKernelParams": "quiet"},
                "kata-bad": {"guestKernelParams": "quiet init=sh"},
            }}),
        )],
        guard(),
    );
    let decide = |class: &str| {
        chain
            .mutate_runtime(
                &request(class, "nvcr.io/kata:1.0"),
                &node(&[]),
                &RuntimeOverrides::default(),
            )
            .outcome
    };
    match decide("kata-qemu") {
        RuntimeOutcome::Settings { settings } => assert_eq!(
            settings.kata_config,
            [
                KataSetting::DefaultVcpus(2),
                KataSetting::MemorySlots(16),
                KataSetting::GuestKernelParams("quiet".into()),
            ]
        ),
        other => panic!("expected settings, got {other:?}"),
    }
    match decide("kata-clh") {
        RuntimeOutcome::Settings { settings } => assert!(settings.kata_config.is_empty()),
        other => panic!("expected settings, got {other:?}"),
    }
    // What the policy may say is the host's to bound: a guest init is refused, naming it.
    match decide("kata-bad") {
        RuntimeOutcome::Deny(denial) => {
            let text = denial.to_string();
            assert!(
                text.contains("kata_settings") && text.contains("init"),
                "{text}"
            );
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn namespace_gate_admits_listed_namespaces_only() {
    let engine = engine();
    let gate = load(
        &engine,
        "namespace_gate",
        json!({"namespaces": ["ml", "ci-*"]}),
    );
    let chain = Chain::new(vec![gate], guard());
    let pod = |namespace: &str| PodInfo {
        namespace: namespace.into(),
        name: "p".into(),
        ..PodInfo::default()
    };
    let req = request("kata", "nvcr.io/kata:1");
    assert_eq!(
        chain.admit(&req, &node(&[]), &pod("ci-7")).outcome,
        AdmitOutcome::Allow
    );
    match chain.admit(&req, &node(&[]), &pod("default")).outcome {
        AdmitOutcome::Deny(denial) => {
            assert_eq!(
                denial.reason,
                r#"pods of namespace "default" may not trigger kata"#
            )
        }
        AdmitOutcome::Allow => panic!("default is not listed"),
    }
}

#[test]
fn a_chain_applies_policies_in_order() {
    let engine = engine();
    let chain = Chain::new(
        vec![
            load(&engine, "gpu_variant", gpu_settings()),
            load(
                &engine,
                "pin_digests",
                json!({"pins": {"nvcr.io/kata:1.0-h100": DIGEST}}),
            ),
            load(
                &engine,
                "mirror",
                json!({"from": "nvcr.io", "to": "registry.local:5000"}),
            ),
        ],
        guard(),
    );
    let decision = chain.select_source(
        &request("kata-gpu", "nvcr.io/kata:1.0"),
        &node(&[(0x10de, 0x2330)]),
    );
    assert_eq!(
        pulled(&decision.outcome),
        [(
            "registry.local:5000/kata:1.0-h100".to_owned(),
            Some(DIGEST.to_owned())
        )]
    );
    assert!(decision.ignored.is_empty());
}

#[test]
fn the_guard_denies_sources_outside_the_allowed_registries() {
    let engine = engine();
    let mirror = load(
        &engine,
        "mirror",
        json!({"from": "nvcr.io", "to": "evil.example.com"}),
    );
    let guard = kata_nri_manager::policy::Guard::new(
        kata_nri_manager::config::Registries {
            allowed: vec!["nvcr.io".into(), "registry.local:5000".into()],
            ..Default::default()
        },
        Default::default(),
    );
    let chain = Chain::new(vec![mirror], guard);
    match chain
        .select_source(&request("kata", "nvcr.io/kata:1"), &node(&[]))
        .outcome
    {
        SourceOutcome::Deny(denial) => {
            assert_eq!(denial.policy, "mirror");
            assert!(
                denial.reason.contains("outside registries.allowed"),
                "{}",
                denial.reason
            );
        }
        other => panic!("expected deny, got {other:?}"),
    }
}

/// Settings of `pin_digests` with `count` pins, `nvcr.io/kata:<i>` each.
fn many_pins(count: usize) -> serde_json::Value {
    let pins: serde_json::Map<String, serde_json::Value> = (0..count)
        .map(|i| (format!("nvcr.io/kata:{i}"), json!(DIGEST)))
        .collect();
    json!({ "pins": pins })
}

// The examples are no_std components with the SDK's bump allocator: these take it past the
// heap room of the initial memory, through `memory.grow`, and into the memory cap.
#[test]
fn a_no_std_policy_grows_its_heap_past_the_initial_memory() {
    let engine = engine();
    // About 350 KB of settings: the settings string alone is more than the initial heap room.
    let pin = load(&engine, "pin_digests", many_pins(3000));
    let chain = Chain::new(vec![pin], guard());
    for _ in 0..2 {
        let decision = chain.select_source(&request("kata", "nvcr.io/kata:2999"), &node(&[]));
        assert_eq!(
            pulled(&decision.outcome),
            [("nvcr.io/kata:2999".to_owned(), Some(DIGEST.to_owned()))]
        );
    }
}

#[test]
fn a_no_std_policy_that_outgrows_the_memory_cap_is_refused_cleanly() {
    let cache = tempfile::tempdir().expect("cache dir");
    let small =
        kata_nri_manager::policy::PolicyEngine::new(kata_nri_manager::policy::EngineOptions {
            limits: kata_nri_manager::config::PolicyLimits {
                memory: kata_nri_manager::config::ByteSize::mebibytes(2),
                ..crate::support::limits()
            },
            cache_dir: Some(cache.path().to_owned()),
        })
        .expect("engine");
    // About 3.5 MB of settings in a memory capped at 2 MiB.
    let err = kata_nri_manager::policy::LoadedPolicy::load(
        &small,
        "pin_digests",
        &crate::support::component("pin_digests"),
        Some(&many_pins(30_000)),
        Default::default(),
    )
    .expect_err("over the cap");
    assert_eq!(
        err.to_string(),
        "policy pin_digests: settings refused: policy pin_digests hit its memory cap of 2Mi \
         (policies.settings.pin_digests in the config)"
    );
    // The same engine still serves a policy that fits.
    let fits = load(&small, "pin_digests", many_pins(10));
    let chain = Chain::new(vec![fits], guard());
    let decision = chain.select_source(&request("kata", "nvcr.io/kata:3"), &node(&[]));
    assert_eq!(
        pulled(&decision.outcome),
        [("nvcr.io/kata:3".to_owned(), Some(DIGEST.to_owned()))]
    );
}

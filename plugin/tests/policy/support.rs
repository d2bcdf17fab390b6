//! Building and finding the guest components, and the common inputs of decisions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kata_nri_manager::config::{Annotations, ByteSize, FailurePolicy, PolicyLimits, Registries};
use kata_nri_manager::policy::{
    EngineOptions, Guard, LoadedPolicy, NodeFacts, PciGpu, PolicyEngine, Request, SourceSpec,
    Trigger,
};

/// The directory of built components, after building them (once per process).
pub fn components() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies-wasm");
        let status = Command::new("bash")
            .arg(root.join("build.sh"))
            .status()
            .expect("run policies-wasm/build.sh");
        assert!(status.success(), "policies-wasm/build.sh failed: {status}");
        root.join("target/wasm32-wasip2/release")
    })
}

/// The built component of `crate_name` (`mirror`, `pin_digests`, …).
pub fn component(crate_name: &str) -> PathBuf {
    let path = components().join(format!("{crate_name}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Generous limits for debug builds of the host (cranelift itself is unoptimised there), still
/// tight enough that the hostile corpus is stopped quickly.
pub fn limits() -> PolicyLimits {
    PolicyLimits {
        deadline: "200ms".parse().expect("duration"),
        memory: ByteSize::mebibytes(64),
    }
}

/// An engine sharing one compile cache per test process: each component is compiled once
/// (slow in debug builds) however many tests load it.
pub fn engine() -> PolicyEngine {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().expect("cache dir"));
    PolicyEngine::new(EngineOptions {
        limits: limits(),
        cache_dir: Some(cache.path().join("cache")),
    })
    .expect("engine")
}

pub fn guard() -> Guard {
    Guard::new(
        Registries::default(),
        Annotations {
            allowed: vec!["io.katacontainers.config.hypervisor.*".into()],
        },
    )
}

pub fn load(engine: &PolicyEngine, crate_name: &str, settings: serde_json::Value) -> LoadedPolicy {
    let file = component(crate_name);
    LoadedPolicy::load(
        engine,
        crate_name,
        &file,
        Some(&settings),
        FailurePolicy::Deny,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn request(class: &str, reference: &str) -> Request {
    Request {
        class_name: class.into(),
        configured: SourceSpec {
            reference: reference.into(),
            digest: None,
        },
        trigger: Trigger::Startup,
    }
}

pub fn node(gpus: &[(u16, u16)]) -> NodeFacts {
    NodeFacts {
        arch: "x86_64".into(),
        kernel: "6.1.0".into(),
        cpu_flags: vec!["vmx".into()],
        has_kvm: true,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, &(vendor_id, device_id))| PciGpu {
                vendor_id,
                device_id,
                address: format!("0000:{:02x}:00.0", i + 1),
            })
            .collect(),
        labels: None,
    }
}

/// Generous bound for "within the deadline" in tests: catches hangs, not slowness.
pub const HANG: Duration = Duration::from_secs(10);

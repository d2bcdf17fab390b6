//! Integration test harness for kata-nri-manager: real containerd (2.1, 1.7, 1.6), runc and a
//! CRI client playing kubelet, all from Debian packages cached by
//! `integration/scripts/fetch-deps.sh`. See `integration/README.md`.
//!
//! ```no_run
//! use kata_nri_integration::{Containerd, ContainerdOptions, PodSpec, Version, e2e_guard};
//!
//! #[tokio::test]
//! async fn pod_runs() {
//!     let deps = e2e_guard!();
//!     let cd = Containerd::start(&deps, Version::V2_1, ContainerdOptions::default())
//!         .await
//!         .unwrap();
//!     let mut cri = cd.cri().await.unwrap();
//!     let id = cri.run_pod(&PodSpec::new("p").handler("kata-test")).await.unwrap();
//!     assert!(cri.pod_status(&id).await.unwrap().state == 0); // SANDBOX_READY
//! }
//! ```

pub mod config;
pub mod containerd;
pub mod cosign;
pub mod cri;
pub mod dbus;
pub mod deps;
pub mod http1;
pub mod lease_api;
pub mod lying;
pub mod node;
pub mod plugin;
pub mod proxy;
pub mod registry;
pub mod systemd;
/// Test tar layers with raw headers: the plugin's own unit-test helper, one file for both.
#[path = "../../plugin/src/tarball.rs"]
pub mod tarball;
pub mod token;

pub use config::{ContainerdOptions, FileSource, Layout, RuntimeHandler, TEST_HANDLER, Version};
pub use containerd::{Containerd, K8S_NAMESPACE, KEEP_ENV};
pub use cosign::{Cosign, KeyPair, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, signature_tag};
pub use cri::{
    ContainerSpec, Cri, CriCallError, PodSandboxState, PodSpec, RuntimeStatus, cri_status,
};
pub use dbus::PrivateBus;
pub use deps::{
    Deps, Guest, PAUSE_IMAGE_REF, REQUIRE_E2E_ENV, SkipReason, built_policy, repo_root,
    require_e2e, skip,
};
pub use lease_api::FakeLeaseApi;
pub use lying::LyingRegistry;
pub use node::{Daemon, KataNode};
pub use plugin::{
    EMPTY_CONFIG, NO_KERNEL_MODULES, PluginOptions, PluginProcess, run_to_completion,
};
pub use proxy::CutProxy;
pub use registry::{Registry, RegistryOptions, TokenAuth};
pub use systemd::{FakeSystemd, FakeUnit};
pub use token::{Account, TokenService};

/// The generated CRI v1 API (`k8s-cri`), for calls and types the helpers do not cover.
pub use k8s_cri::v1 as cri_api;

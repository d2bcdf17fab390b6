//! The cluster the daemon runs in, as its environment says (`kube` feature): the node's name and
//! the daemon's namespace (the DaemonSet sets both from the downward API) and the API server's
//! client configuration. Node labels, the fleet's Lease slots and pull secrets read through the
//! API all start here, so they agree on whether the daemon is in a cluster.

use tracing::warn;

/// The node to label and to name in Leases.
pub const NODE_NAME_ENV: &str = "NODE_NAME";
/// The daemon's namespace: its Leases and the pull secrets it reads live there.
pub const NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// Test-only seam: the API server's URL (plain HTTP, no credentials) instead of the in-cluster
/// one. The fleet bench and the pull-slot test point many `pull` processes at one fake API
/// server with it; a cluster never sets it.
pub const TEST_API_ENV: &str = "KATA_NRI_MANAGER_TEST_KUBE_API";

/// The value of `name`, if set and not empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The client configuration for the cluster the daemon runs in: in-cluster credentials, or the
/// test seam's URL ([`TEST_API_ENV`]). `None` outside a cluster.
pub fn config() -> Option<kube::Config> {
    if let Some(url) = env(TEST_API_ENV) {
        match url.parse() {
            Ok(uri) => {
                warn!(url = %url, "Kubernetes API from {TEST_API_ENV} (a test seam; never set in a cluster)");
                return Some(kube::Config::new(uri));
            }
            Err(e) => {
                warn!(url = %url, error = %e, "{TEST_API_ENV} is not a URL; ignored");
            }
        }
    }
    kube::Config::incluster().ok()
}

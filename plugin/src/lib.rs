//! kata-nri-manager: makes Kata Containers runtime classes servable and ready on a containerd
//! node, as an NRI plugin.

pub mod artifacts;
pub mod cli;
#[cfg(feature = "kube")]
pub mod cluster;

pub mod config;
pub mod containerd;
pub mod daemon;
pub mod errors;
pub mod gate;
pub mod host;
pub mod kata;
pub mod nri;
pub mod pods;
pub mod policy;
pub mod reconcile;
mod single_flight;
#[cfg(test)]
mod tarball;

//! NRI wire schema for kata-nri-manager: our own subset of containerd/nri's
//! `pkg/api/api.proto` (package `nri.pkg.api.v1alpha1`), wire-compatible with
//! NRI v0.6.1 through v0.12.x, and its ttrpc bindings.
//!
//! - [`api`]: the messages (rust-protobuf 3), e.g. [`api::ConfigureRequest`],
//!   [`api::PodSandbox`], [`api::Event`].
//! - [`api_ttrpc`]: the async [`api_ttrpc::Plugin`] trait with
//!   [`api_ttrpc::create_plugin`] (server side, connection 1) and
//!   [`api_ttrpc::RuntimeClient`] (client side, connection 2).
//!
//! Generated code only; no logic. The generated `Plugin` trait answers
//! `NOT_FOUND` for every method that is not overridden; NRI v0.12 falls back
//! to `StateChange` only on `UNIMPLEMENTED`, so implementors must override the
//! v0.12 RPCs they do not handle and return `UNIMPLEMENTED` themselves.

include!(concat!(env!("OUT_DIR"), "/mod.rs"));

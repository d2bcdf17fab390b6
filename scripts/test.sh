#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the Wasm policies' own tests, the deploy manifests'
# offline validation (scripts/validate-deploy.sh), and the end-to-end
# tests against real containerd (2.1 and 1.7), runc and a registry. As root the end-to-end tests
# must run (KNM_REQUIRE_E2E=1 turns a skip into a failure); elsewhere they skip with the reason
# printed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# The example and hostile policies, built as components for the host's tests, and their own tests.
bash policies-wasm/build.sh --test
# deploy/: the Helm chart lints, renders and validates offline; the configs and RuntimeClasses agree.
bash scripts/validate-deploy.sh
if [ "$(id -u)" -eq 0 ]; then
  export KNM_REQUIRE_E2E="${KNM_REQUIRE_E2E:-1}"
fi
cargo test --workspace --locked
# The optional `kube` feature against fake API servers (`reconcile::l`: labels and Lease slots;
# `artifacts::pull_secrets`: pull secrets read through the API, with a fake registry;
# `artifacts::slots`: the store's side of the fleet's pull slots).
cargo test -p kata-nri-manager --features kube --locked --lib -- reconcile::l artifacts::pull_secrets artifacts::slots
# Fleet pull slots end to end: two `pull` processes against a real registry and a fake Lease API.
cargo test -p kata-nri-integration --features kube --locked --test pull_slots

#!/usr/bin/env bash
# The main job end to end on this machine, as root: real containerd 2.1 with NRI, the
# kata-nri-manager daemon registered as an NRI plugin, and a pod that asks for a runtime class.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --locked -p kata-nri-integration --bins
exec target/debug/demo

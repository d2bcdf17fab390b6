#!/usr/bin/env bash
# Builds the example and hostile policies as WebAssembly components into
# policies-wasm/target/wasm32-wasip2/release/*.wasm (the host's tests use them), after adding the
# wasm32-wasip2 target when it is missing. Pass --test to also run the guests' unit tests on the
# host target.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
# A caller's CARGO_TARGET_DIR (e.g. the main workspace's) must not redirect the guests' output.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
cargo build --locked --release --target wasm32-wasip2 --target-dir "$here/target"
if [ "${1:-}" = "--test" ]; then
  cargo test --locked --target-dir "$here/target" --workspace --exclude misbehave --exclude wrong-world
fi

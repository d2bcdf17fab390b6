#!/usr/bin/env bash
# The shim gate's two figures, for the build the image ships (static, musl: deploy/Containerfile)
# and for the host's default build (`cargo build --release`): the release binary's stripped size
# (target < 1.5 MiB) and the time the gate adds between the exec of the shim and the real shim
# running, for a sandbox start of a ready class (target < 1 ms p99), against a direct exec of the
# same shim. The measuring is plugin/shim-gate/benches/exec.rs; KNM_BENCH_ROUNDS sets the rounds.
#
#   bash scripts/bench-gate.sh
#   KNM_BENCH_RT=1 bash scripts/bench-gate.sh   # as root, on a shared machine: the runs (not the
#                                               # builds) under SCHED_FIFO, so other processes'
#                                               # scheduling stays out of the tail
set -euo pipefail
cd "$(dirname "$0")/.."

musl="$(uname -m)-unknown-linux-musl"
bench="$(cargo bench --locked -p kata-nri-shim-gate --bench exec --no-run --message-format=json \
  | sed -n 's/.*"executable":"\([^"]*\/exec-[^"]*\)".*/\1/p' | tail -1)"
[ -x "$bench" ] || { echo "bench-gate: cannot find the built bench" >&2; exit 1; }

gates=("$PWD/target/release/kata-nri-shim-gate")
if rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
  cargo build --locked --release -p kata-nri-shim-gate --bin kata-nri-shim-gate --target "$musl"
  gates=("$PWD/target/$musl/release/kata-nri-shim-gate" "${gates[@]}")
else
  echo "bench-gate: $musl is not installed (rustup target add $musl): measuring the host build only" >&2
fi

run=()
if [ "${KNM_BENCH_RT:-0}" = 1 ]; then
  run=(chrt -f 10)
fi
for gate in "${gates[@]}"; do
  echo
  KNM_BENCH_GATE="$gate" "${run[@]}" "$bench" --bench
done

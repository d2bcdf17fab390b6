#!/usr/bin/env bash
# Installs kata-nri-manager on a node without Kubernetes: the node-by-node Kata install procedure
# (install the binary and its config, make containerd serve the runtime classes, restart it once,
# keep the classes' artifacts installed) as one idempotent command. Run as root on each node:
#
#   sudo bash deploy/systemd/install.sh --binary target/release/kata-nri-manager \
#        --config /path/to/config.yaml [--gate-binary FILE] [--policies DIR [--policies-dir DIR]] [--no-start]
#   sudo bash deploy/systemd/install.sh --uninstall [--purge]
#
# --config is the node's whole config (deploy/examples/config.yaml shows every key), node-local
# keys included: it becomes /etc/kata-nri-manager/config.yaml, root-owned, mode 0600.
# --policies DIR copies DIR/*.wasm into the config's policies directory (keep the NN- prefixes).
# --gate-binary is the shim gate the daemon installs for onDemand classes (default
# kata-nri-shim-gate beside --binary); it goes beside the daemon, where the daemon looks for it.
# Steps: binaries to /usr/local/bin, config check, policies + policy check, `configure` (stanzas
# and NRI on, in one edit of containerd's config), one containerd restart if the config changed
# (refused unless containerd's unit has KillMode=process or mixed, so running pods survive), then
# the kata-nri-manager.service unit enabled and started. Guide: docs/operator-guide.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

binary=""
gate_binary=""
config=""
policies=""
# The config's policies.dir; pass --policies-dir when the config sets another.
policies_dir=/etc/kata-nri-manager/policies.d
start=1
uninstall=0
purge=0
prefix=/usr/local/bin
etc=/etc/kata-nri-manager
unit_dir=/etc/systemd/system
containerd_unit=containerd.service

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die() {
  echo "install.sh: $*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --gate-binary) gate_binary="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --policies) policies="$2"; shift 2 ;;
    --policies-dir) policies_dir="$2"; shift 2 ;;
    --containerd-unit) containerd_unit="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root: this changes containerd's config and installs a root service"
knm="$prefix/kata-nri-manager"
gate="$prefix/kata-nri-shim-gate"

# containerd's unit must spare the shims (and so the running pods) when it restarts.
check_kill_mode() {
  local mode
  mode="$(systemctl show -p KillMode --value "$containerd_unit" 2>/dev/null || true)"
  case "$mode" in
    process | mixed) ;;
    *) die "$containerd_unit has KillMode=${mode:-unknown}: restarting it would kill every pod on this node. Set KillMode=process in a drop-in (systemctl edit $containerd_unit), then run this again" ;;
  esac
}

restart_containerd() {
  check_kill_mode
  echo "restarting $containerd_unit (once) so it serves the new runtime classes"
  systemctl restart "$containerd_unit"
}

if ((uninstall)); then
  systemctl disable --now kata-nri-manager.service 2>/dev/null || true
  if [ -x "$knm" ] && [ -f "$etc/config.yaml" ]; then
    # Removes every stanza we wrote; restarting is ours to do (see restart_containerd).
    out="$("$knm" uninstall --config "$etc/config.yaml" --no-restart --output json)"
    echo "$out"
    if grep -q '"result": "restartPending"' <<<"$out"; then restart_containerd; fi
  fi
  rm -f "$unit_dir/kata-nri-manager.service"
  systemctl daemon-reload
  if ((purge)); then
    rm -f "$knm" "$gate"
    rm -rf "$etc" /var/lib/kata-nri-manager
    echo "purged; the artifacts under the config's artifactsDir (default /opt/kata-nri-manager) are left for you to remove"
  fi
  exit 0
fi

[ -n "$binary" ] || die "--binary FILE is required (build: cargo build --release -p kata-nri-manager -p kata-nri-shim-gate)"
[ -n "$config" ] || die "--config FILE is required (start from deploy/examples/config.yaml)"
"$binary" --version >/dev/null || die "$binary --version failed"
gate_binary="${gate_binary:-$(dirname "$binary")/kata-nri-shim-gate}"
[ -x "$gate_binary" ] || die "$gate_binary is not an executable file: build it with \`cargo build --release -p kata-nri-shim-gate\` or pass --gate-binary FILE"
"$gate_binary" --version >/dev/null || die "$gate_binary --version failed"

install -d -m 0755 "$etc"
install -d -m 0700 "$etc/pull-secrets"
# Atomic replacement: a running daemon may be executing the old binary. The gate first, so the
# daemon finds it beside itself when it starts.
install -m 0755 -o root -g root "$gate_binary" "$prefix/.kata-nri-shim-gate.new"
mv -f "$prefix/.kata-nri-shim-gate.new" "$gate"
install -m 0755 -o root -g root "$binary" "$prefix/.kata-nri-manager.new"
mv -f "$prefix/.kata-nri-manager.new" "$knm"

tmp="$(mktemp "$etc/.config.yaml.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
install -m 0600 -o root -g root "$config" "$tmp"
"$knm" config check --config "$tmp" || die "$config does not pass config check (above); nothing changed but the binaries"
mv -f "$tmp" "$etc/config.yaml"
trap - EXIT

install -d -m 0755 "$policies_dir"
if [ -n "$policies" ]; then
  for wasm in "$policies"/*.wasm; do
    [ -e "$wasm" ] || die "no .wasm files in $policies"
    install -m 0644 -o root -g root "$wasm" "$policies_dir/"
  done
fi
"$knm" policy check "$policies_dir" --config "$etc/config.yaml"

# The stanzas and NRI, in one edit; the restart is done here, after the KillMode check.
out="$("$knm" configure --config "$etc/config.yaml" --no-restart --output json)"
echo "$out"
if grep -q '"result": "restartPending"' <<<"$out"; then restart_containerd; fi

install -m 0644 "$here/kata-nri-manager.service" "$unit_dir/kata-nri-manager.service"
systemctl daemon-reload
if ((start)); then
  systemctl enable kata-nri-manager.service
  systemctl restart kata-nri-manager.service
  systemctl --no-pager --lines=5 status kata-nri-manager.service || true
else
  echo "installed; start with: systemctl enable --now kata-nri-manager.service"
fi

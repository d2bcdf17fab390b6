#!/usr/bin/env bash
# Installs kata-nri-manager as a pre-registered NRI plugin: containerd starts it itself, from NRI's
# plugin_path, each time containerd starts (no DaemonSet, no systemd unit of its own).
#
#   sudo bash deploy/nri/install.sh --binary target/release/kata-nri-manager --config my-config.yaml
#   sudo bash deploy/nri/install.sh --uninstall
#
# Puts the binary at <plugin-path>/NN-kata-nri-manager (default /opt/nri/plugins/50-…), the shim
# gate beside it as <plugin-path>/kata-nri-shim-gate (not executable: see below) and the config at
# <conf-dir>/NN-kata-nri-manager.conf (default /etc/nri/conf.d/50-…), which containerd hands to
# the plugin through NRI Configure. The gate comes from --gate-binary, default kata-nri-shim-gate
# beside --binary. containerd must have NRI enabled with those paths (printed at the end;
# docs/operator-guide.md, "Pre-registered NRI plugin"). A launched plugin gets no stdout/stderr:
# it logs to /var/log/kata-nri-manager/NN-kata-nri-manager.log.
set -euo pipefail

binary=""
gate_binary=""
config=""
index=50
plugin_path=/opt/nri/plugins
conf_dir=/etc/nri/conf.d
uninstall=0

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --binary FILE --gate-binary FILE --config FILE --index NN --plugin-path DIR --conf-dir DIR --uninstall"
}

while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --gate-binary) gate_binary="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --index) index="$2"; shift 2 ;;
    --plugin-path) plugin_path="$2"; shift 2 ;;
    --conf-dir) conf_dir="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

die() {
  echo "install.sh: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root: the plugin runs as root inside containerd"
[[ "$index" =~ ^[0-9][0-9]$ ]] || die "--index must be exactly two digits (NRI orders plugins by it), got $index"
name="$index-kata-nri-manager"
plugin="$plugin_path/$name"
conf="$conf_dir/$name.conf"
# The daemon installs the gate it finds beside its own executable. NRI takes every executable file
# in plugin_path for a plugin and starts none when one is not named NN-name, so this copy is not
# executable; the daemon makes its own copy in gate.dir executable.
gate="$plugin_path/kata-nri-shim-gate"

if ((uninstall)); then
  # containerd keeps a launched plugin running until it stops NRI; the next containerd start no
  # longer launches it. Stanzas written by `configure` stay: remove them with
  # `kata-nri-manager uninstall --config …` first if you want them gone.
  rm -f "$plugin" "$conf"
  removed="$plugin and $conf"
  # Another index of the plugin in the same directory still needs the gate beside it.
  if ! compgen -G "$plugin_path/[0-9][0-9]-kata-nri-manager" >/dev/null; then
    rm -f "$gate"
    removed="$plugin, $gate and $conf"
  fi
  echo "removed $removed; containerd stops launching the plugin from its next start"
  exit 0
fi

[ -n "$binary" ] || die "--binary FILE is required (e.g. target/release/kata-nri-manager)"
[ -x "$binary" ] || die "$binary is not an executable file"
"$binary" --version >/dev/null || die "$binary --version failed: not a kata-nri-manager binary for this machine?"
gate_binary="${gate_binary:-$(dirname "$binary")/kata-nri-shim-gate}"
[ -x "$gate_binary" ] || die "$gate_binary is not an executable file: build it with \`cargo build --release -p kata-nri-shim-gate\` or pass --gate-binary FILE"
"$gate_binary" --version >/dev/null || die "$gate_binary --version failed: not a kata-nri-shim-gate binary for this machine?"

if [ -n "$config" ]; then
  # The .conf holds node-local keys (paths containerd will execute), so it is root's alone.
  tmp_conf="$(mktemp "$conf_dir/.$name.conf.XXXXXX" 2>/dev/null || { mkdir -p "$conf_dir" && mktemp "$conf_dir/.$name.conf.XXXXXX"; })"
  trap 'rm -f "$tmp_conf"' EXIT
  install -m 0600 -o root -g root "$config" "$tmp_conf"
  "$binary" config check --config "$tmp_conf" || die "$config does not pass config check (above)"
  # containerd never relaunches a plugin that exits, and stops it when containerd itself stops:
  # a launched instance must not restart containerd itself (docs/daemon.md, "Launched
  # (pre-registered) mode").
  if ! grep -v '^[[:space:]]*#' "$tmp_conf" | grep -Eq 'method: *none'; then
    echo "install.sh: warning: $config does not set containerd.restart {method: none}; a launched" \
      "plugin that restarts containerd kills itself. Set it, and restart containerd yourself" \
      "when \`kata-nri-manager status\` reports a pending restart." >&2
  fi
  mv -f "$tmp_conf" "$conf"
  trap - EXIT
fi

install -d -m 0755 "$plugin_path"
install -d -m 0700 /var/log/kata-nri-manager
# Atomic replacement: containerd may be reading the directory.
# The gate first, so the plugin finds it beside itself when containerd launches it.
install -m 0644 -o root -g root "$gate_binary" "$plugin_path/.kata-nri-shim-gate.new"
mv -f "$plugin_path/.kata-nri-shim-gate.new" "$gate"
install -m 0755 -o root -g root "$binary" "$plugin_path/.$name.new"
mv -f "$plugin_path/.$name.new" "$plugin"
echo "installed $plugin, $gate${config:+ and $conf}"

cat <<CONF

containerd launches plugins from these paths when its NRI is enabled (containerd 1.7: off by
default; \`kata-nri-manager configure\` turns it on). Its config must contain (version 2 and 3
files alike; these are containerd's defaults, so an absent section is fine on 2.x):

  [plugins."io.containerd.nri.v1.nri"]
    disable = false
    disable_connections = false
    plugin_config_path = "$conf_dir"
    plugin_path = "$plugin_path"
    plugin_registration_timeout = "5s"
    plugin_request_timeout = "2s"
    socket_path = "/var/run/nri/nri.sock"

containerd launches the plugin at its next start: restart containerd (with KillMode=process or
mixed in its unit, so running pods survive). Check with:
  tail /var/log/kata-nri-manager/$name.log
CONF

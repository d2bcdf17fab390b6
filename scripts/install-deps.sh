#!/usr/bin/env bash
# Installs what building and testing kata-nri-manager needs on a fresh Debian bookworm machine
# (run as root): protoc for the CRI client, dbus-daemon for the systemd restart tests, qemu for
# the guest boot tests, the Rust components and the wasm32-wasip2 target, and the real
# containerd / runc / registry / oras / cosign binaries and the guest's kernel and busybox
# (unpacked into a cache, never installed system-wide). Idempotent: a second run takes about a
# second.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
# The systemd restart tests run a private bus with a fake systemd on it. Debian's dbus-daemon
# package has the daemon alone (the dbus package adds the system bus's service).
[ -x /usr/bin/dbus-daemon ] || missing+=(dbus-daemon)
# scripts/validate-deploy.sh installs helm and kubernetes-validate into a venv; Debian ships
# python3 without ensurepip, which `python3 -m venv` needs, until python3-venv is installed.
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# The guest boot tests run a real VM under KVM: bookworm's qemu (7.2). The guest's kernel and
# busybox are unpacked into the cache by fetch-deps.sh, never installed; build-guest.sh writes the
# initramfs with python3 (no cpio needed).
[ -x /usr/bin/qemu-system-x86_64 ] || missing+=(qemu-system-x86)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Policies are WebAssembly components (WASI preview 2).
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

bash integration/scripts/fetch-deps.sh

#!/usr/bin/env bash
# Fetches the binaries the integration tests run (Debian packages only) into a cache and builds
# the local pause image and the test guest (kernel + initramfs). Idempotent: with the cache complete, a run downloads nothing (~1 s).
#
#   bash integration/scripts/fetch-deps.sh
#
# Cache: ${KNM_CACHE:-<repo>/.cache/e2e}. Writes <cache>/env.sh (absolute paths, see README).
# Nothing under /etc/apt or /var/lib/apt changes: apt runs with a private sources list, lists
# dir, cache dir and state dir, and only `apt-get download`s (no install).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KNM_CACHE:-$repo/.cache/e2e}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

log() { printf 'fetch-deps: %s\n' "$*" >&2; }
die() { printf 'fetch-deps: error: %s\n' "$*" >&2; exit 1; }

# One run at a time per cache.
exec 9>"$cache/.lock"
flock 9

# name | package | suite | extra packages extracted into the same prefix (libraries) | expected
# version prefix (the suites move on: fail clearly rather than hand the tests another version).
# A package listed in `metas` is a metapackage: what is downloaded and unpacked is the package it
# depends on (linux-image-amd64 -> linux-image-6.1.0-NN-amd64, same version); the version prefix
# applies to that one. Nothing is installed: a kernel package is only unpacked.
specs=(
  "containerd_2_1|containerd|sid||2.1."
  "containerd_1_7|containerd|trixie||1.7."
  "containerd_1_6|containerd|bookworm||1.6."
  "runc|runc|bookworm||1.1."
  "registry|docker-registry|trixie||2.8."
  "oras|oras|trixie||1.2."
  # Signs artifacts in the test registry (legacy `sha256-<hex>.sig` signatures); sid's 3.x writes
  # the new bundle format by default, bookworm has none.
  "cosign|cosign|trixie||2.5."
  "htpasswd|apache2-utils|bookworm|libapr1 libaprutil1|"
  "kernel|linux-image-amd64|bookworm||6.1."
  "busybox|busybox-static|bookworm||1.35."
)
metas=(linux-image-amd64)
is_meta() { [[ " ${metas[*]} " == *" $1 "* ]]; }

stamps=$cache/stamps
mkdir -p "$stamps" "$cache/pkgs"

missing=()
for spec in "${specs[@]}"; do
  IFS='|' read -r name pkg suite extra expect <<<"$spec"
  if [[ -s $stamps/$name ]] && [[ -d $(cat "$stamps/$name") ]]; then
    continue
  fi
  missing+=("$spec")
done

# ---------------------------------------------------------------------------------------------
# Private apt setup.
# ---------------------------------------------------------------------------------------------
apt_dir=$cache/apt
apt_opts=()

debian_source() {
  # Prints "URI SIGNED_BY" of the Debian archive (not -security) the machine's apt uses.
  local f uri="" signed="" line key val suites="" stanza_uri="" stanza_signed=""
  flush() {
    if [[ -z $uri && -n $stanza_uri && $stanza_uri != *security* && $suites =~ (^|[[:space:]])[a-z]+($|[[:space:]]) ]]; then
      uri=$stanza_uri signed=$stanza_signed
    fi
    stanza_uri="" stanza_signed="" suites=""
  }
  shopt -s nullglob
  for f in /etc/apt/sources.list.d/*.sources; do
    while IFS= read -r line || [[ -n $line ]]; do
      line=${line%%#*}
      if [[ -z ${line//[[:space:]]/} ]]; then flush; continue; fi
      key=${line%%:*} val=${line#*:}
      val=$(echo "$val" | xargs)
      case ${key,,} in
        uris) stanza_uri=${val%% *} ;;
        suites) suites=$val ;;
        signed-by) stanza_signed=$val ;;
      esac
    done <"$f"
    flush
  done
  # Fallback: one-line format.
  if [[ -z $uri ]]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [[ -f $f ]] || continue
      while read -r typ rest; do
        [[ $typ == deb ]] || continue
        rest=$(sed -E 's/\[[^]]*\]//' <<<"$rest")
        read -r stanza_uri _ <<<"$rest"
        if [[ $stanza_uri != *security* && $stanza_uri == *debian* ]]; then uri=$stanza_uri; break 2; fi
      done <"$f"
    done
  fi
  shopt -u nullglob
  [[ -n $uri ]] || return 1
  [[ -n $signed && -f $signed ]] || signed=/usr/share/keyrings/debian-archive-keyring.gpg
  echo "$uri $signed"
}

setup_apt() {
  local src uri signed
  src=$(debian_source) || die "no Debian archive URI found in /etc/apt/sources.list.d/*.sources"
  read -r uri signed <<<"$src"
  mkdir -p "$apt_dir"/{lists/partial,cache/archives/partial,state,sources.list.d,preferences.d,debs}
  {
    for suite in bookworm trixie sid; do
      echo "deb [signed-by=$signed] $uri $suite main"
    done
  } >"$apt_dir/sources.list"
  : >"$apt_dir/preferences"
  apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::Etc::Preferences=$apt_dir/preferences"
    -o "Dir::Etc::PreferencesParts=$apt_dir/preferences.d"
    -o "Dir::State=$apt_dir/state"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=/var/lib/dpkg/status"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Cache::archives=$apt_dir/cache/archives"
    -o "Dir::Cache::pkgcache=$apt_dir/cache/pkgcache.bin"
    -o "Dir::Cache::srcpkgcache=$apt_dir/cache/srcpkgcache.bin"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false"
  )
  log "apt-get update (private lists: bookworm, trixie, sid from $uri)"
  apt-get "${apt_opts[@]}" -qq update >&2 || die "apt-get update failed"
}

sanitize() { tr -c 'A-Za-z0-9._+~\n-' '_' <<<"$1"; }

if ((${#missing[@]})); then
  setup_apt
  # Resolve every missing package/suite to a version with one apt-cache call, then download
  # everything with one apt-get call (apt re-reads ~30 MB of lists per invocation).
  names=()
  for spec in "${missing[@]}"; do
    IFS='|' read -r name pkg suite extra expect <<<"$spec"
    read -ra extras <<<"$extra"
    names+=("$pkg" "${extras[@]}")
  done
  madison=$(apt-cache "${apt_opts[@]}" madison "${names[@]}")
  version_in() { # PKG SUITE
    awk -F'|' -v p="$1" -v s=" $2/" '{gsub(/ /,"",$1); gsub(/ /,"",$2)} $1==p && index($3,s) {print $2; exit}' <<<"$madison"
  }
  # Metapackages: replace each by the package its version depends on (one `apt-cache show` and
  # one more `madison` for all of them, only when one is missing).
  meta_specs=() meta_wanted=()
  for spec in "${missing[@]}"; do
    IFS='|' read -r name pkg suite extra expect <<<"$spec"
    if is_meta "$pkg"; then
      v=$(version_in "$pkg" "$suite")
      [[ -n $v ]] || die "$pkg not found in $suite"
      meta_specs+=("$spec") meta_wanted+=("$pkg=$v")
    fi
  done
  if ((${#meta_specs[@]})); then
    shown=$(apt-cache "${apt_opts[@]}" show "${meta_wanted[@]}")
    real_names=() resolved=()
    for spec in "${missing[@]}"; do
      IFS='|' read -r name pkg suite extra expect <<<"$spec"
      if is_meta "$pkg"; then
        v=$(version_in "$pkg" "$suite")
        # The stanza of PKG at version V: its first dependency, e.g. "linux-image-6.1.0-48-amd64".
        real=$(awk -v p="$pkg" -v v="$v" '
          /^Package: / {pk=$2} /^Version: / {ve=$2}
          /^Depends: / && pk==p && ve==v {sub(/^Depends: /,""); split($0,d,/[ ,(|]+/); print d[1]; exit}' <<<"$shown")
        [[ -n $real ]] || die "cannot tell what $pkg $v ($suite) depends on"
        log "$pkg $v ($suite) -> $real"
        real_names+=("$real")
        spec="$name|$real|$suite|$extra|$expect"
      fi
      resolved+=("$spec")
    done
    missing=("${resolved[@]}")
    madison+=$'\n'$(apt-cache "${apt_opts[@]}" madison "${real_names[@]}")
  fi
  wanted=()
  for spec in "${missing[@]}"; do
    IFS='|' read -r name pkg suite extra expect <<<"$spec"
    for p in "$pkg" $extra; do
      v=$(version_in "$p" "$suite")
      [[ -n $v ]] || die "$p not found in $suite"
      wanted+=("$p=$v")
    done
    v=$(version_in "$pkg" "$suite")
    [[ ${v#*:} == "$expect"* ]] ||
      die "$pkg in $suite is now $v, the tests expect ${expect}x: update integration/scripts/fetch-deps.sh"
  done
  debs=$apt_dir/debs
  rm -rf "$debs"
  mkdir -p "$debs"
  log "downloading ${wanted[*]}"
  (cd "$debs" && apt-get "${apt_opts[@]}" -qq download "${wanted[@]}" >&2) ||
    die "apt-get download failed"
  for spec in "${missing[@]}"; do
    IFS='|' read -r name pkg suite extra expect <<<"$spec"
    version=$(version_in "$pkg" "$suite")
    prefix=$cache/pkgs/${pkg}_$(sanitize "$version")
    rm -rf "$prefix" "$prefix.tmp"
    mkdir -p "$prefix.tmp"
    for p in "$pkg" $extra; do
      v=$(version_in "$p" "$suite")
      # apt names the file PKG_VERSION_ARCH.deb, the epoch's colon as %3a (busybox-static_1%3a1.35…)
      found=("$debs/${p}_${v/:/%3a}"_*.deb)
      [[ -f ${found[0]} ]] || die "no .deb for $p $v in $debs"
      if [[ $name == kernel ]]; then
        # Only /boot (vmlinuz, config, System.map) is used; the modules are ~390 MB unpacked.
        dpkg-deb --fsys-tarfile "${found[0]}" | tar -x -C "$prefix.tmp" ./boot
      else
        dpkg-deb -x "${found[0]}" "$prefix.tmp"
      fi
    done
    echo "$version" >"$prefix.tmp/.version"
    mv "$prefix.tmp" "$prefix"
    echo "$prefix" >"$stamps/$name"
    log "$pkg $version ($suite) -> $prefix"
  done
  # The lists (~250 MB unpacked) are only needed when something is missing, and then they are
  # fetched again: keep the cache small for CI.
  rm -rf "$debs" "$apt_dir/lists" "$apt_dir/cache"
fi

prefix_of() { cat "$stamps/$1"; }
version_of() { cat "$(prefix_of "$1")/.version"; }

# htpasswd needs libapr1/libaprutil1, which the machine may not have: a wrapper points the loader
# at the libraries extracted next to it.
ht=$(prefix_of htpasswd)
if [[ ! -x $ht/bin/htpasswd ]]; then
  mkdir -p "$ht/bin"
  cat >"$ht/bin/htpasswd" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$ht/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo "$(uname -m)-linux-gnu")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$ht/usr/bin/htpasswd" "\$@"
WRAP
  chmod +x "$ht/bin/htpasswd"
fi

# ---------------------------------------------------------------------------------------------
# Pause image (rebuilt when its sources change).
# ---------------------------------------------------------------------------------------------
pause_tar=$cache/pause/pause-3.10.oci.tar
pause_key=$(cat "$here/build-pause.sh" "$here/pause.c" | sha256sum | cut -d' ' -f1)
if [[ ! -f $pause_tar || $(cat "$cache/pause/.key" 2>/dev/null) != "$pause_key" ]]; then
  log "building the pause image"
  bash "$here/build-pause.sh" "$pause_tar" registry.k8s.io/pause:3.10
  echo "$pause_key" >"$cache/pause/.key"
fi

# ---------------------------------------------------------------------------------------------
# Test guest: Debian's kernel (as vmlinuz, and decompressed as vmlinux for a PVH boot) and an
# initramfs whose /init is busybox printing a marker and powering off (build-guest.sh rebuilds
# only when an input changes).
# ---------------------------------------------------------------------------------------------
kernel_src=$(compgen -G "$(prefix_of kernel)/boot/vmlinuz-*" | head -n1) ||
  die "no boot/vmlinuz-* in $(prefix_of kernel)"
busybox_src=$(prefix_of busybox)/bin/busybox
guest_dir=$cache/guest
bash "$here/build-guest.sh" "$guest_dir" "$kernel_src" "$busybox_src"
qemu=/usr/bin/qemu-system-x86_64

# ---------------------------------------------------------------------------------------------
# Check that everything runs here.
# ---------------------------------------------------------------------------------------------
check() {
  local out
  out=$("$@" 2>&1) || die "'$*' does not run on this machine: $out"
  printf '  %s\n' "$(tr -s '\n\t ' '   ' <<<"$out" | cut -c1-150)" >&2
}
for c in containerd_2_1 containerd_1_7 containerd_1_6; do
  d=$(prefix_of $c)/usr/bin
  check "$d/containerd" --version
  check "$d/ctr" --version
  check "$d/containerd-shim-runc-v2" -v
done
check "$(prefix_of runc)/usr/sbin/runc" --version
check "$(prefix_of registry)/usr/bin/docker-registry" --version
check "$(prefix_of oras)/usr/bin/oras" version
check "$(prefix_of cosign)/usr/bin/cosign" version --json
check "$ht/bin/htpasswd" -nbB user pass
check "$busybox_src" echo "busybox $(version_of busybox)"
printf '  guest: %s: vmlinuz %s B, vmlinux %s B, initrd.img %s B\n' "$(basename "$kernel_src")" \
  "$(stat -c %s "$guest_dir/vmlinuz")" "$(stat -c %s "$guest_dir/vmlinux")" \
  "$(stat -c %s "$guest_dir/initrd.img")" >&2
if [[ -x $qemu ]]; then
  check "$qemu" --version
else
  log "no $qemu (scripts/install-deps.sh installs qemu-system-x86): KNM_QEMU is not set"
fi

# ---------------------------------------------------------------------------------------------
# env.sh
# ---------------------------------------------------------------------------------------------
tmp_env=$cache/env.sh.tmp
{
  echo "# Generated by integration/scripts/fetch-deps.sh; source it or let the harness read it."
  printf "export KNM_CACHE='%s'\n" "$cache"
  printf "export KNM_CONTAINERD_2_1='%s'\n" "$(prefix_of containerd_2_1)/usr"
  printf "export KNM_CONTAINERD_2_1_VERSION='%s'\n" "$(version_of containerd_2_1)"
  printf "export KNM_CONTAINERD_1_7='%s'\n" "$(prefix_of containerd_1_7)/usr"
  printf "export KNM_CONTAINERD_1_7_VERSION='%s'\n" "$(version_of containerd_1_7)"
  printf "export KNM_CONTAINERD_1_6='%s'\n" "$(prefix_of containerd_1_6)/usr"
  printf "export KNM_CONTAINERD_1_6_VERSION='%s'\n" "$(version_of containerd_1_6)"
  printf "export KNM_RUNC='%s'\n" "$(prefix_of runc)/usr/sbin/runc"
  printf "export KNM_REGISTRY='%s'\n" "$(prefix_of registry)/usr/bin/docker-registry"
  printf "export KNM_ORAS='%s'\n" "$(prefix_of oras)/usr/bin/oras"
  printf "export KNM_COSIGN='%s'\n" "$(prefix_of cosign)/usr/bin/cosign"
  printf "export KNM_HTPASSWD='%s'\n" "$ht/bin/htpasswd"
  printf "export KNM_PAUSE_IMAGE='%s'\n" "$pause_tar"
  printf "export KNM_PAUSE_IMAGE_REF='%s'\n" "registry.k8s.io/pause:3.10"
  printf "export KNM_GUEST_KERNEL='%s'\n" "$guest_dir/vmlinuz"
  printf "export KNM_GUEST_VMLINUX='%s'\n" "$guest_dir/vmlinux"
  printf "export KNM_GUEST_INITRD='%s'\n" "$guest_dir/initrd.img"
  if [[ -x $qemu ]]; then printf "export KNM_QEMU='%s'\n" "$qemu"; fi
} >"$tmp_env"
mv "$tmp_env" "$cache/env.sh"
log "wrote $cache/env.sh"

#!/usr/bin/env bash
# Builds the e2e sandbox ("pause") image locally, without any registry:
# a static binary (pause.c) packed as an OCI image archive (oci-layout, index.json,
# manifest, config, one gzip layer) named registry.k8s.io/pause:3.10.
#
#   build-pause.sh OUT_TAR [IMAGE_REF]
#
# The result is reproducible (fixed mtimes, owners, gzip -n): same inputs, same digests.
# Needs: gcc with a static libc (libc6-dev), tar (GNU), gzip, sha256sum.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build-pause.sh OUT_TAR [IMAGE_REF]}
ref=${2:-registry.k8s.io/pause:3.10}

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/oci/blobs/sha256"

gcc -static -Os -s -o "$work/rootfs/pause" "$here/pause.c"
"$work/rootfs/pause" -v >/dev/null

tar_opts=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu)

# Layer: just /pause.
tar "${tar_opts[@]}" -C "$work/rootfs" -cf "$work/layer.tar" pause
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
layer_digest=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$work/oci/blobs/sha256/$layer_digest"

# put_blob JSON -> prints "digest size"
put_blob() {
  local f="$work/blob.json" d s
  printf '%s' "$1" >"$f"
  d=$(sha256sum "$f" | cut -d' ' -f1)
  s=$(stat -c %s "$f")
  mv "$f" "$work/oci/blobs/sha256/$d"
  echo "$d $s"
}

config='{"architecture":"'"$arch"'","os":"linux","config":{"User":"65535:65535","Entrypoint":["/pause"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},"history":[{"created_by":"kata-nri-manager integration/scripts/build-pause.sh"}]}'
read -r config_digest config_size < <(put_blob "$config")

manifest='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_digest"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer_digest"'","size":'"$layer_size"'}]}'
read -r manifest_digest manifest_size < <(put_blob "$manifest")

# How `ctr images import` (1.6.20, 1.7.24, 2.1.9 alike) names the image: `io.containerd.image.name`
# first; else `org.opencontainers.image.ref.name` when it is a full reference; a tag-only ref.name
# ("3.10") becomes "import-<date>:3.10". Both carry the full reference here.
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_digest"'","size":'"$manifest_size"',"platform":{"architecture":"'"$arch"'","os":"linux"},"annotations":{"io.containerd.image.name":"'"$ref"'","org.opencontainers.image.ref.name":"'"$ref"'"}}]}' >"$work/oci/index.json"

mkdir -p "$(dirname "$out")"
tar "${tar_opts[@]}" -C "$work/oci" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "built $out: $ref manifest sha256:$manifest_digest" >&2

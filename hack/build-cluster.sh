#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and helm from
# their Go modules (through the Go module proxy) into $LORAPLANE_HOME/bin/<component>-<version>/.
# Idempotent: a binary that exists is not rebuilt, so a warm cache takes well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
home=${LORAPLANE_HOME:-$HOME/.cache/loraplane}
work=$home/build
mkdir -p "$work"

step() { echo "[cluster-build] $*" >&2; }
fail() { echo "[cluster-build] FAILED at step: $1" >&2; echo "[cluster-build] see $2" >&2; tail -n 30 "$2" >&2; exit 1; }

# wrapper_module DIR MODULE VERSION [REPLACES...]: a throwaway main module that requires MODULE.
# k8s.io/kubernetes replaces its staging modules with ./staging paths that do not exist inside the
# module zip, so the wrapper pins each staging module to its published v0.x twin instead.
wrapper_module() {
  local dir=$1 module=$2 version=$3
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<MOD
module loraplane.dev/hack/build

go 1.26

require $module $version
MOD
}

build() { # build NAME MODULE VERSION PACKAGE [LDFLAGS]
  local name=$1 module=$2 version=$3 pkg=$4 ldflags=${5:-}
  local out=$home/bin/$name-$version/$name
  if [[ -x $out ]]; then return 0; fi
  local dir=$work/$name-$version log=$work/$name-$version.log
  step "building $name $version from $module (log: $log)"
  wrapper_module "$dir" "$module" "$version"
  if [[ $module == k8s.io/kubernetes ]]; then
    local minor=${version#v1.}
    local gomod
    gomod=$(cd "$dir" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    grep -oE '^\s+k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | while read -r m; do
      echo "replace $m => $m v0.$minor" >>"$dir/go.mod"
    done
  fi
  (cd "$dir" && cat >"$dir/tools.go" <<GO
//go:build tools

package tools

import _ "$pkg"
GO
   go mod tidy) >"$log" 2>&1 || fail "resolve modules for $name" "$log"
  mkdir -p "$(dirname "$out")"
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg") >>"$log" 2>&1 \
    || fail "go build $pkg" "$log"
  # The binary must embed exactly the pinned module: a wrapper that lost its require line would
  # silently build whatever is newest.
  if ! go version -m "$out.tmp" | grep -qE "^[[:space:]]+(mod|dep)[[:space:]]+$module[[:space:]]+$version([[:space:]]|$)"; then
    fail "check that $name embeds $module $version" "$log"
  fi
  mv "$out.tmp" "$out"
  step "built $out"
}

kver=$KUBERNETES_VERSION
kldflags="-X k8s.io/component-base/version.gitVersion=$kver -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$kver" | cut -d. -f2) -X k8s.io/client-go/pkg/version.gitVersion=$kver"
start=$(date +%s)
build etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes "$kver" k8s.io/kubernetes/cmd/kube-apiserver "$kldflags"
build kube-controller-manager k8s.io/kubernetes "$kver" k8s.io/kubernetes/cmd/kube-controller-manager "$kldflags"
build kube-scheduler k8s.io/kubernetes "$kver" k8s.io/kubernetes/cmd/kube-scheduler "$kldflags"
build kubectl k8s.io/kubernetes "$kver" k8s.io/kubernetes/cmd/kubectl "$kldflags"
build helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
step "all binaries present ($(( $(date +%s) - start )) s)"

#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and helm from
# their Go modules (through the Go module proxy) into $LORAPLANE_HOME/bin/<component>-<version>/.
# Idempotent: a binary that exists is not rebuilt, so a warm cache takes well under a second.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib/gobuild.sh
source "$here/lib/gobuild.sh"
home=${LORAPLANE_HOME:-$HOME/.cache/loraplane}
work=$home/build
mkdir -p "$work"

step() { echo "[cluster-build] $*" >&2; }
fail() { echo "[cluster-build] FAILED at step: $1" >&2; echo "[cluster-build] see $2" >&2; tail -n 30 "$2" >&2; exit 1; }

kver=$KUBERNETES_VERSION
kldflags="-X k8s.io/component-base/version.gitVersion=$kver -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$kver" | cut -d. -f2) -X k8s.io/client-go/pkg/version.gitVersion=$kver"
start=$(date +%s)
gobuild etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3
for component in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  gobuild --ldflags "$kldflags" "$component" k8s.io/kubernetes "$kver" "k8s.io/kubernetes/cmd/$component"
done
gobuild --ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
step "all binaries present ($(( $(date +%s) - start )) s)"

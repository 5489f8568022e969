# shellcheck shell=bash
# home and work are set by the sourcing script:
# shellcheck disable=SC2154
# Builds a Go program from its published module, through the Go module proxy, into
# $home/bin/<name>-<version>/<name> (sourced by hack/build-cluster.sh and hack/build-tools.sh).
# Expects the caller to define step MESSAGE and fail STEP LOG, and to set home ($LORAPLANE_HOME)
# and work (scratch directory for wrapper modules and build logs).
#
# A binary that exists is not rebuilt, so a warm cache costs a stat per tool.

# gobuild_wrapper DIR MODULE VERSION PACKAGE...: a throwaway main module that requires MODULE at
# exactly VERSION, plus a tools.go importing each PACKAGE so that `go mod tidy` resolves all they
# need (go build alone would refuse: missing go.sum entries).
# A module's own replace directives apply only when it is the main module, so the wrapper repeats
# those that point at another published module (helm-unittest builds against its fork of
# yaml-jsonpath, and does not compile without it). Replaces with a local path cannot be repeated:
# k8s.io/kubernetes replaces its staging modules with ./staging paths that do not exist inside
# the module zip, so the wrapper pins each staging module to its published v0.x twin instead;
# elsewhere (the Prometheus Operator's ./pkg/apis) the required published version is the same code.
gobuild_wrapper() {
  local dir=$1 module=$2 version=$3
  shift 3
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<MOD
module loraplane.dev/hack/build

go 1.26

require $module $version
MOD
  local gomod
  gomod=$(cd "$dir" && go mod download -json "$module@$version" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])') || return 1
  go mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old, new = r["Old"], r["New"]
    if new.get("Version"):  # a published module, not a local directory
        print("replace", old["Path"], old.get("Version", ""),
              "=>", new["Path"], new["Version"])
' >>"$dir/go.mod" || return 1
  if [[ $module == k8s.io/kubernetes ]]; then
    local minor=${version#v1.}
    grep -oE '^\s+k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | while read -r m; do
      echo "replace $m => $m v0.$minor" >>"$dir/go.mod"
    done
  fi
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "%s"\n' "$@"
    printf ')\n'
  } >"$dir/tools.go"
  (cd "$dir" && go mod tidy)
}

# gobuild [--tags TAGS] [--ldflags FLAGS] NAME MODULE VERSION PACKAGE
#   Builds PACKAGE (a main package inside MODULE) as $home/bin/NAME-VERSION/NAME, statically
#   (CGO_ENABLED=0), stripped and with -trimpath. TAGS is a comma-separated build tag list.
#   Prints nothing when the binary is already there.
gobuild() {
  local tags="" ldflags=""
  while [[ $# -gt 0 ]]; do
    case $1 in
      --tags) tags=$2; shift 2 ;;
      --ldflags) ldflags=$2; shift 2 ;;
      *) break ;;
    esac
  done
  local name=$1 module=$2 version=$3 pkg=$4
  local out=$home/bin/$name-$version/$name
  if [[ -x $out ]]; then return 0; fi
  local dir=$work/$name-$version log=$work/$name-$version.log t0=$SECONDS
  step "building $name $version from $module${tags:+ (tags $tags)} (log: $log)"
  gobuild_wrapper "$dir" "$module" "$version" "$pkg" >"$log" 2>&1 || fail "resolve modules for $name" "$log"
  mkdir -p "$(dirname "$out")"
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath ${tags:+-tags "$tags"} -ldflags "-s -w $ldflags" \
    -o "$out.tmp" "$pkg") >>"$log" 2>&1 || fail "go build $pkg" "$log"
  # The binary must embed exactly the pinned module: a wrapper that lost its require line (or a
  # tidy that upgraded it) would silently build whatever is newest.
  if ! go version -m "$out.tmp" | grep -qE "^[[:space:]]+(mod|dep)[[:space:]]+${module}[[:space:]]+${version}([[:space:]]|$)"; then
    go version -m "$out.tmp" >>"$log" 2>&1
    fail "check that $name embeds $module $version" "$log"
  fi
  mv "$out.tmp" "$out"
  step "built $out ($((SECONDS - t0)) s)"
}

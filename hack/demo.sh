#!/usr/bin/env bash
# make demo / make demo-down: the chart on the local cluster (the operator in a pod, under its
# ServiceAccount), the tiny example applied, and proof that it is served.
#   hack/demo.sh up     install, apply examples/tiny/, wait (showing progress), show the result
#   hack/demo.sh down   remove what `up` made; CRDs only if `up` created them
# `make demo` has already built what is missing (venv, cluster, tiny model and adapters).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
home=${LORAPLANE_HOME:-$HOME/.cache/loraplane}
eval "$(bash "$here/cluster.sh" env)"

RELEASE=${DEMO_RELEASE:-loraplane}
OPERATOR_NS=${DEMO_OPERATOR_NAMESPACE:-loraplane-system}
DEMO_NS=${DEMO_NAMESPACE:-loraplane-demo}
TIMEOUT=${DEMO_TIMEOUT_SECONDS:-600}
BASE=tiny
ADAPTERS=(tiny-chat tiny-sql tiny-summarize)
REFUSED=tiny-too-big
CRDS=(basemodeldeployments.loraplane.dev loraadapters.loraplane.dev inferencepools.inference.networking.k8s.io
  inferencemodelrewrites.inference.networking.x-k8s.io)
state=$home/demo
mkdir -p "$state"
start=$(date +%s)

step() { echo "[demo $(( $(date +%s) - start ))s] $*"; }
fail() { echo "[demo] FAILED: $*" >&2; exit 1; }
jp() { kubectl "$@" 2>/dev/null || true; }

# A CRD applied by hand (the integration tests do) has no Helm owner: Helm refuses to install
# over it unless it carries the release's ownership metadata, so give it that (Helm's adoption).
adopt_crds() {
  local crd
  for crd in "${CRDS[@]}"; do
    kubectl get crd "$crd" >/dev/null 2>&1 || continue
    kubectl label --overwrite crd "$crd" app.kubernetes.io/managed-by=Helm >/dev/null
    kubectl annotate --overwrite crd "$crd" meta.helm.sh/release-name="$RELEASE" \
      meta.helm.sh/release-namespace="$OPERATOR_NS" >/dev/null
  done
}

wait_until() { # wait_until WHAT CHECK: CHECK prints a progress line; 0 done, 2 hopeless
  local what=$1 check=$2 line rc last=0
  while true; do
    rc=0; line=$($check) || rc=$?
    if (( rc == 0 )); then step "$what: $line"; return 0; fi
    if (( rc == 2 )); then fail "$what: $line"; fi
    if (( $(date +%s) - last >= 10 )); then step "waiting for $what: $line"; last=$(date +%s); fi
    (( $(date +%s) - start < TIMEOUT )) || fail "$what not done after ${TIMEOUT}s ($line)"
    sleep 2
  done
}

operator_ready() {
  local ready restarts
  ready=$(jp -n "$OPERATOR_NS" get deploy "$RELEASE" -o 'jsonpath={.status.readyReplicas}')
  restarts=$(jp -n "$OPERATOR_NS" get pods -l app.kubernetes.io/instance="$RELEASE" \
    -o 'jsonpath={.items[0].status.containerStatuses[0].restartCount}')
  echo "operator pod ready ${ready:-0}/1, restarts ${restarts:-0}"
  if (( ${restarts:-0} > 2 )); then
    tail -n 20 "$home"/logs/"$OPERATOR_NS"/*/operator.log >&2
    echo "the operator keeps restarting (its log: $home/logs/$OPERATOR_NS/<pod>/operator.log)"
    return 2
  fi
  [[ ${ready:-0} == 1 ]]
}

# What `kubectl get bmd,lora` shows next, read from the same place: the operator's status of the
# base model (READY: its ready replicas) and of each adapter (PHASE, READY: registered/pods). The
# base model's readyReplicas follows its Deployment's a moment after the pods, and an adapter's
# pod count includes a pod a rollout adds, so wait until the rollout is over (every pod updated
# and ready, none extra) and it all agrees at two polls in a row (wait_until runs this in a
# subshell: the count of agreeing polls is kept in a file).
served() {
  local counts ready adapters a phase shown=
  counts=$(jp -n "$DEMO_NS" get bmd "$BASE" \
    -o 'jsonpath={.status.replicas}/{.status.updatedReplicas}/{.status.readyReplicas}')
  ready=$(jp -n "$DEMO_NS" get bmd "$BASE" -o 'jsonpath={.status.ready}')
  adapters=$(jp -n "$DEMO_NS" get lora \
    -o 'jsonpath={range .items[*]}{.metadata.name}={.status.phase}:{.status.ready} {end}')
  for a in $adapters; do # name=phase:ready -> "name phase ready"
    phase=${a#*=}
    shown+="${shown:+, }${a%%=*} ${phase%%:*} ${phase#*:}"
  done
  local hint=" (CPU vLLM starts in about a minute)"
  [[ $ready != "$REPLICAS/$REPLICAS" ]] || hint=
  echo "vLLM servers ready ${ready:-0/$REPLICAS}$hint; adapters: ${shown:-none yet}"
  local ok=true
  [[ $counts == "$REPLICAS/$REPLICAS/$REPLICAS" && $ready == "$REPLICAS/$REPLICAS" ]] || ok=false
  for a in "${ADAPTERS[@]}"; do [[ " $adapters" == *" $a=Ready:$REPLICAS/$REPLICAS "* ]] || ok=false; done
  [[ " $adapters" == *" $REFUSED=Failed:0/$REPLICAS "* ]] || ok=false
  local agreed=0
  if $ok; then agreed=$(($(cat "$state/agreed" 2>/dev/null || echo 0) + 1)); fi
  echo "$agreed" >"$state/agreed"
  ((agreed >= 2)) && return 0
  # One operator changes the Deployment a few times at most; two that disagree (a second
  # loraplane operator left running against this cluster) rewrite it every second, for ever.
  local gen first
  gen=$(jp -n "$DEMO_NS" get deploy "$BASE" -o 'jsonpath={.metadata.generation}')
  [[ -s $state/generation || -z $gen ]] || echo "$gen" >"$state/generation"
  first=$(cat "$state/generation" 2>/dev/null || true)
  if [[ -n $gen && -n $first ]] && ((gen - first > 10)); then
    echo "Deployment $BASE was rewritten $((gen - first)) times while waiting: another controller is" \
      "changing it too, most likely a second loraplane operator running against this cluster" \
      "(pgrep -af 'loraplane.main|loraplane-operator'; kubectl get rs -n $DEMO_NS shows the templates)"
    return 2
  fi
  return 1
}

completion() { # completion POD_IP MODEL
  curl -sf "http://$1:8000/v1/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$2\", \"prompt\": \"hello world\", \"max_tokens\": 8, \"temperature\": 0}" |
    python3 -c 'import json,sys; print(repr(json.load(sys.stdin)["choices"][0]["text"]))'
}

routed() {
  local cond
  cond=$(jp -n "$DEMO_NS" get bmd "$BASE" -o 'jsonpath={.status.conditions[?(@.type=="Routed")].status} {.status.router.ready}')
  echo "Routed: ${cond:-not yet}"
  [[ $cond == True* ]]
}

routed_to() { # routed_to ROUTER_IP MODEL "IP=POD ..." -> the pod that answered each request
  local i pod out=
  for i in 1 2 3 4; do
    pod=$(curl -sf -o /dev/null -D - "http://$1:8081/v1/completions" -H 'Content-Type: application/json' \
      -d "{\"model\": \"$2\", \"prompt\": \"request $i\", \"max_tokens\": 4}" |
      tr -d '\r' | sed -n 's/^x-loraplane-pod: \([^:]*\):.*/\1/p')
    for p in $3; do [[ ${p%%=*} == "$pod" ]] && pod=${p#*=}; done
    out+="${out:+, }${pod:-no answer}"
  done
  echo "$out"
}

up() {
  bash "$here/cluster.sh" status >/dev/null ||
    fail "the local cluster is not healthy ($here/cluster.sh status says which part): make demo starts it, or make cluster-up"
  step "cluster: up"
  local a
  [[ -f $home/models/tiny-llama/config.json ]] ||
    fail "no tiny model in $home/models: make demo builds it (make demo-fixtures alone)"
  for a in $(grep -o '/adapter-sources/[a-z0-9-]*' "$repo/examples/tiny/adapters.yaml"); do
    [[ -d $home/adapters/${a##*/} ]] ||
      fail "no adapter ${a##*/} in $home/adapters: make demo builds it (make demo-fixtures alone)"
  done
  if [[ -z $(jp get crd "${CRDS[0]}" -o name) ]]; then touch "$state/made-crds"; fi
  adopt_crds
  step "helm upgrade --install $RELEASE charts/loraplane -n $OPERATOR_NS (operator image ghcr.io/loraplane/loraplane: this checkout, on the process node)"
  helm upgrade --install "$RELEASE" "$repo/charts/loraplane" -n "$OPERATOR_NS" --create-namespace \
    >"$state/helm.log" || { cat "$state/helm.log"; fail "helm install"; }
  wait_until "the operator" operator_ready
  kubectl create namespace "$DEMO_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  step "kubectl apply -f examples/tiny/ -n $DEMO_NS"
  for f in "$repo"/examples/tiny/*.yaml; do
    sed "s|/root/.cache/loraplane|$home|g" "$f" | kubectl apply -n "$DEMO_NS" -f - >/dev/null
  done
  REPLICAS=$(kubectl get bmd "$BASE" -n "$DEMO_NS" -o 'jsonpath={.spec.replicas}')
  rm -f "$state/agreed" "$state/generation"
  wait_until "${#ADAPTERS[@]} adapters Ready on $REPLICAS vLLM servers, $REFUSED refused" served
  echo
  kubectl get bmd,lora -n "$DEMO_NS"
  echo
  kubectl get lora "$REFUSED" -n "$DEMO_NS" \
    -o 'jsonpath={range .status.conditions[?(@.type=="Validated")]}'"$REFUSED"': Validated={.status} {.reason}: {.message}{"\n"}{end}'
  local ips ip
  ips=$(kubectl get pods -n "$DEMO_NS" -l loraplane.dev/base-model="$BASE" -o 'jsonpath={.items[*].status.podIP}')
  ip=${ips%% *}
  echo
  echo "Completions (greedy, 8 tokens) from vLLM pod $ip:"
  local model
  for model in "$BASE" "${ADAPTERS[@]}"; do
    printf '  %-16s %s\n' "$model" "$(completion "$ip" "$model")"
  done
  wait_until "the router" routed
  local router pods
  router=$(kubectl get pods -n "$DEMO_NS" -l loraplane.dev/router="$BASE" -o 'jsonpath={.items[0].status.podIP}')
  pods=$(kubectl get pods -n "$DEMO_NS" -l loraplane.dev/base-model="$BASE" \
    -o 'jsonpath={range .items[*]}{.status.podIP}={.metadata.name} {end}')
  echo
  echo "Through the router (Envoy at $router:8081, the Endpoint Picker choosing), 4 requests per adapter:"
  for model in "${ADAPTERS[@]}"; do
    printf '  %-16s %s\n' "$model" "$(routed_to "$router" "$model" "$pods")"
  done
  local op
  op=$(kubectl get pods -n "$OPERATOR_NS" -l app.kubernetes.io/instance="$RELEASE" -o 'jsonpath={.items[0].status.podIP}')
  echo
  echo "From the operator's /metrics (http://$op:8080/metrics):"
  curl -sf "http://$op:8080/metrics" | grep -E '^loraplane_adapter_(registered|loads_total|ready)[{ ]' | grep -v ' 0.0$' | sort | head -12 | sed 's/^/  /'
  echo
  step "done. Remove it all with: make demo-down"
}

down() {
  step "deleting namespace $DEMO_NS (the operator unregisters its adapters first)"
  kubectl delete namespace "$DEMO_NS" --ignore-not-found --timeout=120s >/dev/null
  step "helm uninstall $RELEASE -n $OPERATOR_NS"
  helm uninstall "$RELEASE" -n "$OPERATOR_NS" --wait --ignore-not-found >/dev/null
  kubectl delete namespace "$OPERATOR_NS" --ignore-not-found --timeout=60s >/dev/null
  if [[ -e $state/made-crds ]]; then
    step "deleting the CRDs (the demo created them)"
    kubectl delete crd "${CRDS[@]}" --ignore-not-found >/dev/null
    rm -f "$state/made-crds"
  fi
  step "removed"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

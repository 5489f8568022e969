#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The local Kubernetes cluster: a real control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler built by hack/build-cluster.sh) and the process node
# (hack/processnode), all as processes of this machine. See hack/README.md.
#
#   hack/cluster.sh up              build if needed, start or repair everything, wait until ready
#   hack/cluster.sh down [--purge]  stop everything, remove pod netns/veths/bridge/mounts
#                                   (--purge also deletes the etcd data: an empty cluster next time)
#   hack/cluster.sh status          one line per component; exit 1 unless all are healthy
#   hack/cluster.sh env             `eval "$(hack/cluster.sh env)"` sets KUBECONFIG and PATH
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HACK")
# shellcheck source=versions.env
source "$HACK/versions.env"
# shellcheck source=lib/pki.sh
source "$HACK/lib/pki.sh"
# shellcheck source=lib/proc.sh
source "$HACK/lib/proc.sh"
# shellcheck source=lib/net.sh
source "$HACK/lib/net.sh"

HOME_DIR=${LORAPLANE_HOME:-$HOME/.cache/loraplane}
CLUSTER_DIR=$HOME_DIR/cluster
PKI=$CLUSTER_DIR/pki
RUN_DIR=$CLUSTER_DIR/run
ETCD_DATA=$CLUSTER_DIR/etcd
LOG_DIR=$HOME_DIR/logs/control-plane
KUBECONFIG_ADMIN=$HOME_DIR/kubeconfig
VENV_PY=$HOME_DIR/venv/bin/python
NODE_NAME=loraplane-node

bin() { echo "$HOME_DIR/bin/$1-$2/$1"; }
ETCD_BIN=$(bin etcd "$ETCD_VERSION")
APISERVER_BIN=$(bin kube-apiserver "$KUBERNETES_VERSION")
CM_BIN=$(bin kube-controller-manager "$KUBERNETES_VERSION")
SCHED_BIN=$(bin kube-scheduler "$KUBERNETES_VERSION")
KUBECTL_BIN=$(bin kubectl "$KUBERNETES_VERSION")
HELM_BIN=$(bin helm "$HELM_VERSION")

ETCD_PORT=2379       # client, TLS with client certificates, loopback only
ETCD_PEER_PORT=2380  # single member: nothing ever connects, loopback only
APISERVER_PORT=6443  # all interfaces: pods reach it at 10.244.0.1
CM_PORT=10257        # kube-controller-manager /healthz, loopback only
SCHED_PORT=10259     # kube-scheduler /healthz, loopback only

# Seconds to wait for each component to become healthy.
START_TIMEOUT=${LORAPLANE_START_TIMEOUT:-90}
NODE_TIMEOUT=60

log() { echo "[cluster] $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# fail STEP [LOG]: says which step failed and shows the end of its log.
fail() {
  log "FAILED at step: $1"
  if [[ -n ${2:-} && -f $2 ]]; then
    log "last lines of $2:"
    tail -n 40 "$2" >&2
  fi
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Health checks: each is a single quick request, so `up` on a healthy cluster is fast.

curl_q() { curl -sS --max-time 3 "$@" 2>/dev/null; }

healthy_etcd() {
  [[ $(curl_q --cacert "$PKI/etcd-ca.crt" --cert "$PKI/apiserver-etcd-client.crt" \
    --key "$PKI/apiserver-etcd-client.key" "https://127.0.0.1:$ETCD_PORT/health") == *'"health":"true"'* ]]
}
healthy_apiserver() {
  [[ $(curl_q --cacert "$PKI/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz") == ok ]]
}
# The controller-manager and scheduler serve a certificate they sign themselves; -k is fine for
# a loopback health probe.
healthy_controller_manager() { [[ $(curl_q -k "https://127.0.0.1:$CM_PORT/healthz") == ok ]]; }
healthy_scheduler() { [[ $(curl_q -k "https://127.0.0.1:$SCHED_PORT/healthz") == ok ]]; }

# api_get PATH: GET on the API server as the admin; prints the body, fails on non-2xx.
api_get() {
  curl -sS --fail --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" \
    --key "$PKI/admin.key" "https://127.0.0.1:$APISERVER_PORT$1" 2>/dev/null
}

# The Node's Ready condition outlives the process node in etcd (the node-lifecycle controller
# notices only after its grace period), so right after a start only a heartbeat posted since
# PROCESSNODE_SINCE (epoch seconds) counts.
PROCESSNODE_SINCE=0
healthy_processnode() {
  local out ready beat
  out=$("$KUBECTL_BIN" --kubeconfig "$KUBECONFIG_ADMIN" --request-timeout 5s get node "$NODE_NAME" \
    -o jsonpath='{range .status.conditions[?(@.type=="Ready")]}{.status} {.lastHeartbeatTime}{end}' \
    2>/dev/null) || return 1
  read -r ready beat <<<"$out"
  [[ $ready == True ]] || return 1
  ((PROCESSNODE_SINCE == 0)) || (($(date -d "$beat" +%s 2>/dev/null || echo 0) >= PROCESSNODE_SINCE))
}

# ---------------------------------------------------------------------------------------------
# Component command lines: each cmd_* sets the array CMD.

cmd_etcd() {
  # --unsafe-no-fsync: a disposable test cluster on a shared disk; fsync latency would slow
  # every API write while vLLM loads models. After a machine crash, `down --purge`.
  CMD=("$ETCD_BIN" --name loraplane --data-dir "$ETCD_DATA" \
    --listen-client-urls "https://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "https://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "loraplane=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new \
    --cert-file "$PKI/etcd-server.crt" --key-file "$PKI/etcd-server.key" \
    --trusted-ca-file "$PKI/etcd-ca.crt" --client-cert-auth \
    --unsafe-no-fsync)
}

cmd_kube_apiserver() {
  # Default admission plugins stay on (ServiceAccount, TaintNodesByCondition, PodSecurity,
  # ResourceQuota, webhooks and admission policies, ...): the process node behaves like a
  # kubelet, so nothing needs turning off. NodeRestriction is added as in any real cluster.
  CMD=("$APISERVER_BIN" \
    --etcd-servers "https://127.0.0.1:$ETCD_PORT" \
    --etcd-cafile "$PKI/etcd-ca.crt" \
    --etcd-certfile "$PKI/apiserver-etcd-client.crt" --etcd-keyfile "$PKI/apiserver-etcd-client.key" \
    --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$BRIDGE_IP" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --authorization-mode "Node,RBAC" \
    --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" \
    --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=true \
    --profiling=false)
}

cmd_kube_controller_manager() {
  # nodeipam is off: the process node assigns pod IPs itself (10.244.1.0/24 upwards). The
  # flex-volume dir would otherwise be created under /usr/libexec on the host.
  local kc=$CLUSTER_DIR/controller-manager.kubeconfig
  CMD=("$CM_BIN" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$CM_PORT" \
    --leader-elect=false \
    --use-service-account-credentials \
    --root-ca-file "$PKI/ca.crt" \
    --service-account-private-key-file "$PKI/sa.key" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --cluster-name loraplane \
    --service-cluster-ip-range 10.96.0.0/16 \
    --controllers '*,-nodeipam' \
    --flex-volume-plugin-dir "$CLUSTER_DIR/flexvolume" \
    --profiling=false)
}

cmd_kube_scheduler() {
  local kc=$CLUSTER_DIR/scheduler.kubeconfig
  CMD=("$SCHED_BIN" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" \
    --leader-elect=false \
    --profiling=false)
}

# ---------------------------------------------------------------------------------------------
# Starting one component: reuse it when healthy, adopt one whose pid file was lost, restart one
# that is dead or stays unhealthy.

# port_owner PORT: "pid command" of the process listening on PORT, if any.
port_owner() {
  local pid
  pid=$(ss -ltnpH "sport = :$1" 2>/dev/null | grep -oE 'pid=[0-9]+' | head -n 1 | cut -d= -f2)
  [[ -n $pid ]] && echo "$pid $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-120)"
  return 0
}

# wait_healthy CHECK SECONDS [PID]: polls CHECK; fails early when PID dies.
wait_healthy() {
  local check=$1 deadline=$((SECONDS + $2)) pid=${3:-}
  until "$check"; do
    if [[ -n $pid ]] && ! [[ -d /proc/$pid ]]; then return 1; fi
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# ensure NAME BINARY CHECK PORT: makes NAME run and be healthy.
ensure() {
  local name=$1 binary=$2 check=$3 port=$4 pid stray
  local logf=$LOG_DIR/$name.log
  if ! pid=$(proc_pid "$name"); then
    stray=$(proc_find "$binary" | head -n 1)
    if [[ -n $stray && $(proc_argv0 "$stray") == "$binary" ]]; then
      log "$name: adopting running pid $stray (its pid file was missing)"
      proc_adopt "$name" "$stray"
      pid=$stray
    fi
  fi
  if [[ -n ${pid:-} ]]; then
    if "$check" || wait_healthy "$check" 20 "$pid"; then
      return 0
    fi
    log "$name: pid $pid is not healthy: restarting it"
    proc_stop "$name" 10
  fi
  local owner
  owner=$(port_owner "$port")
  [[ -z $owner ]] || fail "start $name: port $port is already used by pid $owner"
  "cmd_${name//-/_}"
  log "starting $name (log: $logf)"
  local t0
  t0=$(now)
  proc_start "$name" "$logf" "${CMD[@]}"
  pid=$(proc_pid "$name") || fail "start $name: it exited at once" "$logf"
  wait_healthy "$check" "$START_TIMEOUT" "$pid" || fail "wait for $name to be healthy" "$logf"
  log "$name healthy in $(elapsed "$t0") s (pid $pid)"
}

# ---------------------------------------------------------------------------------------------

# Process nodes of this $LORAPLANE_HOME, however started (a pid file lost, a developer's shell).
processnode_strays() { proc_find " -m processnode " " --home $HOME_DIR "; }

processnode_present() { [[ -f $HACK/processnode/__main__.py || -f $HACK/processnode/__init__.py ]]; }

ensure_processnode() {
  local logf=$LOG_DIR/processnode.log pid stray
  if ! processnode_present; then
    log "WARNING: hack/processnode is not there yet: no node, so pods will stay Pending"
    return 0
  fi
  if [[ ! -x $VENV_PY ]]; then
    log "WARNING: $VENV_PY is missing (make venv): process node not started, pods will stay Pending"
    return 0
  fi
  local t0
  t0=$(now)
  if ! pid=$(proc_pid processnode); then
    stray=$(processnode_strays | head -n 1)
    if [[ -n $stray ]]; then
      log "processnode: adopting running pid $stray (its pid file was missing)"
      proc_adopt processnode "$stray"
      pid=$stray
    else
      log "starting processnode (log: $logf)"
      PROCESSNODE_SINCE=$(date +%s)
      (cd "$HACK" && export PYTHONPATH="$HACK${PYTHONPATH:+:$PYTHONPATH}" && proc_start processnode "$logf" \
        "$VENV_PY" -m processnode --kubeconfig "$KUBECONFIG_ADMIN" --home "$HOME_DIR" --checkout "$REPO")
      pid=$(proc_pid processnode) || fail "start processnode: it exited at once" "$logf"
    fi
  fi
  wait_healthy healthy_processnode "$NODE_TIMEOUT" "$pid" \
    || fail "wait for Node $NODE_NAME to be Ready (${NODE_TIMEOUT} s)" "$logf"
  log "processnode ready: Node $NODE_NAME is Ready after $(elapsed "$t0") s (pid $pid)"
}

# builds_running: pids running hack/build-cluster.sh as their program (argv[0] or argv[1]).
builds_running() {
  local f p
  local -a argv
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}
    p=${p%/cmdline}
    mapfile -d '' -t -n 2 argv 2>/dev/null <"$f" || continue
    [[ ${argv[0]:-} == *build-cluster.sh || ${argv[1]:-} == *build-cluster.sh ]] && echo "$p"
  done
  return 0
}

# Another build (the Makefile's cluster-build, another shell) may be running: wait for it rather
# than compiling the same thing twice on a small machine.
wait_for_other_build() {
  local others announced=0
  while others=$(builds_running) && [[ -n $others ]]; do
    if [[ $announced == 0 ]]; then
      log "waiting for a build already running (pid $(echo "$others" | tr '\n' ' '))"
      announced=1
    fi
    sleep 2
  done
}

binaries_present() {
  local b
  for b in "$ETCD_BIN" "$APISERVER_BIN" "$CM_BIN" "$SCHED_BIN" "$KUBECTL_BIN" "$HELM_BIN"; do
    [[ -x $b ]] || return 1
  done
}

with_lock() {
  mkdir -p "$RUN_DIR"
  exec 9>"$RUN_DIR/cluster.lock"
  if ! flock -n 9; then
    log "another hack/cluster.sh up/down is running: waiting for it"
    flock -w 900 9 || fail "lock $RUN_DIR/cluster.lock"
  fi
}

up() {
  local t0
  t0=$(now)
  with_lock
  mkdir -p "$LOG_DIR" "$RUN_DIR" "$ETCD_DATA"
  chmod 700 "$ETCD_DATA"
  binaries_present || wait_for_other_build
  "$HACK/build-cluster.sh" || fail "build the control plane (hack/build-cluster.sh)"
  bridge_ensure || fail "create bridge $BRIDGE $BRIDGE_CIDR"
  pki_ensure "$PKI" || fail "generate certificates in $PKI"
  kubeconfigs_ensure "$PKI" "$CLUSTER_DIR" "$KUBECONFIG_ADMIN" || fail "write kubeconfigs"
  ensure etcd "$ETCD_BIN" healthy_etcd "$ETCD_PORT"
  ensure kube-apiserver "$APISERVER_BIN" healthy_apiserver "$APISERVER_PORT"
  ensure kube-controller-manager "$CM_BIN" healthy_controller_manager "$CM_PORT"
  ensure kube-scheduler "$SCHED_BIN" healthy_scheduler "$SCHED_PORT"
  # Pods are rejected until their namespace's default ServiceAccount exists; the
  # controller-manager creates it within a second or two of a fresh start.
  wait_healthy default_sa_exists 30 || fail "wait for ServiceAccount default/default" \
    "$LOG_DIR/kube-controller-manager.log"
  ensure_processnode
  log "cluster up in $(elapsed "$t0") s; KUBECONFIG=$KUBECONFIG_ADMIN"
}

default_sa_exists() { api_get /api/v1/namespaces/default/serviceaccounts/default >/dev/null; }

# kill_pod_cgroups: processes left in the cgroups of this home's pods (the process node puts each
# container in /sys/fs/cgroup/unified/loraplane/<pod uid>/<container>; $LORAPLANE_HOME/pods/<uid>
# says which pods are this home's, so another home's pods are never touched).
kill_pod_cgroups() {
  local root=/sys/fs/cgroup/unified/loraplane dir uid cg p
  [[ -d $HOME_DIR/pods && -d $root ]] || return 0
  for dir in "$HOME_DIR/pods"/*/; do
    uid=$(basename "$dir")
    [[ -d $root/$uid ]] || continue
    for cg in "$root/$uid"/*/; do
      [[ -d $cg ]] || continue
      # cgroupfs files report size 0, so read them rather than test with -s.
      if [[ -n $(<"$cg/cgroup.procs") ]]; then
        log "killing processes left in cgroup $cg"
        echo 1 2>/dev/null >"$cg/cgroup.kill" \
          || while read -r p; do kill -KILL "$p" 2>/dev/null || true; done <"$cg/cgroup.procs"
        for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
          [[ -n $(<"$cg/cgroup.procs") ]] || break
          sleep 0.1
        done
      fi
      rmdir "$cg" 2>/dev/null || log "warning: could not remove cgroup $cg"
    done
    rmdir "$root/$uid" 2>/dev/null || true
  done
}

# umount_pods: nothing may stay mounted under $LORAPLANE_HOME/pods (deepest first).
umount_pods() {
  local root=$HOME_DIR/pods m
  [[ -d $root ]] || return 0
  awk '{print $5}' /proc/self/mountinfo | while read -r m; do
    m=$(printf '%b' "${m//\\/\\0}")  # mountinfo escapes spaces etc. as \040
    if [[ $m == "$root"/* || $m == "$root" ]]; then echo "$m"; fi
  done | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: could not unmount $m"
  done
}

down() {
  local purge=${1:-} t0 name pid sid p
  t0=$(now)
  with_lock
  mkdir -p "$RUN_DIR"
  # The process node first: on SIGTERM it stops its pods and removes their netns.
  if pid=$(proc_pid processnode); then
    sid=$(ps -o sid= -p "$pid" | tr -d ' ')
    log "stopping processnode (pid $pid)"
    proc_terminate "$pid" 30
    # Whatever it started in its own session and left behind.
    for p in $(ps -eo pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'); do
      kill -KILL "$p" 2>/dev/null || true
    done
  fi
  rm -f "$RUN_DIR/processnode.pid"
  for p in $(processnode_strays); do
    log "stopping stray processnode pid $p"
    proc_terminate "$p" 30
  done
  for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    if pid=$(proc_pid "$name"); then
      log "stopping $name (pid $pid)"
      proc_terminate "$pid" 15
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  # Anything else still running one of our binaries (a lost pid file, a kubectl proxy, ...).
  for p in $(proc_find "$HOME_DIR/bin/"); do
    if [[ $(proc_argv0 "$p") == "$HOME_DIR/bin/"* ]]; then
      log "stopping leftover $(proc_argv0 "$p") (pid $p)"
      proc_terminate "$p" 10
    fi
  done
  kill_pod_cgroups
  net_teardown "$HOME_DIR/pods"
  umount_pods
  if [[ $purge == --purge ]]; then
    log "deleting etcd data $ETCD_DATA"
    rm -rf "$ETCD_DATA"
  fi
  log "cluster down in $(elapsed "$t0") s"
}

status() {
  local name pid check state health all=0
  printf '%-24s %-8s %-8s %s\n' COMPONENT STATE PID HEALTH
  for spec in etcd:healthy_etcd kube-apiserver:healthy_apiserver \
    kube-controller-manager:healthy_controller_manager kube-scheduler:healthy_scheduler \
    processnode:healthy_processnode; do
    name=${spec%%:*}
    check=${spec#*:}
    if pid=$(proc_pid "$name"); then
      state=running
      if "$check"; then health=healthy; else health=unhealthy; all=1; fi
    else
      state=stopped pid=- health=-
      all=1
    fi
    [[ $name == processnode && $health == unhealthy ]] && health="unhealthy (Node not Ready)"
    [[ $name == processnode && $health == healthy ]] && health="healthy (Node $NODE_NAME Ready)"
    printf '%-24s %-8s %-8s %s\n' "$name" "$state" "$pid" "$health"
  done
  if bridge_ok; then
    printf '%-24s %-8s %-8s %s\n' "bridge $BRIDGE" up - "$BRIDGE_CIDR, $(net_netns_list | wc -l) pod netns"
  else
    printf '%-24s %-8s %-8s %s\n' "bridge $BRIDGE" absent - -
    all=1
  fi
  return $all
}

env_cmd() {
  echo "export LORAPLANE_HOME=$HOME_DIR"
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "export PATH=$(dirname "$KUBECTL_BIN"):$(dirname "$HELM_BIN"):\$PATH"
}

need_root() {
  [[ $EUID == 0 ]] || fail "check privileges: the bridge, pod network namespaces and cgroups need root"
}

usage() {
  sed -n '3,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd=${1:-}
  shift || true
  case $cmd in
    up)
      [[ $# == 0 ]] || usage
      need_root
      up
      ;;
    down)
      [[ $# == 0 || ($# == 1 && $1 == --purge) ]] || usage
      need_root
      down "${1:-}"
      ;;
    status) status ;;
    env) env_cmd ;;
    *) usage ;;
  esac
}

# Sourcing (for a test of one function) defines everything and runs nothing.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi

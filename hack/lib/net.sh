# shellcheck shell=bash
# The host side of the local cluster's pod network (sourced by hack/cluster.sh).
# Pods get their own netns and a veth whose host end is attached to the bridge; the bridge holds
# the node's address, which is also where pods reach the API server.

BRIDGE=lpbr0
BRIDGE_CIDR=10.244.0.1/16
# shellcheck disable=SC2034 # used by hack/cluster.sh
BRIDGE_IP=10.244.0.1
NETNS_PREFIX=lp-

# bridge_ensure: creates lpbr0 with 10.244.0.1/16 and brings it up (each part idempotent).
bridge_ensure() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  if ! ip -4 -o addr show dev "$BRIDGE" | grep -qw "$BRIDGE_CIDR"; then
    ip addr add "$BRIDGE_CIDR" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
}

bridge_ok() {
  ip -4 -o addr show dev "$BRIDGE" 2>/dev/null | grep -qw "$BRIDGE_CIDR"
}

# net_netns_list: our network namespaces (lp-*).
net_netns_list() {
  ip netns list 2>/dev/null | awk -v p="$NETNS_PREFIX" 'index($1, p) == 1 {print $1}'
}

# net_teardown PODS_DIR: removes this home's pod networking and the bridge. A netns lp-<id> is
# ours when PODS_DIR holds the pod (<uid>, whose dashless first 8 hex are <id>) or when nothing
# runs in it any more; one that still runs another LORAPLANE_HOME's pods is left alone, and so is
# the bridge while such pods are attached to it.
net_teardown() {
  local pods_dir=$1 ns id pids link dir uid foreign=0
  local -A ours=()
  for dir in "$pods_dir"/*/; do
    [[ -d $dir ]] || continue
    uid=$(basename "$dir")
    uid=${uid//-/}
    ours[${uid:0:8}]=1
  done
  for ns in $(net_netns_list); do
    id=${ns#"$NETNS_PREFIX"}
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids && -z ${ours[$id]:-} ]]; then
      echo "[cluster] netns $ns runs pods of another LORAPLANE_HOME: left alone" >&2
      foreign=1
      continue
    fi
    if [[ -n $pids ]]; then
      echo "[cluster] killing processes left in netns $ns: $(echo "$pids" | tr '\n' ' ')" >&2
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      sleep 0.2
    fi
    # Deleting the netns destroys its veth pair, host end included.
    ip netns delete "$ns" 2>/dev/null || echo "[cluster] warning: could not delete netns $ns" >&2
  done
  # Host ends whose pod end is gone or was never moved (a node that died mid-setup).
  for link in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    [[ $link == lpv* || $link == lpp* ]] || continue
    id=${link:3}
    if ! ip netns list 2>/dev/null | grep -q "^$NETNS_PREFIX$id\b"; then
      ip link delete "$link" 2>/dev/null || true
    fi
  done
  if [[ $foreign == 1 ]]; then
    echo "[cluster] bridge $BRIDGE kept: another LORAPLANE_HOME's pods are attached" >&2
  elif ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link delete "$BRIDGE"
  fi
}

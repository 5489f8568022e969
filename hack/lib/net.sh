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

# net_teardown: kills what still runs inside our namespaces, deletes them, every veth on the
# bridge or named lp*, and the bridge.
net_teardown() {
  local ns pids link
  for ns in $(net_netns_list); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      echo "[cluster] killing processes left in netns $ns: $(echo "$pids" | tr '\n' ' ')" >&2
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      sleep 0.2
    fi
    ip netns delete "$ns" 2>/dev/null || echo "[cluster] warning: could not delete netns $ns" >&2
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link delete "$link" 2>/dev/null || true
    done
  fi
  for link in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    if [[ $link == lp* ]]; then ip link delete "$link" 2>/dev/null || true; fi
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link delete "$BRIDGE"
  fi
}

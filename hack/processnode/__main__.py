"""The loraplane process node: a kubelet that runs the pods bound to its Node as local
processes, each pod in its own network namespace (see hack/processnode/README.md)."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
import threading

from . import NODE_NAME
from .kube import Kube
from .kubelet import Kubelet
from .node import NodeAgent, kubelet_version
from .sandbox import Network

log = logging.getLogger("processnode")


def main(argv: list[str] | None = None) -> int:
    home_default = os.environ.get("LORAPLANE_HOME", os.path.expanduser("~/.cache/loraplane"))
    p = argparse.ArgumentParser(prog="processnode", description=__doc__)
    p.add_argument("--kubeconfig", default=f"{home_default}/kubeconfig")
    p.add_argument("--home", default=home_default, help="LORAPLANE_HOME (state, logs, pods)")
    p.add_argument("--checkout", required=True, help="the loraplane checkout pods run from")
    p.add_argument("--venv", help="the venv of the local commands (default HOME/venv)")
    p.add_argument("--node-name", default=NODE_NAME)
    p.add_argument(
        "--first-pod-ip",
        default="10.244.1.0",
        help="start of this node's pod IP range (up to 10.244.255.254); lets a second test node "
        "share the bridge without address clashes",
    )
    p.add_argument(
        "--register-with-taints",
        action="append",
        default=[],
        metavar="KEY=VALUE:EFFECT",
        help="taints the Node gets when it is created (repeatable)",
    )
    p.add_argument(
        "--network",
        choices=["auto", "netns", "loopback"],
        default="auto",
        help="pod network: netns (fail if impossible), loopback (127.0.1.x), or auto: netns, "
        "falling back to loopback with a loud error",
    )
    p.add_argument("--log-level", default=os.environ.get("PROCESSNODE_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
        stream=sys.stderr,
    )
    home = os.path.abspath(args.home)
    checkout = os.path.abspath(args.checkout)
    venv = os.path.abspath(args.venv or f"{home}/venv")
    if os.geteuid() != 0:
        log.error("the process node needs root (network namespaces, mounts)")
        return 1

    os.makedirs(home, exist_ok=True)
    lock = open(f"{home}/processnode.lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.error("another process node already runs for %s (lock %s/processnode.lock)", home, home)
        return 1

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    network = Network(args.first_pod_ip)
    kube = Kube(args.kubeconfig)
    kubelet = Kubelet(kube, args.node_name, home, venv, checkout, network)
    kubelet.cleanup_leftovers()
    network.start(args.network)
    taints = []
    for text in args.register_with_taints:
        key_value, _, effect = text.partition(":")
        key, _, value = key_value.partition("=")
        taints.append({"key": key, "value": value, "effect": effect or "NoSchedule"})
    agent = NodeAgent(
        kube, args.node_name, kubelet.host_ip, kubelet_version(checkout), network.mode, taints
    )
    agent.register()
    watcher = threading.Thread(target=kubelet.run, daemon=True, name="pod-watch")
    watcher.start()
    log.info(
        "process node %s running (home %s, checkout %s, venv %s)",
        args.node_name,
        home,
        checkout,
        venv,
    )
    while not stop.wait(3600):
        pass
    log.info("signal received: stopping pods")
    agent.stop()
    kubelet.shutdown()
    kubelet.cleanup_leftovers()  # whatever a pod worker did not finish in time
    log.info("process node stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

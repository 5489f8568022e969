"""python -m processnode --kubeconfig K --home H --checkout REPO [--node-name N] [--venv V]"""

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
from .runner import kill_orphan_cgroups
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

    kill_orphan_cgroups()
    network = Network()
    network.start()
    kube = Kube(args.kubeconfig)
    kubelet = Kubelet(kube, args.node_name, home, venv, checkout, network)
    kubelet.cleanup_leftovers()
    agent = NodeAgent(
        kube, args.node_name, kubelet.host_ip, kubelet_version(checkout), network.mode
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
    network.cleanup_orphans()
    log.info("process node stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

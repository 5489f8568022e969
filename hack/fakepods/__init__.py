"""fakepods: FAKE pods for `make bench-scale`'s operator-only mode. Nothing here serves a model.

The realistic mode runs a hundred pods on the process node: a hundred agents and fake vLLM
servers take the cores the operator and the API server are measured on. Here the pods' side is
one asyncio process:

- a Node (``loraplane-fake-node``, tainted ``loraplane.dev/fake-node=true:NoSchedule``) whose
  kubelet is this process: pods that tolerate the taint and select the node are scheduled by the
  real scheduler and get a status as the process node computes it (see ``node.py``);
- each pod an address of ``--network`` (198.18.0.0/16: the range RFC 2544 sets aside for
  benchmarks), made local with one route of type ``local`` on ``lo``, so that listening on
  0.0.0.0 answers every pod and the connection's local address says which. The Endpoints
  controller refuses loopback pod IPs (``may not be in the loopback range``), hence not
  127.0.0.0/8;
- per pod, its vLLM is hack/fakevllm's app (vLLM 0.32's contract, DESIGN.md §4; its 10-20 ms
  serialised loads awaited, not slept) and its agent follows loraplane.agent.protocol (see
  ``pods.py``).

Control, on ``--control`` (127.0.0.1:8099): ``GET /fakepods/stats`` (per pod: the vLLM calls
from outside the pod, the agent calls, adapters registered and versions stored; the node's status
writes) and ``POST /fakepods/restart`` ``{"namespace", "name"}``: that pod's vLLM container
restarts (a new container ID, every runtime adapter lost, not ready for one probe period).

Run as root (the route): ``PYTHONPATH=hack:operator python -m fakepods --kubeconfig FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

from fakevllm import KEEP_ALIVE_SECONDS, Response, json_response
from processnode.kube import Kube
from processnode.node import kubelet_version

from . import http1
from .node import FakeNode

__all__ = ["main"]

log = logging.getLogger("fakepods")
CHECKOUT = str(Path(__file__).resolve().parents[2])
# aiohttp.web's default keepalive_timeout: the real agent's server.
AGENT_KEEP_ALIVE_SECONDS = 75.0


def _route(network: str, verb: str) -> bool:
    """Make (or remove) the whole range local: one route, no address per pod."""
    if verb == "add":
        shown = subprocess.run(
            ["ip", "route", "show", "table", "local", network], capture_output=True, text=True
        )
        if shown.stdout.strip():
            return False  # someone's route already: leave it to them
    done = subprocess.run(["ip", "route", verb, "local", network, "dev", "lo"], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"fakepods: ip route {verb} local {network}: {done.stderr.decode()}")
    return True


async def serve(args: argparse.Namespace) -> None:
    network = ipaddress.IPv4Network(args.network)
    node = FakeNode(Kube(args.kubeconfig), args.node_name, network, kubelet_version(CHECKOUT))

    async def vllm(
        local: str, method: str, path: str, h: dict[str, str], body: bytes
    ) -> Response | None:
        pod = node.by_ip.get(local)
        if pod is None:
            return None
        return await pod.vllm_call(method, path, h, body, f"{local}:{args.vllm_port}")

    async def agent(
        local: str, method: str, path: str, h: dict[str, str], body: bytes
    ) -> Response | None:
        pod = node.by_ip.get(local)
        return None if pod is None else await pod.agent_call(method, path, h, body)

    async def control(
        local: str, method: str, path: str, h: dict[str, str], body: bytes
    ) -> Response | None:
        if (method, path) == ("GET", "/fakepods/stats"):
            pods = {p.name: p.stats() for p in node.pods.values()}
            return json_response(200, {"pods": pods, "statusWrites": node.status_writes})
        if (method, path) == ("POST", "/fakepods/restart"):
            which = json.loads(body or b"{}")
            done = await node.restart_vllm(str(which.get("namespace")), str(which.get("name")))
            return json_response(200 if done else 404, {"restarted": done})
        return json_response(404, {"detail": "Not Found"})

    host, _, port = args.control.rpartition(":")
    servers = [
        await http1.serve(vllm, "0.0.0.0", args.vllm_port, KEEP_ALIVE_SECONDS),
        await http1.serve(agent, "0.0.0.0", args.agent_port, AGENT_KEEP_ALIVE_SECONDS),
        await http1.serve(control, host, int(port), AGENT_KEEP_ALIVE_SECONDS),
    ]
    loop = asyncio.get_running_loop()
    task = loop.create_task(node.run())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    log.info(
        "FAKE pods (benchmarks only, no inference): node %s, pods in %s, vLLM :%d, agent :%d, "
        "control %s",
        args.node_name,
        network,
        args.vllm_port,
        args.agent_port,
        args.control,
    )
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        node.stop()
        for server in servers:
            server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fakepods", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", default="loraplane-fake-node")
    parser.add_argument("--network", default="198.18.0.0/16")
    parser.add_argument("--vllm-port", type=int, default=8000)
    parser.add_argument("--agent-port", type=int, default=8081)
    parser.add_argument("--control", default="127.0.0.1:8099")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    added = _route(args.network, "add")
    try:
        asyncio.run(serve(args))
    finally:
        if added:
            with contextlib.suppress(SystemExit):
                _route(args.network, "del")
    return 0


if __name__ == "__main__":
    sys.exit(main())

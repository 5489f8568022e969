"""The FAKE node: a Node object whose kubelet is this process, for pods that run nowhere.

It registers the Node and keeps its Lease and status current (the process node's NodeAgent,
with a taint so that only pods that tolerate it land here), watches the pods bound to it, and
reports each one's status as the process node computes it (hack/processnode/status.py): Running,
every container running and started, podIP and podIPs from the fake range, the Ready condition
following the containers and the readiness gate. The agent container's readiness is its
/readyz (vLLM up, every required adapter registered), judged every probe period; a deleted pod
is removed at once with grace period 0, as the kubelet does once its containers stopped.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from loraplane.builders import naming
from processnode.kube import ApiError, Kube, ns_path, pod_path
from processnode.node import NodeAgent
from processnode.status import Observed, pod_status

from .pods import FakePod, Inspections

log = logging.getLogger(__name__)

Obj = dict[str, Any]
TAINT_KEY = "loraplane.dev/fake-node"
PROBE_SECONDS = 2.0  # the agent container's readinessProbe periodSeconds (builders/deployment.py)
WATCH_SECONDS = 60


class FakeNode:
    def __init__(self, kube: Kube, name: str, network: ipaddress.IPv4Network, version: str) -> None:
        self.kube, self.name, self.network = kube, name, network
        hosts = network.hosts()
        self.host_ip = str(next(hosts))  # the node's own address, never a pod's
        # Next-fit, as the process node and host-local IPAM hand them out: a freed address goes
        # last, so a new pod never answers at the address a client still holds for an old one.
        self._free = deque(str(ip) for ip in hosts)
        self.agent = NodeAgent(
            kube,
            name,
            self.host_ip,
            version,
            "fakepods",
            taints=[{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
        )
        self.pods: dict[str, FakePod] = {}  # uid ->
        self.by_ip: dict[str, FakePod] = {}
        self._objects: dict[str, Obj] = {}  # uid -> the pod as last seen
        self._sent: dict[str, Obj] = {}  # uid -> the status last reported, times left out
        self._tokens: dict[tuple[str, str], str] = {}
        self._inspections = Inspections()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[tuple[Callable[[Any], Awaitable[None]], Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = threading.Event()
        self.status_writes = 0

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.agent.register)
        threading.Thread(target=self._watch, daemon=True, name="pod-watch").start()
        probes = asyncio.get_running_loop().create_task(self._probe())
        try:
            while not self._stop.is_set():
                fn, arg = await self._events.get()
                await fn(arg)
        finally:
            probes.cancel()

    async def _probe(self) -> None:
        """Every container's readiness, judged once a probe period as the kubelet does."""
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            for uid, pod in list(self._objects.items()):
                await (self._report(uid) if uid in self.pods else self._observe(pod))

    def stop(self) -> None:
        self._stop.set()
        self.agent.stop()

    # -- the watch (a thread: the client is blocking) -----------------------------------------

    def _watch(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self._stop.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                self._hand(self._relisted, listing.get("items") or [])
                rv = listing["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    for event in self.kube.watch(
                        "/api/v1/pods",
                        timeout_seconds=WATCH_SECONDS,
                        fieldSelector=selector,
                        resourceVersion=rv,
                        allowWatchBookmarks="true",
                    ):
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), str(obj.get("message")))
                        rv = obj["metadata"]["resourceVersion"]
                        if kind == "DELETED":
                            self._hand(self._forget, obj["metadata"]["uid"])
                        elif kind != "BOOKMARK":
                            self._hand(self._observe, obj)
            except Exception as exc:  # relist on anything, 410 Gone included
                log.warning("pod watch: %s; relisting", exc)
                self._stop.wait(1)

    def _hand(self, fn: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        """To the event loop, where every fake pod lives, in the watch's order."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._events.put_nowait, (fn, arg))

    async def _relisted(self, pods: list[Obj]) -> None:
        seen = {p["metadata"]["uid"] for p in pods}
        for uid in [u for u in self.pods if u not in seen]:
            await self._forget(uid)
        for pod in pods:
            await self._observe(pod)

    # -- pods ----------------------------------------------------------------------------------

    async def _observe(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if meta.get("deletionTimestamp"):
            await self._forget(uid)
            await asyncio.to_thread(self._delete, pod)
            return
        self._objects[uid] = pod
        if uid not in self.pods:
            if not self._free:
                log.error("no address left in %s for pod %s", self.network, meta["name"])
                return
            token = await self._token(pod)
            if not token:
                return  # as a kubelet holds the containers until the Secret exists: next probe
            fake = FakePod(pod, self._address(pod), token, self._inspections)
            self.pods[uid] = fake
            self.by_ip[fake.ip] = fake
            log.info("pod %s/%s at %s", fake.namespace, fake.name, fake.ip)
        else:
            self.pods[uid].pod = pod
        await self._report(uid)

    def _address(self, pod: Obj) -> str:
        """The address the pod has, if it has one of ours (a node's kubelet restarted keeps its
        pods' sandboxes, and the API refuses to change a pod's IP), else the next free one."""
        ip = (pod.get("status") or {}).get("podIP")
        if ip in self._free:
            self._free.remove(ip)
            return str(ip)
        return self._free.popleft()

    async def _forget(self, uid: str) -> None:
        fake = self.pods.pop(uid, None)
        self._objects.pop(uid, None)
        self._sent.pop(uid, None)
        if fake is not None:
            self.by_ip.pop(fake.ip, None)
            self._free.append(fake.ip)
            # The token is read again for the next pod: a base model deleted and made again
            # (its namespace too) has a new Secret, which a kubelet reads at each container start.
            key = self._token_key(fake.pod)
            if not any(self._token_key(p.pod) == key for p in self.pods.values()):
                self._tokens.pop(key, None)

    @staticmethod
    def _token_key(pod: Obj) -> tuple[str, str]:
        base = (pod["metadata"].get("labels") or {}).get(naming.LABEL_BASE_MODEL, "")
        return (pod["metadata"]["namespace"], naming.agent_secret_name(base))

    def _delete(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            self.kube.delete(
                pod_path(meta["namespace"], meta["name"]),
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("deleting pod %s/%s: %s", meta["namespace"], meta["name"], exc)

    async def _token(self, pod: Obj) -> str:
        """The agent's token, as the kubelet resolves the container's secretKeyRef."""
        key = self._token_key(pod)
        if key not in self._tokens:
            try:
                secret = await asyncio.to_thread(self.kube.get, ns_path(key[0], "secrets", key[1]))
                raw = (secret.get("data") or {}).get(naming.AGENT_TOKEN_KEY, "")
                self._tokens[key] = base64.b64decode(raw).decode()
            except ApiError as exc:
                log.warning("agent token of %s/%s: %s", *key, exc)
                return ""
        return self._tokens[key]

    async def _report(self, uid: str) -> None:
        """The pod's status as the kubelet computes it, written only when it changed."""
        fake, pod = self.pods.get(uid), self._objects.get(uid)
        if fake is None or pod is None:
            return
        status = pod_status(
            Observed(
                pod=pod,
                host_ip=self.host_ip,
                start_time=fake.started_at,
                pod_ip=fake.ip,
                sandbox_ready=True,
                initialized=True,
                statuses=fake.container_statuses(),
                any_started=True,
            )
        )
        comparable = {
            **status,
            "conditions": [
                {k: v for k, v in c.items() if k != "lastTransitionTime"}
                for c in status["conditions"]
            ],
        }
        if comparable == self._sent.get(uid):
            return
        self._sent[uid] = comparable
        try:
            path = pod_path(fake.namespace, fake.name, "status")
            updated = await asyncio.to_thread(self.kube.strategic_patch, path, {"status": status})
        except ApiError as exc:
            self._sent.pop(uid, None)
            log.warning("status of %s/%s: %s", fake.namespace, fake.name, exc)
            return
        self.status_writes += 1
        if updated.get("metadata", {}).get("uid") == uid:
            self._objects[uid] = updated

    async def restart_vllm(self, namespace: str, name: str) -> bool:
        fake = next(
            (p for p in self.pods.values() if (p.namespace, p.name) == (namespace, name)), None
        )
        if fake is None:
            return False
        fake.restart_vllm()
        await self._report(fake.uid)

        async def started() -> None:
            # Its /health answers at once; the kubelet sees it at the next probe.
            await asyncio.sleep(PROBE_SECONDS)
            fake.vllm_ready = True
            await self._report(fake.uid)

        task = asyncio.get_running_loop().create_task(started())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

"""The pod watch loop: one PodWorker per pod bound to this node."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from .kube import ApiError, Kube, pod_path
from .pod import PodWorker
from .runner import kill_pod_cgroups
from .sandbox import GATEWAY, Network
from .volumes import remove_pod_dir

log = logging.getLogger(__name__)

Obj = dict[str, Any]
RELIST_SECONDS = 300


class Kubelet:
    def __init__(
        self, kube: Kube, node_name: str, home: str, venv: str, checkout: str, network: Network
    ) -> None:
        self.kube, self.node_name, self.home = kube, node_name, home
        self.venv, self.checkout, self.network = venv, checkout, network
        self.host_ip = GATEWAY
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    @property
    def api_host(self) -> str:
        """The API server address pods use (no kube-proxy: the host's own address)."""
        return self.host_ip if self.network.mode == "netns" else "127.0.0.1"

    def cleanup_leftovers(self) -> None:
        """Removes what an earlier run of this node left (after a crash): processes, sandboxes,
        volumes. $HOME/pods/<uid> is the registry, so other homes' pods are never touched.
        Their pods then start afresh, like containers after a node reboot."""
        root = f"{self.home}/pods"
        if os.path.isdir(root):
            for uid in os.listdir(root):
                kill_pod_cgroups(uid)
                self.network.remove_stale(uid)
                remove_pod_dir(f"{root}/{uid}")

    # --- watch -------------------------------------------------------------------------------

    def run(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self._stop.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self._observe(pod)
                with self._lock:
                    gone = [w for uid, w in self.workers.items() if uid not in seen]
                for w in gone:
                    w.vanish()
                rv = listing["metadata"]["resourceVersion"]
                deadline = time.monotonic() + RELIST_SECONDS
                while not self._stop.is_set() and time.monotonic() < deadline:
                    for event in self.kube.watch(
                        "/api/v1/pods",
                        timeout_seconds=60,
                        fieldSelector=selector,
                        resourceVersion=rv,
                        allowWatchBookmarks="true",
                    ):
                        if self._stop.is_set():
                            return
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), str(obj.get("message")))
                        rv = obj["metadata"]["resourceVersion"]
                        if kind == "BOOKMARK":
                            continue
                        if kind == "DELETED":
                            self._deleted(obj)
                        else:
                            self._observe(obj)
            except Exception as exc:  # relist on anything, 410 Gone included
                if self._stop.is_set():
                    return
                log.warning("pod watch: %s; relisting", exc)
                self._stop.wait(1)

    def _observe(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self.workers.get(uid)
            if worker is None and not self._stop.is_set():
                phase = (pod.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    # Terminal before we saw it (or before a node restart): nothing runs.
                    if pod["metadata"].get("deletionTimestamp"):
                        self._force_delete(pod)
                    return
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.start()
                return
        if worker is not None:
            worker.update(pod)

    def _deleted(self, pod: Obj) -> None:
        with self._lock:
            worker = self.workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.vanish()

    def _force_delete(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            self.kube.delete(
                pod_path(meta["namespace"], meta["name"]),
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("deleting pod %s/%s: %s", meta["namespace"], meta["name"], exc)

    def worker_done(self, worker: PodWorker) -> None:
        with self._lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]

    # --- shutdown ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stops every pod's processes and removes their sandboxes; reports nothing."""
        self._stop.set()
        with self._lock:
            workers = list(self.workers.values())
        log.info("node stopping: stopping %d pod(s)", len(workers))
        for w in workers:
            w.stop_for_node_shutdown()
        for w in workers:
            w.done.wait(timeout=40)

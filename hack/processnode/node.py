"""The Node: registration, status heartbeat, and the Lease the node-lifecycle controller reads."""

from __future__ import annotations

import logging
import os
import platform
import threading

from .kube import ApiError, Kube
from .util import now, now_micro

log = logging.getLogger(__name__)

CAPACITY = {
    "cpu": "8",
    "memory": "24Gi",
    "pods": "110",
    "nvidia.com/gpu": "8",
    "ephemeral-storage": "100Gi",
}
LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10
STATUS_SECONDS = 30


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


class NodeAgent:
    def __init__(
        self,
        kube: Kube,
        name: str,
        host_ip: str,
        kubelet_version: str,
        network_mode: str,
        taints: list[dict[str, str]] | None = None,
    ) -> None:
        self.taints = taints or []
        self.kube, self.name, self.host_ip = kube, name, host_ip
        self.kubelet_version, self.network_mode = kubelet_version, network_mode
        self.since = now()
        self.uid = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="node-heartbeat")

    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "loraplane-process-node",
        }
        meta = {
            "name": self.name,
            "labels": labels,
            "annotations": {"loraplane.dev/network-mode": self.network_mode},
        }
        body: dict[str, object] = {"apiVersion": "v1", "kind": "Node", "metadata": meta}
        if self.taints:
            body["spec"] = {"taints": self.taints}
        try:
            node = self.kube.create("/api/v1/nodes", body)
            log.info("registered node %s", self.name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = self.kube.merge_patch(f"/api/v1/nodes/{self.name}", {"metadata": meta})
            log.info("node %s already registered; updated it", self.name)
        self.uid = node["metadata"]["uid"]
        self._post_status()
        self._renew_lease()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        ticks = 0
        while not self._stop.wait(LEASE_RENEW_SECONDS):
            ticks += 1
            try:
                self._renew_lease()
                if ticks * LEASE_RENEW_SECONDS % STATUS_SECONDS == 0:
                    self._post_status()
            except Exception as exc:  # keep beating: the API server may be restarting
                log.warning("node heartbeat: %s", exc)

    def _post_status(self) -> None:
        beat = now()

        def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": beat,
                "lastTransitionTime": self.since,
            }

        status = {
            "capacity": CAPACITY,
            "allocatable": CAPACITY,
            "conditions": [
                cond(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "process node has sufficient memory available",
                ),
                cond(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "process node has no disk pressure",
                ),
                cond(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "process node has sufficient PID available",
                ),
                cond("Ready", "True", "KubeletReady", "process node is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": _read("/etc/machine-id"),
                "systemUUID": _read("/etc/machine-id"),
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": "loraplane process node",
                "containerRuntimeVersion": "processnode://0.1.0",
                "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.kube.strategic_patch(f"/api/v1/nodes/{self.name}/status", {"status": status})

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {
            "holderIdentity": self.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_micro(),
        }
        try:
            self.kube.merge_patch(path, {"spec": spec})
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.kube.create(
                path.rsplit("/", 1)[0],
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [
                            {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}
                        ],
                    },
                    "spec": spec,
                },
            )


def kubelet_version(checkout: str) -> str:
    """The Kubernetes version pinned in hack/versions.env, reported as the kubelet version."""
    for line in _read(os.path.join(checkout, "hack", "versions.env")).splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("KUBERNETES_VERSION", "K8S_VERSION", "KUBE_VERSION"):
            return value.strip().strip('"')
    return "v1.36.3"

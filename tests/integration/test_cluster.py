"""The local cluster itself: real scheduling, pods as processes, restarts, GC and RBAC."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.integration.cluster import (
    Cluster,
    cmdline,
    completion,
    condition,
    http_json,
    netns_pids,
    pod_ready,
    post_text,
    served_adapters,
    wait_for,
)
from tests.support.adapters import ensure_adapter

VLLM_START = 420.0


def vllm_deployment(home: Path) -> dict[str, Any]:
    """A plain Deployment (no operator) running the tiny model on the vLLM image."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "raw-vllm"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "raw-vllm"}},
            "template": {
                "metadata": {"labels": {"app": "raw-vllm"}},
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:v0.32.0",
                            "args": [
                                "--model",
                                "/models/tiny-llama",
                                "--served-model-name",
                                "tiny",
                                "--host",
                                "0.0.0.0",
                                "--port",
                                "8000",
                                "--dtype",
                                "bfloat16",
                                "--max-model-len",
                                "512",
                                "--max-num-seqs",
                                "8",
                                "--enable-lora",
                                "--max-lora-rank",
                                "16",
                            ],
                            "env": [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "true"}],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 2,
                            },
                            "volumeMounts": [
                                {"name": "home", "mountPath": "/models", "subPath": "models"},
                                {"name": "home", "mountPath": "/fixtures", "subPath": "adapters"},
                            ],
                        }
                    ],
                    "volumes": [{"name": "home", "hostPath": {"path": str(home)}}],
                },
            },
        },
    }


def _pod(cluster: Cluster, ns: str, selector: str) -> dict[str, Any] | None:
    pods = [
        p for p in cluster.list("pods", ns, selector) if not p["metadata"].get("deletionTimestamp")
    ]
    return pods[0] if len(pods) == 1 else None


def test_vllm_pod_serves_restarts_and_is_garbage_collected(
    cluster: Cluster, namespace: str, tiny_model: Path, loraplane_home: Path
) -> None:
    ensure_adapter("rank8", loraplane_home)
    started = time.monotonic()
    cluster.apply(vllm_deployment(loraplane_home), namespace)
    pod = wait_for(
        "the vLLM pod Ready",
        lambda: (p := _pod(cluster, namespace, "app=raw-vllm")) and pod_ready(p) and p,
        timeout=VLLM_START,
    )
    print(f"\n[cluster] Deployment create -> vLLM pod Ready: {time.monotonic() - started:.1f}s")
    ip, name, uid = pod["status"]["podIP"], pod["metadata"]["name"], pod["metadata"]["uid"]
    assert ip.startswith("10.244.")
    models = http_json(f"http://{ip}:8000/v1/models")
    assert [m["id"] for m in models["data"]] == ["tiny"]
    post_text(
        f"http://{ip}:8000/v1/load_lora_adapter",
        {"lora_name": "r8", "lora_path": "/fixtures/rank8"},
    )
    assert served_adapters(ip) == {"r8": "/fixtures/rank8"}
    assert completion(ip, "r8")

    # Memory of the pod: every process in its network namespace.
    pids = netns_pids(uid)
    rss = sum(
        int(line.split()[1]) * 1024
        for pid in pids
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    print(f"[cluster] vLLM pod: {len(pids)} processes, RSS {rss / 2**30:.2f} GiB")

    # Kill the server: the container restarts with a new ID, Ready goes false then true.
    before = pod["status"]["containerStatuses"][0]
    vllm_pid = min(p for p in pids if "vllm.entrypoints" in cmdline(p))
    os.kill(vllm_pid, signal.SIGKILL)
    wait_for(
        "Ready to go false",
        lambda: not pod_ready(cluster.get("pod", name, namespace) or {}),
        timeout=60,
        interval=0.2,
    )
    after = wait_for(
        "Ready again after the restart",
        lambda: (p := cluster.get("pod", name, namespace)) and pod_ready(p) and p,
        timeout=VLLM_START,
    )["status"]["containerStatuses"][0]
    assert after["restartCount"] == before["restartCount"] + 1
    assert after["containerID"] != before["containerID"]
    assert after["lastState"]["terminated"]["exitCode"] != 0
    assert served_adapters(ip) == {}, "runtime adapters survived a restart (they must not)"

    # Deleting the Deployment garbage-collects the pod and kills its processes.
    cluster.kubectl("delete", "deployment", "raw-vllm", "-n", namespace)
    wait_for(
        "the pod gone", lambda: not cluster.list("pods", namespace, "app=raw-vllm"), timeout=120
    )
    wait_for(
        "its processes gone", lambda: not [p for p in netns_pids(uid) if cmdline(p)], timeout=30
    )
    leftovers = [p for p in pids if cmdline(p)]
    assert not leftovers, f"processes of the deleted pod still run: {leftovers}"


LIST_PODS = (
    "import sys\n"
    "from kubernetes import client, config\n"
    "config.load_incluster_config()\n"
    "v1 = client.CoreV1Api()\n"
    "for ns in sys.argv[1:]:\n"
    "    try:\n"
    "        v1.list_namespaced_pod(ns)\n"
    "        print(ns, 'allowed', flush=True)\n"
    "    except client.ApiException as e:\n"
    "        print(ns, 'denied', e.status, flush=True)\n"
)


def test_service_account_token_lists_pods_only_where_rbac_allows(
    cluster: Cluster, namespace: str
) -> None:
    manifests: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "rbac-probe"},
            "spec": {
                "serviceAccountName": "reader",
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "probe",
                        "image": "ghcr.io/loraplane/loraplane:dev",
                        "command": ["python", "-c", LIST_PODS, namespace, "kube-system"],
                    }
                ],
            },
        },
    ]
    cluster.apply(manifests, namespace)
    wait_for(
        "the probe pod to finish",
        lambda: (
            (cluster.get("pod", "rbac-probe", namespace) or {}).get("status", {}).get("phase")
            in ("Succeeded", "Failed")
        ),
        timeout=120,
    )
    log = cluster.home / "logs" / namespace / "rbac-probe" / "probe.log"
    out = log.read_text()
    assert f"{namespace} allowed" in out, out
    assert "kube-system denied 403" in out, out
    pod = cluster.get("pod", "rbac-probe", namespace)
    assert condition(pod, "Ready") is not None
    assert json.dumps(pod["spec"]).count("kube-api-access") >= 1  # the projected token volume

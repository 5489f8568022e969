"""BaseModelDeployment on the real local cluster with the tiny model on CPU vLLM.

The tests in this module share one BaseModelDeployment (vLLM pods take a minute to start on two
cores) and run in order: create, serve, scale, roll, refuse a bad spec, delete.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Cluster, completion, condition, pod_ready, wait_for
from tests.integration.manifests import tiny_base_model
from tests.integration.operator_process import OperatorProcess

NAME = "tiny"
SELECTOR = f"loraplane.dev/base-model={NAME}"
START = 420.0  # seconds for vLLM pods to start on a busy 2-core machine


class Shared:
    namespace: str = ""


@pytest.fixture(scope="module")
def bmd_ns(operator: OperatorProcess, tiny_model: Path) -> Iterator[str]:
    cluster = operator.cluster
    ns = "it-base-model"
    cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
    cluster.kubectl("create", "namespace", ns)
    Shared.namespace = ns
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def bmd(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    return cluster.get("bmd", NAME, ns)


def running_pods(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return [
        p for p in cluster.list("pods", ns, SELECTOR) if not p["metadata"].get("deletionTimestamp")
    ]


def available(cluster: Cluster, ns: str, ready: int) -> dict[str, Any] | None:
    obj = bmd(cluster, ns)
    status = (obj or {}).get("status") or {}
    cond = condition(obj, "Available")
    if (
        cond
        and cond["status"] == "True"
        and status.get("readyReplicas") == ready
        and status.get("observedGeneration") == obj["metadata"]["generation"]  # type: ignore[index]
        and len(running_pods(cluster, ns)) == ready
    ):
        return obj
    return None


def test_create_two_replicas_become_available_and_serve(
    operator: OperatorProcess, bmd_ns: str, loraplane_home: Path
) -> None:
    cluster = operator.cluster
    cluster.apply(tiny_base_model(NAME, loraplane_home, replicas=2), bmd_ns)
    obj = wait_for(
        "BaseModelDeployment Available with 2/2",
        lambda: available(cluster, bmd_ns, 2),
        timeout=START,
    )
    status = obj["status"]
    assert status["ready"] == "2/2"
    assert status["servedName"] == NAME
    assert status["endpoint"] == f"http://{NAME}.{bmd_ns}.svc:8000/v1"
    assert condition(obj, "Degraded")["status"] == "False"  # type: ignore[index]
    assert condition(obj, "Progressing")["reason"] == "RolloutComplete"  # type: ignore[index]
    # What it owns: a Deployment, a Service with port http/8000, the agent's Secret.
    svc = cluster.get("service", NAME, bmd_ns)
    assert (
        svc
        and svc["spec"]["ports"][0]["name"] == "http"
        and svc["spec"]["ports"][0]["port"] == 8000
    )
    for kind in ("deployment", "service"):
        owned = cluster.get(kind, NAME, bmd_ns)
        assert owned and owned["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    pods = running_pods(cluster, bmd_ns)
    assert len({p["status"]["podIP"] for p in pods}) == 2
    for pod in pods:
        assert pod_ready(pod)
        assert completion(pod["status"]["podIP"], NAME)
    # The printer columns a user sees.
    table = cluster.kubectl("get", "bmd", NAME, "-n", bmd_ns).stdout
    assert "2/2" in table and "True" in table and "16" in table


def test_scale_down_and_up_with_kubectl_scale(operator: OperatorProcess, bmd_ns: str) -> None:
    cluster = operator.cluster
    cluster.kubectl("scale", "bmd", NAME, "-n", bmd_ns, "--replicas=1")
    wait_for("scaled to 1", lambda: available(cluster, bmd_ns, 1), timeout=120)
    assert cluster.get("deployment", NAME, bmd_ns)["spec"]["replicas"] == 1  # type: ignore[index]
    cluster.kubectl("scale", "bmd", NAME, "-n", bmd_ns, "--replicas=2")
    wait_for("scaled back to 2", lambda: available(cluster, bmd_ns, 2), timeout=START)


def _vllm_log(cluster: Cluster, ns: str, pod: str) -> str:
    path = cluster.home / "logs" / ns / pod / "vllm.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_changing_max_loras_rolls_the_pods_and_the_new_value_is_live(
    operator: OperatorProcess, bmd_ns: str
) -> None:
    cluster = operator.cluster
    before = {p["metadata"]["uid"] for p in running_pods(cluster, bmd_ns)}
    cluster.kubectl(
        "patch", "bmd", NAME, "-n", bmd_ns, "--type=merge", "-p", '{"spec":{"lora":{"maxLoras":3}}}'
    )

    def rolled() -> bool:
        pods = running_pods(cluster, bmd_ns)
        return available(cluster, bmd_ns, 2) is not None and not before & {
            p["metadata"]["uid"] for p in pods
        }

    wait_for("pods rolled with maxLoras 3", rolled, timeout=2 * START)
    for pod in running_pods(cluster, bmd_ns):
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--max-loras") + 1] == "3"
        # The running server says so itself: vLLM logs its non-default engine arguments.
        assert "'max_loras': 3" in _vllm_log(cluster, bmd_ns, pod["metadata"]["name"])


def test_removed_flag_is_refused_with_degraded_and_no_pod_churn(
    operator: OperatorProcess, bmd_ns: str
) -> None:
    cluster = operator.cluster
    pods_before = {p["metadata"]["uid"] for p in running_pods(cluster, bmd_ns)}
    dep_gen = cluster.get("deployment", NAME, bmd_ns)["metadata"]["generation"]  # type: ignore[index]
    cluster.kubectl(
        "patch",
        "bmd",
        NAME,
        "-n",
        bmd_ns,
        "--type=merge",
        "-p",
        '{"spec":{"engine":{"extraArgs":["--max-num-seqs","8","--lora-extra-vocab-size","256"]}}}',
    )

    def degraded() -> dict[str, Any] | None:
        cond = condition(bmd(cluster, bmd_ns), "Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for("Degraded=True", degraded, timeout=60)
    assert cond["reason"] == "InvalidEngineArgs"
    assert "--lora-extra-vocab-size" in cond["message"] and "removed" in cond["message"]
    wait_for(
        "a Warning event InvalidEngineArgs",
        lambda: [e for e in cluster.events(bmd_ns, NAME) if e.get("reason") == "InvalidEngineArgs"],
        timeout=30,
    )
    # Still serving as before: same pods, Deployment untouched, Available stays True.
    assert {p["metadata"]["uid"] for p in running_pods(cluster, bmd_ns)} == pods_before
    assert cluster.get("deployment", NAME, bmd_ns)["metadata"]["generation"] == dep_gen  # type: ignore[index]
    assert condition(bmd(cluster, bmd_ns), "Available")["status"] == "True"  # type: ignore[index]
    # Fixing the spec clears the condition.
    cluster.kubectl(
        "patch",
        "bmd",
        NAME,
        "-n",
        bmd_ns,
        "--type=merge",
        "-p",
        '{"spec":{"engine":{"extraArgs":["--max-num-seqs","8"]}}}',
    )
    wait_for(
        "Degraded=False",
        lambda: condition(bmd(cluster, bmd_ns), "Degraded")["status"] == "False",  # type: ignore[index]
        timeout=60,
    )


def test_children_edited_or_deleted_by_hand_are_put_back(
    operator: OperatorProcess, bmd_ns: str
) -> None:
    cluster = operator.cluster
    old = cluster.get("service", NAME, bmd_ns)
    assert old is not None
    before = operator.writes()
    cluster.kubectl("delete", "service", NAME, "-n", bmd_ns)
    wait_for(
        "the Service recreated",
        lambda: (
            (s := cluster.get("service", NAME, bmd_ns))
            and s["metadata"]["uid"] != old["metadata"]["uid"]
        ),
        timeout=60,
    )
    # Only the Service was written: the reconcile found its Deployment as it wants it.
    written = {k: v - before.get(k, 0) for k, v in operator.writes().items()}
    assert {k: v for k, v in written.items() if v and "status" not in k} == {"services apply": 1}
    cluster.kubectl(
        "patch",
        "service",
        NAME,
        "-n",
        bmd_ns,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/ports/0/port","value":9000}]',
    )
    wait_for(
        "the Service port restored to 8000",
        lambda: cluster.get("service", NAME, bmd_ns)["spec"]["ports"][0]["port"] == 8000,  # type: ignore[index]
        timeout=60,
    )
    cluster.kubectl(
        "patch",
        "deployment",
        NAME,
        "-n",
        bmd_ns,
        "--type=merge",
        "-p",
        '{"metadata":{"labels":{"app.kubernetes.io/managed-by":"someone-else"}}}',
    )
    wait_for(
        "the Deployment's labels restored",
        lambda: (
            cluster.get("deployment", NAME, bmd_ns)["metadata"]["labels"][  # type: ignore[index]
                "app.kubernetes.io/managed-by"
            ]
            == "loraplane"
        ),
        timeout=60,
    )


def test_delete_removes_everything_it_owned(operator: OperatorProcess, bmd_ns: str) -> None:
    cluster = operator.cluster
    pods = running_pods(cluster, bmd_ns)
    cluster.kubectl("delete", "bmd", NAME, "-n", bmd_ns)

    def gone() -> bool:
        return (
            cluster.get("deployment", NAME, bmd_ns) is None
            and cluster.get("service", NAME, bmd_ns) is None
            and cluster.get("secret", f"{NAME}-agent-token", bmd_ns) is None
            and not cluster.list("pods", bmd_ns, SELECTOR)
        )

    wait_for("every owned object garbage-collected", gone, timeout=180)
    # And their processes: nothing answers on the old pod IPs any more.
    for pod in pods:
        ip = pod["status"]["podIP"]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{ip}:8000/health", timeout=3)


def _degraded_reason(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    cond = condition(cluster.get("bmd", name, ns), "Degraded")
    return cond if cond and cond["status"] == "True" else None


def test_unschedulable_gpu_request_and_missing_secret_are_reported(
    operator: OperatorProcess, namespace: str, loraplane_home: Path
) -> None:
    """What the pods really show ends up in Degraded: the scheduler's and the kubelet's words."""
    cluster = operator.cluster
    greedy = tiny_base_model("greedy", loraplane_home)
    greedy["spec"]["engine"]["resources"] = {"limits": {"nvidia.com/gpu": 64}}
    keyless = tiny_base_model("keyless", loraplane_home)
    keyless["spec"]["engine"]["apiKeySecretRef"] = {"name": "no-such-secret", "key": "key"}
    cluster.apply([greedy, keyless], namespace)
    cond = wait_for(
        "greedy Degraded", lambda: _degraded_reason(cluster, namespace, "greedy"), timeout=90
    )
    assert cond["reason"] == "Unschedulable" and "nvidia.com/gpu" in cond["message"]
    cond = wait_for(
        "keyless Degraded", lambda: _degraded_reason(cluster, namespace, "keyless"), timeout=90
    )
    assert cond["reason"] == "CreateContainerConfigError"
    assert "no-such-secret" in cond["message"]
    assert condition(cluster.get("bmd", "keyless", namespace), "Available")["status"] == "False"  # type: ignore[index]

"""LoRAAdapter end to end: real vLLM pods on the local cluster, real peft adapters.

One 2-pod base model is shared by the tests of this module, which run in order; each test leaves
the adapters it needs afterwards in place and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import (
    AGENT_PROCESS,
    VLLM_PROCESS,
    Cluster,
    completion,
    condition,
    container_pid,
    pod_ready,
    served_adapters,
    wait_for,
)
from tests.integration.manifests import ADAPTER_SOURCES, lora_adapter, tiny_base_model
from tests.integration.operator_process import OperatorProcess

NS = "it-adapters"
BASE = "tiny"
SELECTOR = f"loraplane.dev/base-model={BASE}"
START = 480.0
PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def adapters(loraplane_home: Path) -> dict[str, Path]:
    from tests.support.adapters import ensure_adapters

    return ensure_adapters(loraplane_home)


@pytest.fixture(scope="module")
def base(
    operator: OperatorProcess, tiny_model: Path, adapters: dict[str, Path], loraplane_home: Path
) -> Iterator[Cluster]:
    cluster = operator.cluster
    cluster.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=180s", check=False)
    cluster.kubectl("create", "namespace", NS)
    cluster.apply(tiny_base_model(BASE, loraplane_home, replicas=2), NS)
    wait_for(
        "base model Available 2/2",
        lambda: _ready_pods(cluster) if len(_ready_pods(cluster)) == 2 else None,
        timeout=START,
    )
    yield cluster
    cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _pods(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        p for p in cluster.list("pods", NS, SELECTOR) if not p["metadata"].get("deletionTimestamp")
    ]


def _ready_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return [p for p in _pods(cluster) if pod_ready(p)]


def _lora(cluster: Cluster, name: str) -> dict[str, Any] | None:
    return cluster.get("lora", name, NS)


def _phase(cluster: Cluster, name: str, phase: str) -> dict[str, Any] | None:
    obj = _lora(cluster, name)
    status = (obj or {}).get("status") or {}
    if (
        status.get("phase") == phase
        and status.get("observedGeneration") == obj["metadata"]["generation"]
    ):  # type: ignore[index]
        return obj
    return None


def _apply_adapter(cluster: Cluster, name: str, fixture: str, priority: int = 0) -> None:
    cluster.apply(lora_adapter(name, BASE, f"{ADAPTER_SOURCES}/{fixture}", priority), NS)


GOOD = {"sql": "rank8", "chat": "rank16", "mlp": "rank8-mlp"}


def test_three_adapters_ready_on_every_pod_and_change_the_output(base: Cluster) -> None:
    for name, fixture in GOOD.items():
        _apply_adapter(base, name, fixture)
    for name in GOOD:
        obj = wait_for(f"{name} Ready", lambda n=name: _phase(base, n, "Ready"), timeout=180)
        status = obj["status"]
        assert status["ready"] == "2/2"
        assert status["replicas"] == {"desired": 2, "registered": 2, "outdated": 0}
        assert condition(obj, "Validated")["status"] == "True"  # type: ignore[index]
        assert status["adapter"]["path"].startswith(f"/adapters/{name}/")
        assert {p["state"] for p in status["pods"]} == {"Registered"}
    assert _lora(base, "chat")["status"]["adapter"]["rank"] == 16  # type: ignore[index]
    for pod in _ready_pods(base):
        ip = pod["status"]["podIP"]
        assert set(served_adapters(ip)) >= set(GOOD)
        plain = completion(ip, BASE, PROMPT)
        for name in GOOD:
            assert completion(ip, name, PROMPT) != plain, f"{name} answers like the base model"
    table = base.kubectl("get", "lora", "-n", NS).stdout
    assert "Ready" in table and "2/2" in table
    # What the operator exports: one successful load per adapter and pod, each registered.
    for name in GOOD:
        labels = f'adapter="{name}",base_model="{BASE}",namespace="{NS}"'
        assert metric(f'loraplane_adapter_loads_total{{{labels},result="success"}}') == 2
        for pod in _ready_pods(base):
            registered = f'{labels},pod="{pod["metadata"]["name"]}"'
            assert metric(f"loraplane_adapter_registered{{{registered}}}") == 1


def test_each_pod_tells_where_its_engine_holds_each_adapter(base: Cluster) -> None:
    """With the three adapters of the test above on 2 pods (maxLoras 2, maxCpuLoras 4): after a
    request for each in turn, the last two hold the GPU slots and the first sits in the CPU cache,
    on each pod; the status says so by the next resync, and each agent's metrics at once."""
    where = {"sql": "cpu", "chat": "gpu", "mlp": "gpu"}
    pods = _ready_pods(base)
    for pod in pods:
        for name in where:
            completion(pod["status"]["podIP"], name, PROMPT)

    def tiers_as_expected() -> bool:
        for name, tier in where.items():
            got = {p["name"]: p.get("tier") for p in _lora(base, name)["status"]["pods"]}  # type: ignore[index]
            if got != {p["metadata"]["name"]: tier for p in pods}:
                return False
        return True

    wait_for("each pod's tier in status", tiers_as_expected, timeout=90)
    for pod in pods:
        text = urllib.request.urlopen(f"http://{pod['status']['podIP']}:8082/metrics", timeout=10)
        exported = text.read().decode()
        for name, tier in where.items():
            labels = (
                f'adapter="{name}",base_model="{BASE}",namespace="{NS}",'
                f'pod="{pod["metadata"]["name"]}",tier="{tier}"'
            )
            assert f"loraplane_adapter_resident{{{labels}}} 1.0" in exported, (name, exported)


BAD = {
    "too-big": ("rank64", "RankExceedsMax"),
    "dora": ("dora", "DoRANotSupported"),
    "corrupt": ("corrupt", "CorruptWeights"),
    "no-config": ("no-config", "AdapterNotFound"),
    "wrong-base": ("wrong-base", "BaseModelShapeMismatch"),
}


def test_bad_adapters_fail_each_with_its_reason_and_the_others_keep_serving(base: Cluster) -> None:
    for name, (fixture, _) in BAD.items():
        _apply_adapter(base, name, fixture)
    for name, (_, reason) in BAD.items():
        obj = wait_for(f"{name} Failed", lambda n=name: _phase(base, n, "Failed"), timeout=120)
        validated = condition(obj, "Validated")
        assert validated and validated["status"] == "False", obj["status"]
        assert validated["reason"] == reason, validated
        assert validated["message"]
        # What `kubectl get lora -o wide` and `describe` show: the reason itself, and no
        # earlier version where none was ever registered.
        message = obj["status"]["message"]
        assert message.startswith(validated["message"]), (message, validated["message"])
        assert "registered before" not in message, message
        warnings = wait_for(
            f"a Warning event for {name}",
            lambda n=name: [e for e in base.events(NS, n) if e.get("type") == "Warning"],
            timeout=30,
        )
        assert warnings[0]["reason"] == reason and warnings[0]["message"] == message, warnings
    too_big = condition(_lora(base, "too-big"), "Validated")
    assert "64" in too_big["message"] and "16" in too_big["message"]  # type: ignore[index]
    for pod in _ready_pods(base):
        ip = pod["status"]["podIP"]
        listed = served_adapters(ip)
        assert not set(BAD) & set(listed), f"a rejected adapter is registered: {listed}"
        assert set(GOOD) <= set(listed)
        completion(ip, "sql", PROMPT)
    for name in BAD:
        base.kubectl("delete", "lora", name, "-n", NS)


def test_killed_vllm_gets_its_adapters_back_and_is_not_ready_in_between(base: Cluster) -> None:
    pod = _ready_pods(base)[0]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    os.kill(container_pid(pod, VLLM_PROCESS), signal.SIGKILL)
    wait_for(
        "the pod to turn not Ready",
        lambda: not pod_ready(base.get("pod", name, NS) or {}),
        timeout=60,
        interval=0.2,
    )
    # Poll through the restart: whenever the pod says Ready, every adapter must be listed.
    deadline = time.monotonic() + START
    while time.monotonic() < deadline:
        now = base.get("pod", name, NS) or {}
        if pod_ready(now):
            assert set(GOOD) <= set(served_adapters(ip)), "Ready before its adapters were back"
            break
        time.sleep(0.5)
    else:
        pytest.fail("the pod did not come back Ready")
    status = next(c for c in now["status"]["containerStatuses"] if c["name"] == "vllm")
    assert status["restartCount"] >= 1
    for adapter in GOOD:
        wait_for(f"{adapter} Ready again", lambda a=adapter: _phase(base, a, "Ready"), timeout=60)
        # The restarted server got each adapter back once; new pods before it recovered nothing.
        # Labels as the exposition sorts them.
        labels = (
            f'adapter="{adapter}",base_model="{BASE}",cause="container_restart",namespace="{NS}"'
        )
        assert metric(f"loraplane_adapter_reregistrations_total{{{labels}}}") == 1
    assert completion(ip, "sql", PROMPT)


def test_scale_up_new_pod_holds_every_adapter_before_it_turns_ready(base: Cluster) -> None:
    before = {p["metadata"]["name"] for p in _pods(base)}
    base.kubectl("scale", "bmd", BASE, "-n", NS, "--replicas=3")
    new = wait_for(
        "a third pod",
        lambda: [p for p in _pods(base) if p["metadata"]["name"] not in before],
        timeout=60,
    )[0]
    name = new["metadata"]["name"]
    deadline = time.monotonic() + START
    while time.monotonic() < deadline:
        now = base.get("pod", name, NS) or {}
        if pod_ready(now):
            assert set(GOOD) <= set(served_adapters(now["status"]["podIP"])), "Ready too early"
            break
        time.sleep(0.3)
    else:
        pytest.fail("the new pod never turned Ready")
    for adapter in GOOD:
        obj = wait_for(
            f"{adapter} on 3/3",
            lambda a=adapter: (
                (o := _phase(base, a, "Ready")) and o["status"]["ready"] == "3/3" and o
            ),
            timeout=60,
        )
        assert len(obj["status"]["pods"]) == 3
    base.kubectl("scale", "bmd", BASE, "-n", NS, "--replicas=2")
    wait_for("back to 2 pods", lambda: len(_pods(base)) == 2, timeout=120)


def test_operator_restart_unloads_nothing_and_keeps_statuses(
    base: Cluster, operator: OperatorProcess
) -> None:
    for adapter in GOOD:
        wait_for(
            f"{adapter} on 2/2",
            lambda a=adapter: (o := _phase(base, a, "Ready")) and o["status"]["ready"] == "2/2",
            timeout=60,
        )
    ips = [p["status"]["podIP"] for p in _ready_pods(base)]
    before_models = {ip: served_adapters(ip) for ip in ips}
    before_status = {a: _lora(base, a)["status"] for a in GOOD}  # type: ignore[index]
    operator.restart()
    time.sleep(15)  # several status periods and a first sync of each pod
    for ip in ips:
        assert served_adapters(ip) == before_models[ip]
    # Nothing had changed: no child re-applied, no status rewritten.
    assert operator.writes() == {}
    for adapter in GOOD:
        after = _lora(base, adapter)["status"]  # type: ignore[index]
        assert after["phase"] == "Ready"
        assert after["pods"] == before_status[adapter]["pods"]  # same states, same `since`
        assert (
            condition({"status": after}, "Ready")["lastTransitionTime"]
            == condition(  # type: ignore[index]
                {"status": before_status[adapter]}, "Ready"
            )["lastTransitionTime"]
        )


@contextlib.contextmanager
def _agents_stopped(pods: list[dict[str, Any]]) -> Iterator[None]:
    """SIGSTOP the pods' agents: they accept connections and answer nothing, like a hung one.

    Their liveness probe restarts them after about 30 s; the tests using this finish sooner.
    """
    pids = [container_pid(p, AGENT_PROCESS) for p in pods]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_restart_while_a_new_version_loads_serves_the_new_version(
    base: Cluster, operator: OperatorProcess
) -> None:
    """A status written for a new generation without a version must not keep the old one's
    summary: after a restart the operator would take the old files for the new generation."""
    pods = _ready_pods(base)
    old_path = _lora(base, "chat")["status"]["adapter"]["path"]  # type: ignore[index]
    with _agents_stopped(pods):
        _set_source(base, "chat", "rank8-v2")
        loading = wait_for(
            "chat Loading at its new generation", lambda: _phase(base, "chat", "Loading"), 30
        )
        assert "adapter" not in loading["status"], "the old version's summary outlived it"
        operator.restart()
        time.sleep(3)
    obj = wait_for("chat Ready on its new version", lambda: _phase(base, "chat", "Ready"), 120)
    new_path = obj["status"]["adapter"]["path"]
    assert new_path != old_path, "the old version was taken for the new generation"
    for pod in pods:
        assert served_adapters(pod["status"]["podIP"])["chat"] == new_path
    _set_source(base, "chat", "rank16")
    wait_for("chat Ready on rank16 again", lambda: _phase(base, "chat", "Ready"), timeout=60)


def test_a_hung_agent_freezes_no_status(base: Cluster, operator: OperatorProcess) -> None:
    """Right after a restart, one pod's agent answers nothing: the other pod's adapters still
    get their status, and the hung pod's entries say why."""

    def both() -> list[dict[str, Any]] | None:
        ready = _ready_pods(base)
        return ready if len(ready) == 2 else None

    # The test before stops both agents: their pods pass readiness again a probe later.
    stuck, other = (p["metadata"]["name"] for p in wait_for("both pods Ready", both, 60))

    def partial() -> dict[str, Any] | None:
        obj = _lora(base, "fresh")
        entries = {p["name"]: p for p in ((obj or {}).get("status") or {}).get("pods") or []}
        mine, theirs = entries.get(other) or {}, entries.get(stuck) or {}
        if mine.get("state") == "Registered" and "agent" in str(theirs.get("lastError")):
            return obj
        return None

    try:
        with _agents_stopped([p for p in _ready_pods(base) if p["metadata"]["name"] == stuck]):
            operator.restart()
            _apply_adapter(base, "fresh", "rank8-mlp")
            obj = wait_for("fresh registered on one pod, the other saying why", partial, 40)
            assert obj["status"]["replicas"] == {"desired": 2, "registered": 1, "outdated": 0}
        wait_for(
            "fresh Ready 2/2 once the agent answers", lambda: _phase(base, "fresh", "Ready"), 120
        )
    finally:  # the later tests count this base model's adapters
        base.kubectl("delete", "lora", "fresh", "-n", NS, "--timeout=60s", check=False)


def metric(series: str) -> float | None:
    """The value of one series on the operator's /metrics (None when absent)."""
    text = urllib.request.urlopen("http://127.0.0.1:8080/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _store_dirs(cluster: Cluster, pod: dict[str, Any], adapter: str) -> list[str]:
    root = (
        cluster.home / "pods" / pod["metadata"]["uid"] / "volumes" / "loraplane-adapters" / adapter
    )
    return (
        sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        if root.exists()
        else []
    )


def _set_source(cluster: Cluster, name: str, fixture: str) -> None:
    source = {"spec": {"source": {"path": f"{ADAPTER_SOURCES}/{fixture}"}}}
    cluster.kubectl("patch", "lora", name, "-n", NS, "--type=merge", "-p", json.dumps(source))


def test_new_source_serves_new_weights_and_drops_the_old_version(
    base: Cluster, operator: OperatorProcess
) -> None:
    pods = _ready_pods(base)
    ip = pods[0]["status"]["podIP"]
    old_text = completion(ip, "sql", PROMPT)
    old_path = _lora(base, "sql")["status"]["adapter"]["path"]  # type: ignore[index]
    _set_source(base, "sql", "rank8-v2")
    obj = wait_for(
        "sql Ready at the new generation", lambda: _phase(base, "sql", "Ready"), timeout=120
    )
    new_path = obj["status"]["adapter"]["path"]
    assert new_path != old_path
    for pod in pods:
        assert served_adapters(pod["status"]["podIP"])["sql"] == new_path
        wait_for(
            "the old version's files removed",
            lambda p=pod: _store_dirs(base, p, "sql") == [new_path.rsplit("/", 1)[-1]],
            timeout=60,
        )
    new_text = completion(ip, "sql", PROMPT)
    assert new_text != old_text
    # A bad new version is refused and loses nothing: the registered one keeps serving.
    _set_source(base, "sql", "rank64")
    obj = wait_for("sql's bad version Failed", lambda: _phase(base, "sql", "Failed"), timeout=60)
    assert condition(obj, "Validated")["reason"] == "RankExceedsMax"  # type: ignore[index]
    for pod in pods:
        assert served_adapters(pod["status"]["podIP"])["sql"] == new_path
    assert completion(ip, "sql", PROMPT) == new_text
    # After a restart, the rejected generation is still what status reports, not the old files.
    operator.restart()
    time.sleep(10)
    obj = wait_for("sql still Failed after a restart", lambda: _phase(base, "sql", "Failed"), 60)
    assert "adapter" not in obj["status"], "a rejected generation shows a verified version"
    for pod in pods:
        assert served_adapters(pod["status"]["podIP"])["sql"] == new_path
    _set_source(base, "sql", "rank8-v2")
    wait_for("sql Ready on v2 again", lambda: _phase(base, "sql", "Ready"), timeout=60)


def test_capacity_evicts_the_lowest_priority_and_brings_it_back(base: Cluster) -> None:
    base.kubectl("patch", "lora", "sql", "-n", NS, "--type=merge", "-p", '{"spec":{"priority":10}}')
    base.kubectl("patch", "lora", "chat", "-n", NS, "--type=merge", "-p", '{"spec":{"priority":5}}')
    base.kubectl("patch", "lora", "mlp", "-n", NS, "--type=merge", "-p", '{"spec":{"priority":-1}}')
    base.kubectl(
        "patch",
        "bmd",
        BASE,
        "-n",
        NS,
        "--type=merge",
        "-p",
        '{"spec":{"lora":{"maxAdaptersPerReplica":2}}}',
    )

    def evicted() -> dict[str, Any] | None:
        obj = _phase(base, "mlp", "Pending")
        ready = condition(obj, "Ready")
        return obj if ready and ready["reason"] == "CapacityExceeded" else None

    obj = wait_for("mlp evicted with CapacityExceeded", evicted, timeout=90)
    assert "maxAdaptersPerReplica 2" in condition(obj, "Ready")["message"]  # type: ignore[index]
    for pod in _ready_pods(base):
        listed = served_adapters(pod["status"]["podIP"])
        assert "mlp" not in listed and {"sql", "chat"} <= set(listed)
    wait_for(
        "a CapacityExceeded event",
        lambda: [e for e in base.events(NS, "mlp") if e.get("reason") == "CapacityExceeded"],
        timeout=30,
    )
    labels = f'adapter="mlp",base_model="{BASE}",namespace="{NS}",reason="capacity",tier="server"'
    wait_for(
        "one eviction counted per pod",
        lambda: metric(f"loraplane_adapter_evictions_total{{{labels}}}") == 2,
        timeout=30,
    )
    base.kubectl("delete", "lora", "chat", "-n", NS)
    wait_for("mlp back once room frees", lambda: _phase(base, "mlp", "Ready"), timeout=90)
    for pod in _ready_pods(base):
        assert "mlp" in served_adapters(pod["status"]["podIP"])


def test_deleted_adapter_is_unregistered_everywhere_and_its_files_removed(base: Cluster) -> None:
    pods = _ready_pods(base)
    base.kubectl("delete", "lora", "mlp", "-n", NS, "--timeout=60s")
    assert _lora(base, "mlp") is None
    for pod in pods:
        assert "mlp" not in served_adapters(pod["status"]["podIP"])
        wait_for("mlp files removed", lambda p=pod: _store_dirs(base, p, "mlp") == [], timeout=60)


def test_adapter_deletion_completes_after_its_base_model_is_gone(base: Cluster) -> None:
    base.kubectl("delete", "bmd", BASE, "-n", NS, "--wait=false")
    wait_for("base model gone", lambda: base.get("bmd", BASE, NS) is None, timeout=60)
    base.kubectl("delete", "lora", "sql", "-n", NS, "--timeout=60s")
    assert _lora(base, "sql") is None

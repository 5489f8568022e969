"""Names and versions: one owner per served name, pinned versions, sources that go and come back.

One 2-pod base model is shared by the tests of this module, which run in order. Adapter sources
are copies of the fixtures in a scratch directory of the node, mounted in the pods at /scratch,
so a test can move, restore or overwrite them as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import (
    VLLM_PROCESS,
    Cluster,
    completion,
    condition,
    container_pid,
    pod_ready,
    served_adapters,
    wait_for,
)
from tests.integration.manifests import lora_adapter, tiny_base_model
from tests.integration.operator_process import OperatorProcess

NS = "it-versions"
BASE = "tiny"
SELECTOR = f"loraplane.dev/base-model={BASE}"
START = 480.0
PROMPT = "the quick brown fox"
MOUNT = "/scratch"


@pytest.fixture(scope="module")
def scratch(loraplane_home: Path) -> Iterator[Path]:
    root = loraplane_home / "scratch" / NS
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def adapters(loraplane_home: Path) -> dict[str, Path]:
    from tests.support.adapters import ensure_adapters

    return ensure_adapters(loraplane_home)


@pytest.fixture(scope="module")
def base(operator: OperatorProcess, tiny_model: Path, scratch: Path) -> Iterator[Cluster]:
    cluster = operator.cluster
    cluster.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=180s", check=False)
    cluster.kubectl("create", "namespace", NS)
    bmd = tiny_base_model(BASE, cluster.home, replicas=2)
    template = bmd["spec"]["template"]
    template["volumes"].append({"name": "scratch", "hostPath": {"path": str(scratch)}})
    template["volumeMounts"].append({"name": "scratch", "mountPath": MOUNT, "readOnly": True})
    cluster.apply(bmd, NS)
    wait_for("base model 2/2", lambda: len(_ready_pods(cluster)) == 2 or None, timeout=START)
    yield cluster
    cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _pods(cluster: Cluster) -> list[dict[str, Any]]:
    pods = cluster.list("pods", NS, SELECTOR)
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _ready_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return [p for p in _pods(cluster) if pod_ready(p)]


def _status(cluster: Cluster, name: str) -> dict[str, Any]:
    return ((cluster.get("lora", name, NS) or {}).get("status")) or {}


def _phase(cluster: Cluster, name: str, phase: str) -> dict[str, Any] | None:
    obj = cluster.get("lora", name, NS)
    status = (obj or {}).get("status") or {}
    current = obj and status.get("observedGeneration") == obj["metadata"]["generation"]
    return obj if current and status.get("phase") == phase else None


def _ready_on(cluster: Cluster, name: str, n: int) -> dict[str, Any] | None:
    obj = _phase(cluster, name, "Ready")
    return obj if obj and obj["status"]["ready"] == f"{n}/{n}" else None


def _copy(scratch: Path, adapters: dict[str, Path], fixture: str, name: str) -> str:
    target = scratch / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(adapters[fixture], target)
    return f"{MOUNT}/{name}"


def _overwrite(scratch: Path, adapters: dict[str, Path], fixture: str, name: str) -> None:
    """New weights at the same path, file by file, as `cp` over an old checkpoint would."""
    for item in adapters[fixture].iterdir():
        shutil.copyfile(item, scratch / name / item.name)


def _apply(cluster: Cluster, name: str, path: str, **spec: Any) -> None:
    manifest = lora_adapter(name, BASE, path)
    manifest["spec"].update(spec)
    cluster.apply(manifest, NS)


def _events(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(NS, name) if e.get("reason") == reason]


def _count(cluster: Cluster, name: str, reason: str) -> int:
    """Events of one reason; the API server may fold repeats into one Event with a count."""
    return sum(int(e.get("count") or 1) for e in _events(cluster, name, reason))


def _kill_vllm_and_wait(cluster: Cluster, pod: dict[str, Any]) -> dict[str, Any]:
    name = pod["metadata"]["name"]
    os.kill(container_pid(pod, VLLM_PROCESS), signal.SIGKILL)
    wait_for(
        f"{name} not Ready", lambda: not pod_ready(cluster.get("pod", name, NS) or {}), 60, 0.2
    )
    return wait_for(
        f"{name} Ready again",
        lambda: (p := cluster.get("pod", name, NS)) and pod_ready(p) and p,
        START,
    )


class ModelsWatch:
    """Polls /v1/models of every pod every 200 ms and records each moment a name was missing."""

    def __init__(self, ips: list[str], name: str) -> None:
        self.ips, self.name = ips, name
        self.missing: list[tuple[str, float]] = []
        self.paths: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for ip in self.ips:
                listed = served_adapters(ip)
                if self.name in listed:
                    self.paths.add(listed[self.name])
                else:
                    self.missing.append((ip, time.monotonic()))
            time.sleep(0.2)

    def __enter__(self) -> ModelsWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_a_served_name_has_one_owner(
    base: Cluster, scratch: Path, adapters: dict[str, Path]
) -> None:
    _apply(base, "holder", _copy(scratch, adapters, "rank8", "holder"), servedName="shared")
    holder = wait_for("holder Ready", lambda: _ready_on(base, "holder", 2), timeout=120)
    path = holder["status"]["adapter"]["path"]
    ips = [p["status"]["podIP"] for p in _ready_pods(base)]
    answer = completion(ips[0], "shared", PROMPT)
    with ModelsWatch(ips, "shared") as watch:
        _apply(
            base, "intruder", _copy(scratch, adapters, "rank8-v2", "intruder"), servedName="shared"
        )
        obj = wait_for("intruder refused", lambda: _phase(base, "intruder", "Failed"), timeout=60)
        ready = condition(obj, "Ready") or {}
        assert ready["reason"] == "ServedNameConflict" and "holder" in ready["message"]
        assert {p["state"] for p in obj["status"]["pods"]} == {"NotAttempted"}
        time.sleep(6)  # several syncs and status periods: nothing may swap
        assert _ready_on(base, "holder", 2), "the holder lost its Ready"
        assert _count(base, "intruder", "ServedNameConflict") == 1, "one Event per transition"
        base.kubectl("delete", "lora", "intruder", "-n", NS, "--timeout=60s")
        time.sleep(2)
    assert watch.missing == [], f"'shared' went missing during the intruder's life: {watch.missing}"
    assert watch.paths == {path}, (
        f"the holder's name was reloaded with other weights: {watch.paths}"
    )
    assert completion(ips[0], "shared", PROMPT) == answer
    assert _count(base, "holder", "Ready") == 1

    # When the holder goes, the next claimant takes the name over.
    _apply(base, "intruder", f"{MOUNT}/intruder", servedName="shared")
    wait_for("intruder refused again", lambda: _phase(base, "intruder", "Failed"), timeout=60)
    base.kubectl("delete", "lora", "holder", "-n", NS, "--timeout=60s")
    obj = wait_for("intruder Ready under 'shared'", lambda: _ready_on(base, "intruder", 2), 120)
    assert obj["status"]["adapter"]["path"].startswith("/adapters/intruder/")
    for ip in ips:
        assert served_adapters(ip)["shared"] == obj["status"]["adapter"]["path"]
    wait_for("a ServedNameTaken event", lambda: _events(base, "intruder", "ServedNameTaken"), 30)
    base.kubectl("delete", "lora", "intruder", "-n", NS, "--timeout=60s")


def _tied_claimants(scratch: Path, adapters: dict[str, Path]) -> list[dict[str, Any]]:
    """Two adapters under one served name, listed so that the one last by name is created
    first: what `kubectl apply -f dir/` does with a servedName copied by mistake."""
    out = []
    for name, fixture in (("zeta", "rank8"), ("alpha", "rank8-v2")):
        manifest = lora_adapter(name, BASE, _copy(scratch, adapters, fixture, name))
        manifest["spec"]["servedName"] = "twin"
        out.append(manifest)
    return out


def test_claimants_created_in_one_second_never_swap_the_weights_of_the_name(
    base: Cluster, scratch: Path, adapters: dict[str, Path]
) -> None:
    ips = [p["status"]["podIP"] for p in _ready_pods(base)]
    manifests = _tied_claimants(scratch, adapters)
    for _ in range(3):
        # creationTimestamp has one-second grain: apply early in a second, so both tie.
        while time.time() % 1 > 0.3:
            time.sleep(0.02)
        with ModelsWatch(ips, "twin") as watch:
            base.apply(manifests, NS)
            holder = wait_for(
                "one claimant Ready",
                lambda: _ready_on(base, "zeta", 2) or _ready_on(base, "alpha", 2),
                timeout=120,
            )
            time.sleep(5)  # several syncs and status periods: nothing may swap
        created = {
            base.get("lora", n, NS)["metadata"]["creationTimestamp"] for n in ("zeta", "alpha")
        }  # type: ignore[index]
        if len(created) == 1:
            break
        base.kubectl("delete", "lora", "zeta", "alpha", "-n", NS, "--timeout=60s")
    else:
        pytest.fail("could not create two adapters in one second in 3 tries")
    winner = holder["metadata"]["name"]
    loser = "alpha" if winner == "zeta" else "zeta"
    assert len(watch.paths) == 1, f"'twin' served two adapters' files in turn: {watch.paths}"
    assert watch.paths == {holder["status"]["adapter"]["path"]}
    lost = wait_for("the loser Failed", lambda: _phase(base, loser, "Failed"), timeout=30)
    ready = condition(lost, "Ready") or {}
    assert ready["reason"] == "ServedNameConflict", ready
    assert "created in the same second" in ready["message"], ready["message"]
    digest = holder["status"]["adapter"]["digest"][: len("sha256:") + 12]
    for entry in lost["status"]["pods"]:
        assert entry["state"] == "NotAttempted", lost["status"]["pods"]
        assert f"serves LoRAAdapter {winner!r} ({digest})" in entry["lastError"], entry
    base.kubectl("delete", "lora", "zeta", "alpha", "-n", NS, "--timeout=60s")


def test_a_pod_comes_back_from_its_store_and_a_new_pod_from_a_peer(
    base: Cluster, scratch: Path, adapters: dict[str, Path]
) -> None:
    _apply(base, "pin", _copy(scratch, adapters, "rank8", "pin"))
    obj = wait_for("pin Ready", lambda: _ready_on(base, "pin", 2), timeout=120)
    digest = obj["status"]["adapter"]["digest"]
    assert {p["digest"] for p in obj["status"]["pods"]} == {digest}
    ip = _ready_pods(base)[0]["status"]["podIP"]
    answer = completion(ip, "pin", PROMPT)
    shutil.move(scratch / "pin", scratch / "pin.away")
    # A restarted vLLM gets the verified copy from its pod's store, not from the gone source.
    pod = _kill_vllm_and_wait(base, _ready_pods(base)[0])
    assert "pin" in served_adapters(pod["status"]["podIP"]), "Ready without its adapter"
    wait_for("pin Ready 2/2 again", lambda: _ready_on(base, "pin", 2), timeout=60)
    assert completion(pod["status"]["podIP"], "pin", PROMPT) == answer
    # A new pod has no copy and the source is gone: it gets the version from a peer's agent.
    base.kubectl("scale", "bmd", BASE, "-n", NS, "--replicas=3")
    obj = wait_for("pin Ready 3/3 with the source gone", lambda: _ready_on(base, "pin", 3), START)
    assert {p["digest"] for p in obj["status"]["pods"]} == {digest}
    base.kubectl("scale", "bmd", BASE, "-n", NS, "--replicas=2")
    wait_for("back to 2 pods", lambda: len(_pods(base)) == 2, timeout=120)
    shutil.move(scratch / "pin.away", scratch / "pin")


def test_a_source_gone_is_transient_and_recovers_when_it_returns(
    base: Cluster, scratch: Path
) -> None:
    base.kubectl("scale", "bmd", BASE, "-n", NS, "--replicas=1")
    wait_for("1 pod", lambda: len(_pods(base)) == 1 and len(_ready_pods(base)) == 1, timeout=120)
    shutil.move(scratch / "pin", scratch / "pin.away")
    base.kubectl("delete", "pod", _pods(base)[0]["metadata"]["name"], "-n", NS, "--wait=false")

    def unavailable() -> dict[str, Any] | None:
        pods = _status(base, "pin").get("pods") or []
        return pods[0] if pods and "SourceUnavailable" in str(pods[0].get("lastError")) else None

    # The new pod has no copy, no peer has one, the source is gone: said so, not Failed.
    entry = wait_for("pin unavailable on the new pod", unavailable, timeout=START)
    assert _status(base, "pin")["phase"] != "Failed"
    assert entry["state"] != "Failed"
    bmd = wait_for(
        "the base model Degraded by it",
        lambda: (
            (b := base.get("bmd", BASE, NS))
            and (condition(b, "Degraded") or {}).get("reason") == "SourceUnavailable"
            and b
        ),
        timeout=60,
    )
    assert "pin" in (condition(bmd, "Degraded") or {})["message"]
    shutil.move(scratch / "pin.away", scratch / "pin")  # no spec change
    wait_for("pin Ready once its source is back", lambda: _ready_on(base, "pin", 1), timeout=120)
    wait_for(
        "the base model no longer Degraded",
        lambda: (condition(base.get("bmd", BASE, NS), "Degraded") or {}).get("status") == "False",
        timeout=60,
    )
    base.kubectl("scale", "bmd", BASE, "-n", NS, "--replicas=2")
    wait_for("pin Ready 2/2", lambda: _ready_on(base, "pin", 2), timeout=START)


def test_files_overwritten_in_place_change_nothing_unless_followed(
    base: Cluster, scratch: Path, adapters: dict[str, Path]
) -> None:
    before = _status(base, "pin")
    digest = before["adapter"]["digest"]
    _overwrite(scratch, adapters, "rank8-v2", "pin")
    # Pinned: a restarted pod re-registers the pinned version, so no pod serves other weights.
    pod = _kill_vllm_and_wait(base, _ready_pods(base)[0])
    obj = wait_for("pin Ready 2/2 on the pinned version", lambda: _ready_on(base, "pin", 2), 60)
    assert obj["status"]["adapter"]["digest"] == digest
    assert {p["digest"] for p in obj["status"]["pods"]} == {digest}
    paths = {served_adapters(p["status"]["podIP"])["pin"] for p in _ready_pods(base)}
    assert len(paths) == 1, f"pods serve different files: {paths}"
    assert pod["metadata"]["name"] in {p["name"] for p in obj["status"]["pods"]}

    # Follow: the new files roll out as a new version; Ready never shows two versions.
    patch = {"spec": {"updatePolicy": "Follow"}}
    base.kubectl("patch", "lora", "pin", "-n", NS, "--type=merge", "-p", json.dumps(patch))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = _status(base, "pin")
        current = (status.get("adapter") or {}).get("digest")
        served = {p.get("digest") for p in status.get("pods") or []}
        if status.get("phase") == "Ready":
            assert served == {current}, f"Ready with pods on {served}, current {current}"
            if current != digest:
                break
        time.sleep(0.2)
    else:
        pytest.fail(f"the new files never rolled out; last status {status}")
    events = _events(base, "pin", "NewVersion")
    assert _count(base, "pin", "NewVersion") == 1 and digest[:19] in events[0]["message"]
    for p in _ready_pods(base):
        assert served_adapters(p["status"]["podIP"])["pin"] == status["adapter"]["path"]


def _lora_a_only(scratch: Path, adapters: dict[str, Path], name: str) -> str:
    """rank8 with every lora_B tensor dropped: a save cut short, or a hand-made export."""
    from safetensors.torch import load_file, save_file

    path = _copy(scratch, adapters, "rank8", name)
    weights = scratch / name / "adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(weights).items() if ".lora_B." not in k}
    save_file(tensors, weights)
    return path


def test_refusals_say_in_our_words_what_is_wrong_and_pickles_get_the_same_preflight(
    base: Cluster, scratch: Path
) -> None:
    from tests.support.adapters import ensure_adapters
    from tests.support.pickled import add_payload, copy_adapter, ensure_pickled_adapter

    home = base.home
    adapters = {n: ensure_pickled_adapter(n, home) for n in ("rank8-bin", "wrong-base-bin")}
    marker = scratch / "payload-ran"
    marker.unlink(missing_ok=True)
    shutil.rmtree(scratch / "payload", ignore_errors=True)
    add_payload(copy_adapter(adapters["rank8-bin"], scratch / "payload"), f"touch {marker}")
    _apply(base, "pickled", _copy(scratch, adapters, "rank8-bin", "pickled"))
    _apply(base, "pickled-other-base", _copy(scratch, adapters, "wrong-base-bin", "pob"))
    _apply(base, "pickled-payload", f"{MOUNT}/payload")
    _apply(base, "lora-a-only", _lora_a_only(scratch, ensure_adapters(home), "lora-a-only"))
    served = wait_for("pickled Ready 2/2", lambda: _ready_on(base, "pickled", 2), timeout=120)
    summary = served["status"]["adapter"]
    assert summary["rank"] == 8 and summary["targetModules"] == ["q_proj", "v_proj"], summary
    expected = {
        "pickled-other-base": ("BaseModelShapeMismatch", "q_proj"),
        "pickled-payload": ("UnsafePickle", "safetensors"),
        "lora-a-only": ("IncompleteLoRAWeights", "lora_B"),
    }
    for name, (reason, mentions) in expected.items():
        obj = wait_for(f"{name} Failed", lambda n=name: _phase(base, n, "Failed"), timeout=120)
        validated = condition(obj, "Validated") or {}
        message = obj["status"]["message"]
        assert validated["reason"] == reason, (name, validated)
        assert mentions in message, (name, message)
        for raw in ("NoneType", "size of tensor", "weights_only", "Traceback"):
            assert raw not in message, (name, message)
    assert not marker.exists(), "the payload of a pickle ran"
    for p in _ready_pods(base):
        ip = p["status"]["podIP"]
        listed = served_adapters(ip)
        assert "pickled" in listed and not set(expected) & set(listed), listed
        completion(ip, "pickled", PROMPT)
    base.kubectl("delete", "lora", "pickled", *expected, "-n", NS, "--timeout=60s")


def test_raising_max_lora_rank_rejudges_a_refused_adapter_after_the_rollout(
    base: Cluster, scratch: Path, adapters: dict[str, Path]
) -> None:
    """Last in the module: it rolls the base model's pods to new flags."""
    _apply(base, "wide", _copy(scratch, adapters, "rank64", "wide"))
    refused = wait_for("wide Failed", lambda: _phase(base, "wide", "Failed"), timeout=120)
    validated = condition(refused, "Validated") or {}
    assert validated["reason"] == "RankExceedsMax", validated
    old_pods = {p["metadata"]["name"] for p in _pods(base)}
    patch = {"spec": {"lora": {"maxLoraRank": 64}}}
    base.kubectl("patch", "bmd", BASE, "-n", NS, "--type=merge", "-p", json.dumps(patch))
    wait_for(
        "wide judged against the new spec",
        lambda: _status(base, "wide").get("phase") != "Failed",
        timeout=60,
        interval=0.1,
    )
    deadline = time.monotonic() + 2 * START
    while not _ready_on(base, "wide", 2) or old_pods & {p["metadata"]["name"] for p in _pods(base)}:
        status = _status(base, "wide")
        assert status.get("phase") != "Failed", (
            f"a pod on the old flags judged the new spec: {status}"
        )
        assert time.monotonic() < deadline, f"the rollout never served wide; last status {status}"
        time.sleep(0.2)
    for p in _ready_pods(base):
        ip = p["status"]["podIP"]
        assert "wide" in served_adapters(ip)
        completion(ip, "wide", PROMPT)

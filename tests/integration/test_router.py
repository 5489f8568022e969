"""spec.router on the local cluster with two CPU vLLM pods: the operator makes the router (the
Endpoint Picker built here behind Envoy from PyPI), and real completions through Envoy land on
the pod where their adapter sits.

One base model for the module: two pods with one GPU slot and a CPU cache of two, so that which
pod holds an adapter in its slot differs between pods. The router is reached by its pod's IP (a
ClusterIP does not route on the process node); a Service would add kube-proxy's pick of router
pod, nothing else.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraplane.builders import router_config
from tests.integration.cluster import (
    Cluster,
    completion,
    condition,
    container_pid,
    http_json,
    pod_ready,
    wait_for,
)
from tests.integration.manifests import ADAPTER_SOURCES, lora_adapter, tiny_base_model
from tests.integration.operator_process import OperatorProcess

pytestmark = pytest.mark.vllm

NS = "it-router"
BASE = "routed"
START = 420
ADAPTERS = ("rank8", "rank16", "rank8-mlp")
EPP_PROCESS = "--pool-name"


@pytest.fixture(scope="module")
def adapters(loraplane_home: Path) -> dict[str, Path]:
    from tests.support.adapters import ensure_adapters

    return ensure_adapters(loraplane_home)


def _ready_pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    pods = cluster.list("pods", NS, selector)
    return [p for p in pods if pod_ready(p) and not p["metadata"].get("deletionTimestamp")]


def _vllm_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return _ready_pods(cluster, f"loraplane.dev/base-model={BASE}")


def _router_pod(cluster: Cluster) -> dict[str, Any]:
    pods = _ready_pods(cluster, f"loraplane.dev/router={BASE}")
    assert len(pods) == 1, f"expected one Ready router pod, found {len(pods)}"
    return pods[0]


def _adapter_ready(cluster: Cluster, name: str) -> bool:
    status = (cluster.get("lora", name, NS) or {}).get("status") or {}
    return status.get("phase") == "Ready" and status.get("ready") == "2/2"


@pytest.fixture(scope="module")
def routed(operator: OperatorProcess, tiny_model: Path, adapters: dict[str, Path]) -> Cluster:
    cluster = operator.cluster
    cluster.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=180s", check=False)
    cluster.kubectl("create", "namespace", NS)
    wait_for("the default ServiceAccount", lambda: cluster.get("sa", "default", NS), timeout=30)
    bmd = tiny_base_model(BASE, cluster.home, replicas=2, maxLoras=1, maxCpuLoras=2)
    bmd["spec"]["router"] = {}
    cluster.apply(bmd, NS)
    for name in ADAPTERS:
        cluster.apply(lora_adapter(name, BASE, f"{ADAPTER_SOURCES}/{name}"), NS)
    wait_for("2 vLLM pods Ready", lambda: len(_vllm_pods(cluster)) == 2 or None, timeout=START)
    for name in ADAPTERS:
        wait_for(f"{name} Ready 2/2", lambda n=name: _adapter_ready(cluster, n), timeout=120)
    wait_for(
        "the router pod Ready",
        lambda: _ready_pods(cluster, f"loraplane.dev/router={BASE}") or None,
        timeout=120,
    )
    yield cluster
    cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _router_url(cluster: Cluster, path: str) -> str:
    return f"http://{_router_pod(cluster)['status']['podIP']}:{router_config.ENVOY_PORT}{path}"


def _complete(url: str, model: str, prompt: str, timeout: float = 60) -> int:
    """POST a completion; the HTTP status (0: no answer at all)."""
    req = urllib.request.Request(
        url,
        data=(
            f'{{"model": "{model}", "prompt": "{prompt}", "max_tokens": 4, "temperature": 0}}'
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _served(pod_ip: str) -> float:
    """Requests a vLLM server finished (its own counter)."""
    body = urllib.request.urlopen(f"http://{pod_ip}:8000/metrics", timeout=10).read().decode()
    return sum(
        s.value
        for fam in text_string_to_metric_families(body)
        if fam.name == "vllm:request_success"
        for s in fam.samples
        if s.name == "vllm:request_success_total"
    )


def _tiers(pod_ip: str) -> dict[str, str]:
    """Where each adapter sits in that pod's engine, as its residency feed on /metrics says."""
    body = urllib.request.urlopen(f"http://{pod_ip}:8000/metrics", timeout=10).read().decode()
    for fam in text_string_to_metric_families(body):
        if fam.name == router_config.RESIDENCY_METRIC:
            labels = fam.samples[0].labels
            out = {n: "gpu" for n in labels["running_lora_adapters"].split(",") if n}
            out.update({n: "cpu" for n in labels["waiting_lora_adapters"].split(",") if n})
            return out
    return {}


def test_the_operator_makes_the_router_and_says_where_it_is(routed: Cluster) -> None:
    bmd = routed.get("bmd", BASE, NS) or {}
    status = bmd.get("status") or {}
    routed_cond = condition(bmd, "Routed") or {}
    assert routed_cond.get("status") == "True", routed_cond
    assert status["router"] == {
        "mode": "Envoy",
        "endpoint": f"http://{BASE}-router.{NS}.svc:8000/v1",
        "ready": "1/1",
    }
    role = routed.get("role", f"{BASE}-router", NS) or {}
    assert {"pods"} <= {r for rule in role["rules"] for r in rule["resources"]}
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in role["rules"])
    wide = routed.kubectl("get", "bmd", BASE, "-n", NS).stdout
    assert "ROUTED" in wide.splitlines()[0] and "True" in wide.splitlines()[1]
    # The router's pod is not one of the base model's: its Service and the EPP never pick it.
    router_pod = _router_pod(routed)
    assert "loraplane.dev/base-model" not in router_pod["metadata"]["labels"]


def test_only_the_openai_routes_pass_the_router(routed: Cluster) -> None:
    models = http_json(_router_url(routed, "/v1/models"))
    assert set(ADAPTERS) <= {m["id"] for m in models["data"]}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/adapters"):
        status = _complete(_router_url(routed, path), "x", "y")
        assert status == 404, f"{path} answered {status} through the router"


def test_requests_for_an_adapter_go_to_the_pod_that_holds_it(routed: Cluster) -> None:
    pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in _vllm_pods(routed)}
    holder, other = sorted(pods)
    # Straight to the pods: rank16 into the GPU slot of one, rank8 into the other's (where rank16
    # is at most in the CPU cache), and wait until the residency feed says so.
    for name, adapter in ((holder, "rank16"), (other, "rank8")):
        assert _complete(f"http://{pods[name]}:8000/v1/completions", adapter, "warm up") == 200
    wait_for(
        "rank16 in the slot of one pod only",
        lambda: (
            _tiers(pods[holder]).get("rank16") == "gpu"
            and _tiers(pods[other]).get("rank16") != "gpu"
        ),
        timeout=15,
    )
    time.sleep(1.0)  # a few of the EPP's scrapes (every 200 ms)
    before = {n: _served(ip) for n, ip in pods.items()}
    # Distinct prompts: the prefix scorer has nothing to prefer, the LoRA scorer decides.
    for i in range(10):
        assert _complete(url := _router_url(routed, "/v1/completions"), "rank16", f"q{i}") == 200
    after = {n: _served(ip) for n, ip in pods.items()}
    landed = {n: after[n] - before[n] for n in pods}
    answer = urllib.request.urlopen(
        urllib.request.Request(
            _router_url(routed, "/v1/completions"),
            data=b'{"model": "rank16", "prompt": "which pod", "max_tokens": 2}',
            headers={"Content-Type": "application/json"},
        ),
        timeout=60,
    )
    assert answer.headers[router_config.SERVED_BY_HEADER] == f"{pods[holder]}:8000"
    assert answer.headers[router_config.ROUTED_BY_HEADER] == router_config.ROUTED_BY_EPP
    tiers = {n: _tiers(ip) for n, ip in pods.items()}
    assert landed[holder] == 10, f"requests per pod {landed} ({url}); tiers now {tiers}"


def test_an_adapter_applied_under_traffic_gets_no_404_once_ready(
    routed: Cluster, adapters: dict[str, Path]
) -> None:
    url = _router_url(routed, "/v1/completions")
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def send() -> None:
        i = 0
        while not stop.is_set():
            results.append((time.monotonic(), _complete(url, "late", f"late prompt {i}")))
            i += 1

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        senders = [pool.submit(send) for _ in range(2)]
        time.sleep(1.0)
        routed.apply(lora_adapter("late", BASE, f"{ADAPTER_SOURCES}/rank8-v2"), NS)
        wait_for("late Ready 2/2", lambda: _adapter_ready(routed, "late"), timeout=120)
        ready_at = time.monotonic()
        time.sleep(5.0)
        stop.set()
        for f in senders:
            f.result()
    before = [code for t, code in results if t < ready_at]
    after = [code for t, code in results if t >= ready_at + 0.5]
    assert 404 in before, "the test never asked before the adapter existed: it proves nothing"
    assert after and set(after) == {200}, f"after Ready: {sorted(set(after))} in {len(after)}"


def test_with_the_epp_killed_envoy_still_answers(routed: Cluster) -> None:
    url = _router_url(routed, "/v1/completions")
    pod = _router_pod(routed)
    codes: list[int] = []
    stop = threading.Event()

    def send() -> None:
        i = 0
        while not stop.is_set():
            codes.append(_complete(url, ADAPTERS[i % 3], f"kill prompt {i}"))
            i += 1

    thread = threading.Thread(target=send)
    thread.start()
    try:
        time.sleep(1.0)
        sent_before = len(codes)
        old = container_pid(pod, EPP_PROCESS)
        os.kill(old, signal.SIGKILL)
        wait_for(
            "the EPP running again",
            lambda: _epp_pid(pod) not in (None, old) or None,
            timeout=60,
        )
        time.sleep(3.0)
    finally:
        stop.set()
        thread.join(timeout=60)
    during = codes[sent_before:]
    errors = [c for c in during if c != 200]
    assert len(during) >= 5, f"only {len(during)} requests while the EPP restarted"
    assert not [c for c in errors if c != 503], f"answers other than 200/503: {errors}"
    assert codes[-3:] == [200, 200, 200], codes[-10:]


def _epp_pid(pod: dict[str, Any]) -> int | None:
    try:
        return container_pid(pod, EPP_PROCESS)
    except AssertionError:
        return None


SPLIT_PROMPT = "The quick brown fox"


def _reference(cluster: Cluster, adapters: tuple[str, ...]) -> dict[str, str]:
    """Each adapter's greedy answer to SPLIT_PROMPT, straight from a pod: the EPP gives clients
    back the model name they asked for, so an answer is told by its text. The adapters are of
    different random weights, so their answers differ (checked)."""
    ip = _vllm_pods(cluster)[0]["status"]["podIP"]
    texts = {a: completion(ip, a, SPLIT_PROMPT, tokens=8) for a in adapters}
    assert len(set(texts.values())) == len(texts), (
        f"answers do not tell the adapters apart: {texts}"
    )
    return texts


def _answered_by(url: str, model: str, n: int, texts: dict[str, str]) -> dict[str, int]:
    """`n` greedy completions for `model` through the router, 4 at a time, counted by the
    adapter whose answer each one is."""
    by_text = {t: a for a, t in texts.items()}

    def one(_: int) -> str:
        body = http_json(
            url, {"model": model, "prompt": SPLIT_PROMPT, "max_tokens": 8, "temperature": 0}
        )
        return by_text.get(body["choices"][0]["text"], "other")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(n)))
    return {m: answers.count(m) for m in set(answers)}


def _split_true(cluster: Cluster, name: str, weight: int) -> dict[str, Any] | None:
    obj = cluster.get("lora", name, NS) or {}
    cond = condition(obj, "Split") or {}
    shares = ((obj.get("status") or {}).get("traffic")) or []
    ok = cond.get("status") == "True" and [s["weight"] for s in shares] == [100 - weight, weight]
    return obj if ok else None


def test_a_canary_sends_its_share_of_a_served_names_requests(routed: Cluster) -> None:
    url = _router_url(routed, "/v1/completions")
    sql = lora_adapter("sql", BASE, f"{ADAPTER_SOURCES}/rank8")
    sql["spec"]["canary"] = {"adapter": "sql-v2", "weight": 30}
    routed.apply(sql, NS)
    routed.apply(lora_adapter("sql-v2", BASE, f"{ADAPTER_SOURCES}/rank16"), NS)
    for name in ("sql", "sql-v2"):
        obj = wait_for(
            f"{name} shows the 70/30 split", lambda n=name: _split_true(routed, n, 30), 120
        )
        assert obj["status"]["traffic"] == [
            {"adapter": "sql", "servedName": "sql", "weight": 70},
            {"adapter": "sql-v2", "servedName": "sql-v2", "weight": 30},
        ]
    texts = _reference(routed, ("sql", "sql-v2"))
    # The EPP reads the rewrite from its watch: a moment after the operator wrote it.
    wait_for(
        "the first rewritten answer",
        lambda: "sql-v2" in _answered_by(url, "sql", 8, texts),
        timeout=30,
    )
    counts = _answered_by(url, "sql", 300, texts)
    print(f"canary 30%: {counts} of 300")
    # Binomial(300, 0.3): mean 90, sd 7.9; 90 +- 4 sd.
    assert set(counts) <= {"sql", "sql-v2"} and 58 <= counts.get("sql-v2", 0) <= 122, counts
    # A weight changes with an apply; 100% sends every request to the canary.
    sql["spec"]["canary"]["weight"] = 100
    routed.apply(sql, NS)
    wait_for("sql shows 0/100", lambda: _split_true(routed, "sql", 100), 60)
    wait_for(
        "every answer from sql-v2",
        lambda: _answered_by(url, "sql", 8, texts) == {"sql-v2": 8},
        timeout=30,
    )
    # Without the canary, the rewrite goes and every request is sql's own again.
    routed.kubectl("patch", "lora", "sql", "-n", NS, "--type=json",
                   "-p", '[{"op":"remove","path":"/spec/canary"}]')  # fmt: skip
    wait_for(
        "the rewrite removed",
        lambda: routed.get("inferencemodelrewrite", BASE, NS) is None,
        timeout=60,
    )
    wait_for("every answer from sql", lambda: _answered_by(url, "sql", 8, texts) == {"sql": 8}, 30)
    status = (routed.get("lora", "sql", NS) or {}).get("status") or {}
    assert (
        status.get("traffic") is None and condition(routed.get("lora", "sql", NS), "Split") is None
    )

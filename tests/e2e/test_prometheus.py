"""A real Prometheus scrapes the chart-installed operator and the vLLM pods through Kubernetes
service discovery, configured from the chart's live ServiceMonitor, PodMonitor and
PrometheusRule; after a scenario every dashboard query and alert is checked against it, and the
dashboard's picture (docs/dashboard.png) is drawn from those results.

Scenario: 3 adapters on 2 pods, one rejected (rank 64 > 16), a fourth of higher priority that
capacity-evicts the lowest (maxAdaptersPerReplica 3), then one vLLM server killed.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplane.dashboards import render as dashboard_render
from loraplane.dashboards.alerts import alerts
from loraplane.dashboards.dashboard import VARIABLES, expand, panels
from tests.conftest import REPO
from tests.e2e.conftest import CHART, adopt_crds, ensure_namespace
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
from tests.integration.manifests import ADAPTER_SOURCES, lora_adapter, tiny_base_model
from tests.support import promconfig, tools

SUFFIX = uuid.uuid4().hex[:6]
RELEASE = "lp-prom"
SYSTEM_NS = f"lp-prom-system-{SUFFIX}"
NS = f"lp-prom-{SUFFIX}"
SCRAPE = "2s"
ADAPTERS = {"a-chat": ("rank8", 10), "a-sql": ("rank16", 5), "a-mlp": ("all-linear", 0)}
LATE = ("a-late", "rank8-mlp", 7)  # outranks a-mlp: a-mlp is evicted from both pods
# The highest priority, so it is placed (and so fetched and judged) whatever the order of events:
# an adapter left outside maxAdaptersPerReplica is not fetched, so not rejected either.
REJECTED = ("a-big", "rank64", 20)
READ = ["get", "list", "watch"]
PROMETHEUS_RULES = [
    {"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": READ},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
]


def _prometheus_identity(c: Cluster) -> dict[str, Any]:
    """A ServiceAccount with only what Kubernetes discovery needs, and its token."""
    name = f"prometheus-{SUFFIX}"
    c.kubectl("create", "serviceaccount", name, "-n", SYSTEM_NS)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": PROMETHEUS_RULES,
    }  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": SYSTEM_NS}],
    }  # fmt: skip
    c.apply([role, binding], SYSTEM_NS)
    token = c.kubectl("create", "token", name, "-n", SYSTEM_NS, "--duration=2h").stdout.strip()
    return {
        "api_server": "https://127.0.0.1:6443",
        "tls_config": {"ca_file": str(c.home / "cluster" / "pki" / "ca.crt")},
        "authorization": {"credentials": token},
    }


def _live(c: Cluster, kind: str) -> list[dict[str, Any]]:
    return c.list(kind, SYSTEM_NS, f"app.kubernetes.io/instance={RELEASE}")


@pytest.fixture(scope="module")
def stack(
    monitoring_crds: Cluster, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[tuple[Cluster, tools.PrometheusServer]]:
    c = monitoring_crds
    ensure_namespace(c, SYSTEM_NS)
    ensure_namespace(c, NS)
    adopt_crds(c, RELEASE, SYSTEM_NS)
    values = {
        "settings": {"resyncSeconds": 20},
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
        },
    }
    c.helm(
        "upgrade", "--install", RELEASE, str(CHART), "-n", SYSTEM_NS, "--wait",
        "--timeout", "180s", "-f", "-", input=json.dumps(values),
    )  # fmt: skip
    rules_dir = tmp_path_factory.mktemp("rules")
    rule_files = []
    for rule in _live(c, "prometheusrule"):
        path = rules_dir / f"{rule['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        rule_files.append(str(path))
    config = promconfig.prometheus_config(
        _live(c, "servicemonitor"), _live(c, "podmonitor"), _prometheus_identity(c),
        rule_files, SCRAPE,
    )  # fmt: skip
    with tools.prometheus_server(yaml.safe_dump(config)) as prom:
        yield c, prom
    for obj in c.list("lora", NS):
        c.kubectl("delete", "lora", obj["metadata"]["name"], "-n", NS, "--wait=false", check=False)
    c.kubectl("delete", "namespace", NS, "--timeout=120s", check=False)
    c.helm("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", check=False)
    c.kubectl("delete", "namespace", SYSTEM_NS, "--wait=false", check=False)
    c.kubectl("delete", "clusterrole,clusterrolebinding", f"prometheus-{SUFFIX}", check=False)


def _lora(c: Cluster, name: str) -> dict[str, Any]:
    return c.get("lora", name, NS) or {}


def _phase(c: Cluster, name: str) -> str:
    return str((_lora(c, name).get("status") or {}).get("phase"))


def _pods(c: Cluster) -> list[dict[str, Any]]:
    return [p for p in c.list("pods", NS, "loraplane.dev/base-model=tiny") if pod_ready(p)]


def _wait(c: Cluster, what: str, probe: Any, timeout: float) -> None:
    """wait_for, and on a timeout every adapter's phase and Ready condition in the message."""
    try:
        wait_for(what, probe, timeout=timeout, interval=2)
    except AssertionError as exc:
        seen = {
            o["metadata"]["name"]: (
                (o.get("status") or {}).get("phase"),
                (condition(o, "Ready") or {}).get("message"),
            )
            for o in c.list("lora", NS)
        }
        raise AssertionError(f"{exc}; adapters: {seen}") from None


def _value(prom: tools.PrometheusServer, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def scenario(stack: tuple[Cluster, tools.PrometheusServer], loraplane_home: Path) -> dict[str, Any]:
    c, _ = stack
    c.apply(tiny_base_model("tiny", loraplane_home, replicas=2, maxAdaptersPerReplica=3), NS)
    for name, (fixture, priority) in ADAPTERS.items():
        c.apply(lora_adapter(name, "tiny", f"{ADAPTER_SOURCES}/{fixture}", priority), NS)
    c.apply(lora_adapter(REJECTED[0], "tiny", f"{ADAPTER_SOURCES}/{REJECTED[1]}", REJECTED[2]), NS)

    def first_three() -> bool:
        ready = all(_phase(c, n) == "Ready" for n in ADAPTERS)
        return ready and _phase(c, REJECTED[0]) == "Failed"

    _wait(c, "3 adapters Ready on 2 pods and one rejected", first_three, timeout=300)
    name, fixture, priority = LATE
    c.apply(lora_adapter(name, "tiny", f"{ADAPTER_SOURCES}/{fixture}", priority), NS)

    def evicted() -> bool:
        ready = condition(_lora(c, "a-mlp"), "Ready") or {}
        return _phase(c, name) == "Ready" and ready.get("reason") == "CapacityExceeded"

    _wait(c, "a-late Ready and a-mlp capacity-evicted", evicted, timeout=120)
    pods = _pods(c)
    victim = pods[0]
    on_victim = sorted(served_adapters(victim["status"]["podIP"]))
    os.kill(container_pid(victim, VLLM_PROCESS), signal.SIGKILL)

    def back() -> bool:
        pod = c.get("pod", victim["metadata"]["name"], NS) or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        restarted = any(s["name"] == "vllm" and s.get("restartCount", 0) >= 1 for s in statuses)
        return (
            restarted
            and pod_ready(pod)
            and sorted(served_adapters(pod["status"]["podIP"])) == on_victim
        )

    _wait(c, "the killed vLLM back with its adapters", back, timeout=240)
    for pod in _pods(c):  # vLLM's own series: vllm:lora_requests_info appears with a LoRA request
        completion(pod["status"]["podIP"], "a-chat")
    time.sleep(6)  # three scrapes after the last event
    return {"victim": victim["metadata"]["name"], "on_victim": on_victim, "pods": len(pods)}


def test_prometheus_scrapes_the_operator_and_every_vllm_pod(
    stack: tuple[Cluster, tools.PrometheusServer], scenario: dict[str, Any]
) -> None:
    _, prom = stack
    with urllib.request.urlopen(f"{prom.url}/api/v1/targets", timeout=10) as resp:
        targets = json.load(resp)["data"]["activeTargets"]
    assert targets, prom.log.read_text()[-3000:]
    up = {
        (t["scrapePool"].split("/")[0], t["labels"].get("pod"))
        for t in targets
        if t["health"] == "up"
    }
    assert sum(1 for pool, _ in up if pool == "serviceMonitor") == 1, targets
    assert sum(1 for pool, _ in up if pool == "podMonitor") == scenario["pods"], targets
    tiny = prom.query(f'vllm:lora_requests_info{{namespace="{NS}", base_model="tiny"}}')
    assert len({s["metric"]["pod"] for s in tiny}) == scenario["pods"], tiny


def test_the_series_say_what_the_scenario_did(
    stack: tuple[Cluster, tools.PrometheusServer], scenario: dict[str, Any]
) -> None:
    _, prom = stack
    sel = f'namespace="{NS}", base_model="tiny"'
    restarts = prom.query(
        f'loraplane_adapter_reregistrations_total{{{sel}, cause="container_restart"}}'
    )
    assert (
        sorted(s["metric"]["adapter"] for s in restarts if float(s["value"][1]) == 1)
        == (scenario["on_victim"])
    ), restarts
    failures = prom.query(f"loraplane_adapter_validation_failures_total{{{sel}}}")
    assert [(s["metric"]["adapter"], s["metric"]["reason"], s["value"][1]) for s in failures] == [
        (REJECTED[0], "RankExceedsMax", "1")
    ]
    evictions = prom.query(f'loraplane_adapter_evictions_total{{{sel}, tier="server"}}')
    assert [(s["metric"]["adapter"], s["metric"]["tier"], s["value"][1]) for s in evictions] == [
        ("a-mlp", "server", str(scenario["pods"]))  # one per pod it was evicted from
    ]
    # From each pod's agent: the adapter requested last holds a GPU slot on every pod; the
    # other slot may hold the weights of an unloaded adapter (vLLM keeps them), not exported.
    chat = prom.query(f'loraplane_adapter_resident{{{sel}, adapter="a-chat", tier="gpu"}}')
    assert sorted(float(s["value"][1]) for s in chat) == [1.0] * scenario["pods"], chat
    slots = prom.query(f'loraplane_engine_lora_slots{{{sel}, tier="cpu"}}')
    assert sorted(float(s["value"][1]) for s in slots) == [4.0] * scenario["pods"], slots
    assert _value(prom, f'loraplane_adapter_ready{{{sel}, adapter="a-chat"}}') == 1
    assert _value(prom, f'loraplane_adapter_ready{{{sel}, adapter="{REJECTED[0]}"}}') == 0
    assert _value(prom, f'loraplane_adapter_registered_replicas{{{sel}, adapter="a-late"}}') == 2


def test_the_dashboards_variables_list_what_is_there(
    stack: tuple[Cluster, tools.PrometheusServer], scenario: dict[str, Any]
) -> None:
    _, prom = stack
    chosen = {"namespace": [NS], "base_model": ["tiny"]}
    expected = {"namespace": NS, "base_model": "tiny"}
    for var in VARIABLES:
        match = expand(var.selector, chosen)
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{prom.url}/api/v1/label/{var.name}/values?{q}") as resp:
            values = json.load(resp)["data"]
        if var.name in expected:
            assert expected[var.name] in values, (var.name, values)
        else:
            assert sorted(values) == sorted([*ADAPTERS, LATE[0], REJECTED[0]]), values


# Panels a scenario without these events leaves empty (nothing else may be).
MAY_BE_EMPTY = {"Watch restarts", "vLLM and agent API errors"}


def test_every_dashboard_query_answers_and_the_picture_is_drawn(
    stack: tuple[Cluster, tools.PrometheusServer], scenario: dict[str, Any], tmp_path: Path
) -> None:
    _, prom = stack
    end = time.time()
    results = dashboard_render.collect(
        prom.url, end - 300, end, step=5, values={"namespace": [NS]}, rate_interval="20s"
    )
    empty = [
        p.title for p in panels()
        if not any(r["data"]["result"] for r in results[p.title])
    ]  # fmt: skip
    assert set(empty) <= MAY_BE_EMPTY, empty
    out = (
        REPO / "docs" / "dashboard.png"
        if os.environ.get("UPDATE_DASHBOARD_PNG")
        else tmp_path / "d.png"
    )
    dashboard_render.render(results, out)
    assert out.stat().st_size > 10_000


def test_every_alert_rule_is_loaded_and_evaluates(
    stack: tuple[Cluster, tools.PrometheusServer], scenario: dict[str, Any]
) -> None:
    _, prom = stack
    with urllib.request.urlopen(f"{prom.url}/api/v1/rules", timeout=10) as resp:
        groups = json.load(resp)["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {a.name for a in alerts()}
    assert all(r["health"] == "ok" for r in loaded.values()), loaded
    # The rejected and the evicted adapters are not Ready: their alert is pending (for: 10m).
    pending = [a for a in loaded["LoRAAdapterNotReady"]["alerts"] if a["labels"]["namespace"] == NS]
    assert sorted(a["labels"]["adapter"] for a in pending) == [REJECTED[0], "a-mlp"], pending

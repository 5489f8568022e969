"""`helm install` on the local cluster: the operator runs as a pod under the chart's
ServiceAccount and RBAC, watching two namespaces; then `helm upgrade` with a changed CRD and
`helm uninstall`, which keeps the CRDs and the user's objects.

One release through the whole module, in order (each test builds on the one before), since one
operator at a time may own the CRDs' objects.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplane.builders.network_policy import OPERATOR_POD_LABELS
from tests.e2e.conftest import CHART, CRDS, adopt_crds, ensure_namespace
from tests.integration.cluster import Cluster, completion, condition, pod_ready, wait_for
from tests.integration.manifests import ADAPTER_SOURCES, lora_adapter, tiny_base_model

SUFFIX = uuid.uuid4().hex[:6]
RELEASE = "lp-e2e"
SYSTEM_NS = f"lp-e2e-system-{SUFFIX}"
WATCHED = [f"lp-e2e-a-{SUFFIX}", f"lp-e2e-b-{SUFFIX}"]
UNWATCHED = f"lp-e2e-other-{SUFFIX}"
SA = f"system:serviceaccount:{SYSTEM_NS}:{RELEASE}-loraplane"


def install(c: Cluster, chart: Path, network_policy: bool = True) -> None:
    values = {
        "watchNamespaces": WATCHED,
        "networkPolicy": {"enabled": network_policy},
        # Tests elsewhere use a short resync; the chart's default would do as well.
        "settings": {"resyncSeconds": 20},
    }
    c.helm(
        "upgrade", "--install", RELEASE, str(chart), "-n", SYSTEM_NS, "--create-namespace",
        "--wait", "--timeout", "180s", "-f", "-", input=json.dumps(values),
    )  # fmt: skip


@pytest.fixture(scope="module")
def release(cluster: Cluster, loraplane_home: Path, tiny_model: Path) -> Iterator[Cluster]:
    for ns in (*WATCHED, UNWATCHED):
        ensure_namespace(cluster, ns)
    adopt_crds(cluster, RELEASE, SYSTEM_NS)
    install(cluster, CHART)
    yield cluster
    # The user's objects outlive the release (that is what keep means); a test run removes them.
    for ns in (*WATCHED, UNWATCHED):
        for kind in ("lora", "bmd"):
            for obj in cluster.list(kind, ns):
                cluster.kubectl(
                    "patch", kind, obj["metadata"]["name"], "-n", ns, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', check=False,
                )  # fmt: skip
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    cluster.helm("uninstall", RELEASE, "-n", SYSTEM_NS, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "namespace", SYSTEM_NS, "--wait=false", check=False)


def operator_pod(c: Cluster) -> dict[str, Any]:
    pods = c.list("pods", SYSTEM_NS, f"app.kubernetes.io/instance={RELEASE}")
    assert len(pods) == 1, pods
    return pods[0]


def api_as_operator(c: Cluster, path: str) -> int:
    """The HTTP status the API server gives the operator's ServiceAccount for GET `path`."""
    token = c.kubectl("create", "token", f"{RELEASE}-loraplane", "-n", SYSTEM_NS).stdout.strip()
    ca = c.home / "cluster" / "pki" / "ca.crt"
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(
        f"https://127.0.0.1:6443{path}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_operator_runs_as_a_pod_under_its_service_account(release: Cluster) -> None:
    pod = operator_pod(release)
    assert pod_ready(pod)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == f"{RELEASE}-loraplane"
    assert spec["containers"][0]["image"] == "ghcr.io/loraplane/loraplane:0.1.0"
    log = release.home / "logs" / SYSTEM_NS / pod["metadata"]["name"] / "operator.log"
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def test_the_tiny_example_runs_to_ready_in_a_watched_namespace(
    release: Cluster, loraplane_home: Path
) -> None:
    ns = WATCHED[0]
    release.apply(tiny_base_model("tiny", loraplane_home, replicas=1), ns)
    release.apply(lora_adapter("chat", "tiny", f"{ADAPTER_SOURCES}/rank8"), ns)

    def ready() -> dict[str, Any] | None:
        lora = release.get("lora", "chat", ns)
        return lora if ((lora or {}).get("status") or {}).get("phase") == "Ready" else None

    lora = wait_for("adapter chat Ready under the chart's RBAC", ready, timeout=300, interval=2)
    assert lora["status"]["replicas"]["registered"] == 1
    (pod,) = release.list("pods", ns, "loraplane.dev/base-model=tiny")
    assert completion(pod["status"]["podIP"], "chat")
    events = [e["reason"] for e in release.events(ns, "chat")]
    assert "Ready" in events, events  # posted under the chart's RBAC (events: create)


def test_the_operator_made_the_base_models_network_policy(release: Cluster) -> None:
    """Made under the chart's RBAC. (The process node does not enforce NetworkPolicies: what is
    checked is the object, which the API server validated.)"""
    policy = release.get("networkpolicy", "tiny", WATCHED[0])
    assert policy is not None
    vllm, agent = policy["spec"]["ingress"]
    operator = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SYSTEM_NS}},
        "podSelector": {"matchLabels": OPERATOR_POD_LABELS},
    }
    assert vllm["from"] == [operator, {"podSelector": {}}]
    assert agent["from"][0] == operator
    # vLLM and the agent's read-only metrics to the clients; the agent's API to the operator.
    assert [p["port"] for p in vllm["ports"] + agent["ports"]] == [8000, 8082, 8081]
    (pod,) = release.list("pods", SYSTEM_NS, f"app.kubernetes.io/instance={RELEASE}")
    assert OPERATOR_POD_LABELS.items() <= pod["metadata"]["labels"].items()


def test_the_operator_makes_a_router_under_the_charts_rbac(release: Cluster) -> None:
    """The router's Role grants the Endpoint Picker what the operator holds itself (Kubernetes
    refuses to let it grant more): made here under the chart's least-privilege Role."""
    assert release.get("crd", "inferencepools.inference.networking.k8s.io", "")  # the chart's
    ns = WATCHED[0]
    release.kubectl(
        "patch", "bmd", "tiny", "-n", ns, "--type=merge", "-p", '{"spec":{"router":{}}}'
    )

    def routed() -> dict[str, Any] | None:
        bmd = release.get("bmd", "tiny", ns)
        return bmd if (condition(bmd, "Routed") or {}).get("status") == "True" else None

    wait_for("Routed True under the chart's RBAC", routed, timeout=180, interval=2)
    (router_pod,) = release.list("pods", ns, "loraplane.dev/router=tiny")
    req = urllib.request.Request(
        f"http://{router_pod['status']['podIP']}:8081/v1/completions",
        data=json.dumps({"model": "chat", "prompt": "hi", "max_tokens": 4}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        assert resp.headers["x-loraplane-routed-by"] == "epp"
    release.kubectl("patch", "bmd", "tiny", "-n", ns, "--type=json", "-p",
                    '[{"op":"remove","path":"/spec/router"}]')  # fmt: skip
    wait_for(
        "the router gone with spec.router",
        lambda: release.get("deployment", "tiny-router", ns) is None,
        timeout=60,
    )


def test_an_unwatched_namespace_is_left_alone(release: Cluster, loraplane_home: Path) -> None:
    # Applied after the watched adapter became Ready: the operator had every chance to act.
    release.apply(tiny_base_model("ignored", loraplane_home, replicas=1), UNWATCHED)
    release.apply(lora_adapter("ignored", "ignored", f"{ADAPTER_SOURCES}/rank8"), UNWATCHED)
    in_watched = tiny_base_model("seen", loraplane_home, replicas=0)
    release.apply(in_watched, WATCHED[1])
    wait_for(
        "the second watched namespace's base model to get a status",
        lambda: (release.get("bmd", "seen", WATCHED[1]) or {}).get("status"),
        timeout=60,
    )
    assert release.get("deployment", "ignored", UNWATCHED) is None
    assert not (release.get("bmd", "ignored", UNWATCHED) or {}).get("status")
    lora = release.get("lora", "ignored", UNWATCHED) or {}
    assert not lora.get("status") and not lora["metadata"].get("finalizers")


def test_the_role_is_not_broader_than_the_watched_namespaces(release: Cluster) -> None:
    assert api_as_operator(release, f"/api/v1/namespaces/{WATCHED[0]}/pods") == 200
    assert api_as_operator(release, "/api/v1/secrets") == 403
    assert api_as_operator(release, f"/api/v1/namespaces/{UNWATCHED}/pods") == 403
    assert api_as_operator(release, f"/api/v1/namespaces/{WATCHED[0]}/secrets") == 403  # no list
    assert api_as_operator(release, "/apis/apps/v1/deployments") == 403


def test_helm_upgrade_updates_a_changed_crd(release: Cluster, tmp_path: Path) -> None:
    chart = tmp_path / "loraplane"
    shutil.copytree(CHART, chart)
    path = chart / "templates" / "crds" / "loraadapters.yaml"
    text = path.read_text()
    head, body = text.split("\nspec:\n", 1)
    crd = yaml.safe_load("spec:\n" + body.removesuffix("{{- end }}\n"))
    spec_props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_props["properties"]["e2eNote"] = {"type": "string", "description": "added by a test"}
    path.write_text(head + "\n" + yaml.safe_dump(crd, sort_keys=False) + "{{- end }}\n")
    install(release, chart)
    live = release.get("crd", CRDS[1], "")
    assert live is not None
    props = live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert props["properties"]["e2eNote"]["type"] == "string"
    install(release, CHART)  # and back: the field goes with the next upgrade
    live = release.get("crd", CRDS[1], "")
    props = (live or {})["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    assert "e2eNote" not in props["spec"]["properties"]


def test_turning_the_network_policy_off_removes_it(release: Cluster) -> None:
    install(release, CHART, network_policy=False)
    wait_for(
        "the NetworkPolicy to go",
        lambda: release.get("networkpolicy", "tiny", WATCHED[0]) is None,
        timeout=90,
    )


def test_helm_uninstall_keeps_the_crds_and_the_users_objects(release: Cluster) -> None:
    release.helm("uninstall", RELEASE, "-n", SYSTEM_NS, "--wait")
    wait_for(
        "the operator pod to go",
        lambda: not release.list("pods", SYSTEM_NS, f"app.kubernetes.io/instance={RELEASE}"),
        timeout=60,
    )
    for crd in CRDS:
        live = release.get("crd", crd, "")
        assert live is not None and condition(live, "Established"), crd
    assert release.get("bmd", "tiny", WATCHED[0]) is not None
    assert release.get("lora", "chat", WATCHED[0]) is not None

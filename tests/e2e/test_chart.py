"""The chart as rendered: lint, invariants over several value sets, the values schema, and every
rendered object accepted by the real API server (server-side dry run)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from loraplane.builders.network_policy import OPERATOR_POD_LABELS
from loraplane.chart.values import Values
from loraplane.config import Settings, env_name
from tests.e2e.conftest import CHART, ensure_namespace, render
from tests.integration.cluster import Cluster

MONITORS = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kps"}},
        "podMonitor": {"enabled": True, "additionalLabels": {"release": "kps"}},
        "prometheusRule": {"enabled": True, "additionalLabels": {"release": "kps"}},
        "dashboard": {"enabled": True},
    }
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cluster-wide-monitors": MONITORS,
    "two-namespaces": {"watchNamespaces": ["lp-team-a", "lp-team-b"], **MONITORS},
    "network-policy": {"networkPolicy": {"enabled": True}},
    "no-crds": {"crds": {"enabled": False}, "rbac": {"create": True}},
    # A Gateway's own installation of the Inference Extension owns its CRDs.
    "no-inference-extension-crds": {"crds": {"inferenceExtension": False}},
}
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def operator_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (deploy,) = by_kind(objs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_helm_lint_strict(cluster: Cluster) -> None:
    for values in VALUE_SETS.values():
        proc = cluster.helm("lint", "--strict", str(CHART), "-f", "-", input=json.dumps(values))
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_objects_keep_the_invariants(cluster: Cluster, name: str) -> None:
    values = VALUE_SETS[name]
    objs = render(cluster, values)
    for obj in objs:
        meta = obj.get("metadata") or {}
        where = f"{obj.get('kind')}/{meta.get('name')}"
        assert obj.get("apiVersion") and obj.get("kind") and meta.get("name"), where
        labels = meta.get("labels") or {}
        assert all(k in labels for k in RECOMMENDED_LABELS), (where, labels)
        assert any(k not in ("apiVersion", "kind", "metadata") for k in obj), f"empty {where}"
    deploy = by_kind(objs, "Deployment")[0]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]
    assert OPERATOR_POD_LABELS.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    container = operator_container(objs)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8082}

    namespaces = values.get("watchNamespaces") or []
    roles, cluster_roles = by_kind(objs, "Role"), by_kind(objs, "ClusterRole")
    if namespaces:
        assert not cluster_roles and not by_kind(objs, "ClusterRoleBinding")
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces)
        assert len(by_kind(objs, "RoleBinding")) == len(namespaces)
    else:
        assert len(cluster_roles) == 1 and len(by_kind(objs, "ClusterRoleBinding")) == 1
        assert not roles
    rules = (roles or cluster_roles)[0]["rules"]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert secrets and set(secrets[0]["verbs"]) == {"get", "create"}  # never list or watch

    crds = by_kind(objs, "CustomResourceDefinition")
    groups = sorted(c["spec"]["group"] for c in crds)
    if not values.get("crds", {}).get("enabled", True):
        assert not crds
    elif values.get("crds", {}).get("inferenceExtension", True):
        assert groups == [
            "inference.networking.k8s.io",
            "inference.networking.x-k8s.io",
            "loraplane.dev",
            "loraplane.dev",
        ]
    else:
        assert groups == ["loraplane.dev", "loraplane.dev"]
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)
    monitors = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    present = {o["kind"] for o in objs} & monitors
    assert present == (monitors if "metrics" in values else set())
    for obj in objs:
        if obj["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
            assert obj["metadata"]["labels"]["release"] == "kps"
    if "metrics" in values:
        (rule,) = by_kind(objs, "PrometheusRule")
        assert rule["spec"]["groups"] and all(g["rules"] for g in rule["spec"]["groups"])
        (dashboard,) = by_kind(objs, "ConfigMap")
        assert json.loads(dashboard["data"]["loraplane.json"])["uid"] == "loraplane-adapters"


def test_operator_env_is_exactly_the_settings(cluster: Cluster) -> None:
    """Every Settings field is rendered, nothing else, and the operator accepts the values."""
    values = {"watchNamespaces": ["a", "b"], "networkPolicy": {"enabled": True}}
    env = {e["name"]: e.get("value") for e in operator_container(render(cluster, values))["env"]}
    assert set(env) == {env_name(f) for f in Settings.model_fields}
    parsed = Settings.from_env(env)
    assert parsed.namespaces == ("a", "b")
    assert parsed.network_policy is True
    assert parsed.operator_namespace == "lp-render"
    assert parsed.operator_image == "ghcr.io/loraplane/loraplane:0.1.0"
    defaults = Settings()
    for field in type(Values().settings).model_fields:
        assert getattr(parsed, field) == getattr(defaults, field), field


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": "two"}, "at '/replicas': got string, want integer"),
        ({"replicas": 2}, "at '/replicas': maximum: got 2, want 1"),
        ({"replicaCount": 1}, "additional properties 'replicaCount' not allowed"),
        ({"settings": {"resyncSeconds": 0}}, "at '/settings/resyncSeconds'"),
        ({"settings": {"logLevel": "LOUD"}}, "at '/settings/logLevel'"),
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ],
)
def test_a_bad_value_fails_helm_install_with_the_schema_message(
    cluster: Cluster, values: dict[str, Any], message: str
) -> None:
    proc = cluster.helm(
        "install", "lp-bad", str(CHART), "-n", "lp-bad", "-f", "-", "--dry-run=client",
        input=json.dumps(values), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_object_is_accepted_by_the_api_server(
    monitoring_crds: Cluster, name: str
) -> None:
    values = VALUE_SETS[name]
    for ns in ("lp-render", *values.get("watchNamespaces", [])):
        ensure_namespace(monitoring_crds, ns)
    docs = render(monitoring_crds, values)
    body = yaml.safe_dump_all(docs)
    proc = monitoring_crds.kubectl(
        "apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", "-",
        input=body, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(docs), proc.stdout


def test_chart_unit_tests_pass(cluster: Cluster) -> None:
    """charts/loraplane/tests/ with helm-unittest (a Helm plugin built by hack/build-tools.sh)."""
    from tests.support import tools

    proc = cluster.helm("unittest", str(CHART), check=False, env=tools.helm_env())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    passed = re.search(r"Tests:\s+(\d+) passed, (\d+) total", proc.stdout)
    assert passed and passed.group(1) == passed.group(2) and int(passed.group(1)) >= 10, proc.stdout

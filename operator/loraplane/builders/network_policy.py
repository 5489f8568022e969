"""The NetworkPolicy of a base model's pods (DESIGN.md §4: vLLM's adapter routes are unguarded).

vLLM serves its OpenAI API and its load/unload routes (and the SageMaker `/adapters` routes,
which `--api-key` does not guard) on one port, so the policy cannot split them: the vLLM port is
open to the operator and to the clients the platform names, the agent port to the operator and
to the base model's own pods (an agent copies a pinned version from a peer). The agent's metrics
port (read-only: engine residency) is open to the same clients as vLLM's, whose /metrics a
Prometheus already reads there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loraplane.builders import naming

# The labels the chart gives the operator's pods (charts/loraplane renders them from here).
OPERATOR_POD_LABELS = {
    "app.kubernetes.io/part-of": "loraplane",
    naming.LABEL_COMPONENT: "operator",
}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace


def network_policy_name(base_model: str) -> str:
    return base_model


def operator_peer(operator_namespace: str | None) -> dict[str, Any]:
    """The operator's pods: in its namespace, or in the base model's when it is not known."""
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)}}
    if operator_namespace:
        peer["namespaceSelector"] = {"matchLabels": {NAMESPACE_NAME_LABEL: operator_namespace}}
    return peer


def network_policy(
    owner: Mapping[str, Any],
    vllm_port: int,
    agent_port: int,
    agent_metrics_port: int,
    operator_namespace: str | None,
    clients: Sequence[Mapping[str, Any]],
    routed: bool = False,
) -> dict[str, Any]:
    """`routed`: the base model has a router, whose pods send the clients' requests and scrape
    vLLM's /metrics (the Endpoint Picker), so they are let in beside the clients."""
    meta = owner["metadata"]
    name = meta["name"]
    peers = {"podSelector": {"matchLabels": naming.selector_labels(name)}}
    vllm_rule: dict[str, Any] = {
        "ports": [
            {"protocol": "TCP", "port": vllm_port},
            {"protocol": "TCP", "port": agent_metrics_port},
        ]
    }
    if clients:  # no `from` at all admits every source: what an empty client list asks for
        vllm_rule["from"] = [operator_peer(operator_namespace), *(dict(c) for c in clients)]
        if routed:
            router = {"podSelector": {"matchLabels": naming.router_selector_labels(name)}}
            vllm_rule["from"].append(router)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(name),
            "namespace": meta["namespace"],
            "labels": naming.common_labels(name, "network-policy"),
            "ownerReferences": [naming.owner_reference(owner)],
        },
        "spec": {
            "podSelector": {"matchLabels": naming.selector_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                vllm_rule,
                {
                    "from": [operator_peer(operator_namespace), peers],
                    "ports": [{"protocol": "TCP", "port": agent_port}],
                },
            ],
        },
    }

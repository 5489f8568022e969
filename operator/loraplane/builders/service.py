"""The client-facing Service of a base model and the agent's token Secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loraplane.builders import naming


def service(owner: Mapping[str, Any], port: int) -> dict[str, Any]:
    meta = owner["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.service_name(name),
            "namespace": meta["namespace"],
            "labels": naming.common_labels(name, "model-server"),
            "ownerReferences": [naming.owner_reference(owner)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(name),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_endpoint(owner: Mapping[str, Any], port: int) -> str:
    meta = owner["metadata"]
    return f"http://{naming.service_name(meta['name'])}.{meta['namespace']}.svc:{port}/v1"


def agent_token_secret(owner: Mapping[str, Any], token: str) -> dict[str, Any]:
    """The Secret holding the token the operator uses to call a base model's agents."""
    meta = owner["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.agent_secret_name(name),
            "namespace": meta["namespace"],
            "labels": naming.common_labels(name, "agent-token"),
            "ownerReferences": [naming.owner_reference(owner)],
        },
        "stringData": {naming.AGENT_TOKEN_KEY: token},
    }

"""Names and labels of everything loraplane creates, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loraplane.api import GROUP

MANAGED_BY = "loraplane"
LABEL_BASE_MODEL = f"{GROUP}/base-model"
LABEL_COMPONENT = "app.kubernetes.io/component"
# On every LoRAAdapter: unregister it from every pod before the object goes.
FINALIZER = f"{GROUP}/finalizer"
ADAPTERS_READY_GATE = f"{GROUP}/adapters-ready"

VLLM_CONTAINER = "vllm"
AGENT_CONTAINER = "agent"
ADAPTER_VOLUME = "loraplane-adapters"
ADAPTER_MOUNT_PATH = "/adapters"
AGENT_TOKEN_KEY = "token"


def selector_labels(base_model: str) -> dict[str, str]:
    """The labels that select a base model's pods: stable for the object's lifetime."""
    return {LABEL_BASE_MODEL: base_model}


def common_labels(base_model: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": base_model,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_COMPONENT: component,
        **selector_labels(base_model),
    }


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def deployment_name(base_model: str) -> str:
    return base_model


def service_name(base_model: str) -> str:
    return base_model


def base_model_of_child(child_name: str) -> str:
    """The base model a Deployment or Service of this name belongs to (they share its name)."""
    return child_name


def agent_secret_name(base_model: str) -> str:
    return f"{base_model}-agent-token"


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference to `owner` (a Kubernetes object as a dict)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }

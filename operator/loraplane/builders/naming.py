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
# A small memory volume: vLLM's loraplane plugin writes its residency snapshot, the agent reads it.
RESIDENCY_VOLUME = "loraplane-residency"
RESIDENCY_MOUNT_PATH = "/run/loraplane"
RESIDENCY_SIZE_LIMIT = "16Mi"  # a snapshot is about 250 bytes per adapter
# The name of loraplane's vLLM general plugin (pyproject.toml's entry point).
VLLM_PLUGIN = "loraplane"
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


# The router of a base model (spec.router): its pods carry LABEL_ROUTER, never LABEL_BASE_MODEL,
# which would put them behind the base model's Service and among the pods the router picks from.
LABEL_ROUTER = f"{GROUP}/router"
ROUTER_COMPONENT = "router"
ROUTER_CONFIG_VOLUME = "loraplane-router-config"
ROUTER_ENDPOINTS_VOLUME = "loraplane-router-endpoints"


def router_name(base_model: str) -> str:
    """The router's Deployment, Service, ServiceAccount, Role, RoleBinding and configuration."""
    return f"{base_model}-router"


def router_endpoints_name(base_model: str) -> str:
    """The ConfigMap listing the base model's Ready pods: Envoy's fallback when the EPP is down."""
    return f"{base_model}-router-endpoints"


def router_selector_labels(base_model: str) -> dict[str, str]:
    return {LABEL_ROUTER: base_model}


def router_pod_labels(base_model: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "loraplane-router",
        "app.kubernetes.io/instance": base_model,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_COMPONENT: ROUTER_COMPONENT,
        **router_selector_labels(base_model),
    }


# The kinds of a base model's own children, which share its name.
NAMED_CHILD_KINDS = frozenset(
    {"Deployment", "Service", "NetworkPolicy", "InferencePool", "InferenceModelRewrite"}
)


def child_slot(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(base model, slot) of an object loraplane may have made for a base model; None for an
    object of a kind only the router has that is not the router's.

    The base model's own children share its name, and their slot is their kind. The router's
    are named after it with a suffix, which a base model's own name could also end with, so
    they are told apart by their controller, the base model that owns them.
    """
    meta = obj["metadata"]
    name, kind = meta["name"], obj["kind"]
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == "BaseModelDeployment":
            owner = ref["name"]
            if name == router_name(owner):
                return owner, f"router/{kind}"
            if name == router_endpoints_name(owner):
                return owner, "router/endpoints"
    if kind not in NAMED_CHILD_KINDS:
        return None
    return base_model_of_child(name), kind


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


def store_entry(path: str | None, root: str = ADAPTER_MOUNT_PATH) -> tuple[str, str] | None:
    """(adapter dir, version dir) of a path of the adapter store, `<root>/<name>/<version>`;
    None for any other path (an adapter someone else registered, e.g. with --lora-modules)."""
    prefix = root.rstrip("/") + "/"
    if not path or not path.startswith(prefix):
        return None
    parts = path[len(prefix) :].strip("/").split("/")
    return (parts[0], parts[1]) if len(parts) == 2 else None

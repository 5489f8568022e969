"""The router of a base model (spec.router): the Kubernetes objects around the Endpoint Picker
and Envoy. What runs inside them (the EPP's and Envoy's configuration) is `router_config`.

Both modes: an InferencePool named after the base model, selecting its pods (EPP v1.5.0 runs
only against a pool), a Service in front of the EPP's ext_proc port that the pool names, a
ConfigMap with the configuration, and a ServiceAccount with a Role that reads the pool and the
pods in the namespace and nothing else. Envoy mode adds Envoy in each router pod (it asks the EPP
over ext_proc on localhost which pod takes each request), the clients' port on the Service, and a
ConfigMap listing the base model's Ready pods (Envoy's fallback when the EPP does not answer).
InferencePool mode runs the EPP alone, for a Gateway of the user's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loraplane.api import RESERVED_PREFIX, RouterSpec
from loraplane.builders import naming, router_config
from loraplane.config import Settings

INFERENCE_POOL_API = "inference.networking.k8s.io/v1"
# The rewrite and objective kinds EPP v1.5.0 reads (routing.md: they moved to llm-d.ai later).
INFERENCE_EXTENSION_GROUP = "inference.networking.x-k8s.io"
ROUTER_SERVICE_PORT = 8000  # what clients call: the same port as the base model's own Service
CONFIG_HASH = f"{RESERVED_PREFIX}router-config"


@dataclass(frozen=True)
class RouterContext:
    """Operator-level inputs of the router that the spec does not carry."""

    epp_image: str
    epp_command: str
    envoy_image: str
    envoy_command: str
    default_weights: Mapping[str, int]
    refresh_metrics_ms: int
    envoy_concurrency: int
    request_timeout_seconds: int
    vllm_port: int

    @classmethod
    def of(cls, settings: Settings) -> RouterContext:
        return cls(
            epp_image=settings.router_epp_image,
            epp_command=settings.router_epp_command,
            envoy_image=settings.router_envoy_image,
            envoy_command=settings.router_envoy_command,
            default_weights=settings.router_weights(),
            refresh_metrics_ms=settings.router_refresh_metrics_ms,
            envoy_concurrency=settings.router_envoy_concurrency,
            request_timeout_seconds=settings.router_request_timeout_seconds,
            vllm_port=settings.vllm_port,
        )


def weights(router: RouterSpec, ctx: RouterContext) -> router_config.ScorerWeights:
    """The spec's weights over the operator's defaults."""
    s, d = router.scorers, ctx.default_weights

    def pick(value: int | None, name: str) -> int:
        return value if value is not None else d[name]

    return router_config.ScorerWeights(
        queue=pick(s.queue, "queue"),
        kv_cache=pick(s.kv_cache, "kv_cache"),
        prefix=pick(s.prefix, "prefix"),
        lora=pick(s.lora_affinity, "lora_affinity"),
    )


def lora_metric(router: RouterSpec) -> str:
    if router.lora_signal == "Residency":
        return router_config.RESIDENCY_METRIC
    return router_config.VLLM_LORA_METRIC


def _meta(owner: Mapping[str, Any], name: str, component: str) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": naming.common_labels(meta["name"], component),
        "ownerReferences": [naming.owner_reference(owner)],
    }


def config_map(owner: Mapping[str, Any], router: RouterSpec, ctx: RouterContext) -> dict[str, Any]:
    data = {
        router_config.EPP_CONFIG_FILE: router_config.epp_config(
            weights(router, ctx), lora_metric(router)
        )
    }
    if router.mode == "Envoy":
        data[router_config.ENVOY_CONFIG_FILE] = router_config.envoy_config(
            router.fail_open, ctx.request_timeout_seconds
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, naming.router_name(owner["metadata"]["name"]), "router"),
        "data": data,
    }


def endpoints_config_map(
    owner: Mapping[str, Any], pod_ips: Sequence[str], ctx: RouterContext
) -> dict[str, Any]:
    """The base model's Ready pods, which Envoy sends requests to when the EPP does not answer."""
    name = naming.router_endpoints_name(owner["metadata"]["name"])
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, name, "router"),
        "data": {
            router_config.ENDPOINTS_FILE: router_config.endpoints(sorted(pod_ips), ctx.vllm_port)
        },
    }


def service_account(owner: Mapping[str, Any]) -> dict[str, Any]:
    name = naming.router_name(owner["metadata"]["name"])
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(owner, name, "router")}


def role(owner: Mapping[str, Any]) -> dict[str, Any]:
    """What the EPP reads: its pool, the pods it picks from, and the rewrites and objectives of
    its group when they exist (it looks for them at start)."""
    read = ("get", "list", "watch")
    rules: list[dict[str, Any]] = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": list(read)},
        {
            "apiGroups": [router_config.INFERENCE_POOL_GROUP],
            "resources": ["inferencepools"],
            "verbs": list(read),
        },
        {
            "apiGroups": [INFERENCE_EXTENSION_GROUP],
            "resources": ["inferenceobjectives", "inferencemodelrewrites"],
            "verbs": list(read),
        },
    ]
    name = naming.router_name(owner["metadata"]["name"])
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(owner, name, "router"),
        "rules": rules,
    }


def role_binding(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    name = naming.router_name(meta["name"])
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, name, "router"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": meta["namespace"]}],
    }


def service(owner: Mapping[str, Any], router: RouterSpec) -> dict[str, Any]:
    """The EPP's ext_proc port, which the InferencePool names (a Gateway calls it), and in Envoy
    mode the clients' port."""
    name = owner["metadata"]["name"]
    ports: list[dict[str, Any]] = [
        {
            "name": "grpc-ext-proc",
            "port": router_config.EPP_GRPC_PORT,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "http2",
        }
    ]
    if router.mode == "Envoy":
        ports.insert(
            0,
            {"name": "http", "port": ROUTER_SERVICE_PORT, "targetPort": "http", "protocol": "TCP"},
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, naming.router_name(name), "router"),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.router_selector_labels(name),
            "ports": ports,
        },
    }


def inference_pool(owner: Mapping[str, Any], router: RouterSpec, vllm_port: int) -> dict[str, Any]:
    """The pool a user's Gateway routes to: the base model's pods, picked by our EPP."""
    name = owner["metadata"]["name"]
    return {
        "apiVersion": INFERENCE_POOL_API,
        "kind": "InferencePool",
        "metadata": _meta(owner, name, "router"),
        "spec": {
            "selector": {"matchLabels": naming.selector_labels(name)},
            "targetPorts": [{"number": vllm_port}],
            "endpointPickerRef": {
                "group": "",
                "kind": "Service",
                "name": naming.router_name(name),
                "port": {"number": router_config.EPP_GRPC_PORT},
                "failureMode": "FailOpen" if router.fail_open else "FailClose",
            },
        },
    }


def model_rewrite(
    owner: Mapping[str, Any], rules: Sequence[tuple[str, Sequence[tuple[str, int]]]]
) -> dict[str, Any]:
    """The canaries of the base model's adapters (spec.canary), as the EPP reads them: each
    request for a served name is rewritten to one of its targets, chosen by weight."""
    name = owner["metadata"]["name"]
    return {
        "apiVersion": f"{INFERENCE_EXTENSION_GROUP}/v1alpha2",
        "kind": "InferenceModelRewrite",
        "metadata": _meta(owner, name, "router"),
        "spec": {
            "poolRef": {
                "group": router_config.INFERENCE_POOL_GROUP,
                "kind": "InferencePool",
                "name": name,
            },
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": served}}],
                    "targets": [{"modelRewrite": t, "weight": w} for t, w in targets],
                }
                for served, targets in rules
            ],
        },
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _epp_container(
    owner: Mapping[str, Any], router: RouterSpec, ctx: RouterContext
) -> dict[str, Any]:
    meta = owner["metadata"]
    # EPP v1.5.0 runs only against an InferencePool (router_config), the one made beside it.
    args = router_config.epp_pool_args(meta["name"], meta["namespace"], ctx.refresh_metrics_ms)
    container: dict[str, Any] = {
        "name": "epp",
        "image": ctx.epp_image,
        # Always set: the router image has no ENTRYPOINT, since it serves both containers.
        "command": [ctx.epp_command],
        "args": args,
        "env": [
            _field_env("NAMESPACE", "metadata.namespace"),
            _field_env("POD_NAME", "metadata.name"),
        ],
        "ports": [
            {"name": "grpc", "containerPort": router_config.EPP_GRPC_PORT},
            {"name": "grpc-health", "containerPort": router_config.EPP_HEALTH_PORT},
            {"name": "epp-metrics", "containerPort": router_config.EPP_METRICS_PORT},
        ],
        # Liveness only: a restarting EPP must not take Envoy's pod out of service, since Envoy
        # answers without it (fail open). In InferencePool mode the EPP is the whole pod.
        "livenessProbe": {
            "grpc": {
                "port": router_config.EPP_HEALTH_PORT,
                "service": router_config.EPP_HEALTH_SERVICE,
            },
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        "volumeMounts": [
            {
                "name": naming.ROUTER_CONFIG_VOLUME,
                "mountPath": router_config.CONFIG_DIR,
                "readOnly": True,
            }
        ],
        "securityContext": _restricted(),
    }
    if router.mode == "InferencePool":
        container["readinessProbe"] = {
            "grpc": {
                "port": router_config.EPP_HEALTH_PORT,
                "service": router_config.EPP_HEALTH_SERVICE,
            },
            "periodSeconds": 2,
        }
    if router.epp_resources:
        container["resources"] = dict(router.epp_resources)
    return container


def _envoy_container(router: RouterSpec, ctx: RouterContext) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "envoy",
        "image": ctx.envoy_image,
        "command": [ctx.envoy_command],
        "args": router_config.envoy_args(ctx.envoy_concurrency),
        "ports": [{"name": "http", "containerPort": router_config.ENVOY_PORT}],
        # Envoy's own answer on its listener: the pod is unready only when Envoy cannot serve.
        "readinessProbe": {
            "httpGet": {"path": router_config.HEALTH_PATH, "port": "http"},
            "periodSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": router_config.HEALTH_PATH, "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {
                "name": naming.ROUTER_CONFIG_VOLUME,
                "mountPath": router_config.CONFIG_DIR,
                "readOnly": True,
            },
            {
                "name": naming.ROUTER_ENDPOINTS_VOLUME,
                "mountPath": router_config.ENDPOINTS_DIR,
                "readOnly": True,
            },
        ],
        "securityContext": _restricted(),
    }
    if router.envoy_resources:
        container["resources"] = dict(router.envoy_resources)
    return container


def _restricted() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def config_hash(config: Mapping[str, Any]) -> str:
    """Of the configuration the EPP and Envoy read at start: a change rolls the router's pods."""
    return hashlib.sha256(json.dumps(config["data"], sort_keys=True).encode()).hexdigest()[:16]


def deployment(
    owner: Mapping[str, Any], router: RouterSpec, ctx: RouterContext, config: Mapping[str, Any]
) -> dict[str, Any]:
    meta = owner["metadata"]
    name = meta["name"]
    containers = [_epp_container(owner, router, ctx)]
    volumes: list[dict[str, Any]] = [
        {"name": naming.ROUTER_CONFIG_VOLUME, "configMap": {"name": naming.router_name(name)}}
    ]
    if router.mode == "Envoy":
        containers.append(_envoy_container(router, ctx))
        volumes.append(
            {
                "name": naming.ROUTER_ENDPOINTS_VOLUME,
                "configMap": {"name": naming.router_endpoints_name(name)},
            }
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, naming.router_name(name), "router"),
        "spec": {
            "replicas": router.replicas,
            "selector": {"matchLabels": naming.router_selector_labels(name)},
            "template": {
                "metadata": {
                    "labels": naming.router_pod_labels(name),
                    "annotations": {CONFIG_HASH: config_hash(config)},
                },
                "spec": {
                    "serviceAccountName": naming.router_name(name),
                    "containers": containers,
                    "volumes": volumes,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                },
            },
        },
    }


def endpoint(owner: Mapping[str, Any], router: RouterSpec) -> str:
    meta = owner["metadata"]
    if router.mode == "InferencePool":
        return f"InferencePool {meta['namespace']}/{meta['name']}"
    host = f"{naming.router_name(meta['name'])}.{meta['namespace']}.svc"
    return f"http://{host}:{ROUTER_SERVICE_PORT}/v1"

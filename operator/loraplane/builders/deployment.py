"""The Deployment that runs a base model: vLLM with LoRA enabled, plus the loraplane agent."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loraplane.api import BaseModelDeploymentSpec
from loraplane.builders import merge as merged
from loraplane.builders import naming
from loraplane.builders.vllm_args import MODEL_MOUNT_CACHE, vllm_args
from loraplane.config import Settings, env_name
from loraplane.merge.inputs import MergeInputs
from loraplane.plugin import snapshot

GPU_RESOURCE = "nvidia.com/gpu"
STARTUP_PERIOD_SECONDS = 2


@dataclass(frozen=True)
class PodContext:
    """Operator-level inputs the spec does not carry (image of the agent, ports)."""

    agent_image: str
    agent_port: int = 8081
    vllm_port: int = 8000
    agent_metrics_port: int = 8082
    engine_plugin: bool = True
    agent_resources: Mapping[str, Any] = field(default_factory=lambda: Settings().agent_resources())
    # How the agent reaches adapter sources: the operator's own source settings, passed on.
    source_env: Mapping[str, str] = field(default_factory=lambda: Settings().agent_source_env())
    merge_image: str = ""  # of the merge init container; empty: the vLLM image

    @classmethod
    def of(cls, settings: Settings) -> PodContext:
        return cls(
            agent_image=settings.operator_image,
            agent_port=settings.agent_port,
            vllm_port=settings.vllm_port,
            agent_metrics_port=settings.agent_metrics_port,
            engine_plugin=settings.engine_plugin,
            agent_resources=settings.agent_resources(),
            source_env=settings.agent_source_env(),
            merge_image=settings.merge_image,
        )


class ResourceError(ValueError):
    """The spec's resources cannot run the requested parallelism."""


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _resources(spec: BaseModelDeploymentSpec) -> dict[str, Any]:
    resources: dict[str, Any] = json.loads(json.dumps(spec.engine.resources or {}))
    tp = spec.engine.tensor_parallel_size
    if tp > 1:
        limits = resources.setdefault("limits", {})
        gpus = limits.get(GPU_RESOURCE)
        if gpus is None:
            limits[GPU_RESOURCE] = tp
        elif int(gpus) < tp:
            raise ResourceError(
                f"tensorParallelSize {tp} needs {tp} GPUs per pod, but engine.resources.limits "
                f"asks for {GPU_RESOURCE}: {gpus}; raise the limit or lower tensorParallelSize"
            )
    return resources


def _adapter_volume(spec: BaseModelDeploymentSpec) -> dict[str, Any]:
    store = spec.adapter_store
    if store.persistent_volume_claim is not None:
        return {
            "name": naming.ADAPTER_VOLUME,
            "persistentVolumeClaim": {"claimName": store.persistent_volume_claim.claim_name},
        }
    size = store.empty_dir.size_limit if store.empty_dir is not None else "10Gi"
    return {"name": naming.ADAPTER_VOLUME, "emptyDir": {"sizeLimit": size}}


def _plugin_env(user_env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """VLLM_PLUGINS naming loraplane's plugin first, then any the user names.

    vLLM loads every installed general plugin when VLLM_PLUGINS is unset and only the named
    ones when it is set; the user's own list (a literal value) is kept after ours. A value from a
    Secret or ConfigMap cannot be merged: the user's entry then stands alone.
    """
    theirs = next((e for e in user_env if e.get("name") == "VLLM_PLUGINS"), None)
    if theirs is not None and "value" not in theirs:
        return []
    named = [p for p in str((theirs or {}).get("value", "")).split(",") if p.strip()]
    plugins = [naming.VLLM_PLUGIN, *(p.strip() for p in named if p.strip() != naming.VLLM_PLUGIN)]
    return [
        {"name": "VLLM_PLUGINS", "value": ",".join(plugins)},
        {"name": snapshot.ENV_DIR, "value": naming.RESIDENCY_MOUNT_PATH},
    ]


def _residency_mount(read_only: bool) -> dict[str, Any]:
    mount: dict[str, Any] = {
        "name": naming.RESIDENCY_VOLUME,
        "mountPath": naming.RESIDENCY_MOUNT_PATH,
    }
    # Only when true: the API server drops a false readOnly, and a field the live object can
    # never carry would make every reconcile re-apply and replace the Deployment.
    if read_only:
        mount["readOnly"] = True
    return mount


def vllm_container(
    spec: BaseModelDeploymentSpec,
    served_name: str,
    ctx: PodContext,
    merge: MergeInputs | None = None,
) -> dict[str, Any]:
    env: list[dict[str, Any]] = []
    if merge is None:
        # Runtime load/unload routes exist only with this set (DESIGN.md §4).
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "true"})
    user_env = [dict(e) for e in spec.engine.env]
    plugin_env = _plugin_env(user_env) if ctx.engine_plugin else []
    if plugin_env:
        user_env = [e for e in user_env if e.get("name") != "VLLM_PLUGINS"]
    hf = spec.model.source.huggingface
    if hf is not None:
        env.append({"name": "HF_HOME", "value": MODEL_MOUNT_CACHE})
        if hf.token_secret_ref is not None:
            env.append(_secret_env("HF_TOKEN", hf.token_secret_ref))
    if spec.engine.api_key_secret_ref is not None:
        env.append(_secret_env("VLLM_API_KEY", spec.engine.api_key_secret_ref))
    env += plugin_env + user_env
    mounts: list[dict[str, Any]] = [
        {"name": naming.ADAPTER_VOLUME, "mountPath": naming.ADAPTER_MOUNT_PATH, "readOnly": True}
    ]
    if merge is not None:
        mounts.append(merged.vllm_mount())
    if ctx.engine_plugin:
        mounts.append(_residency_mount(read_only=False))
    if hf is not None:
        mounts.append({"name": "loraplane-model-cache", "mountPath": MODEL_MOUNT_CACHE})
    if spec.engine.tensor_parallel_size > 1:
        mounts.append({"name": "loraplane-dshm", "mountPath": "/dev/shm"})
    mounts += [dict(m) for m in spec.template.volume_mounts]

    def health() -> dict[str, Any]:
        return {"path": "/health", "port": "http"}

    container: dict[str, Any] = {
        "name": naming.VLLM_CONTAINER,
        "image": spec.engine.image,
        "imagePullPolicy": str(
            getattr(spec.engine.image_pull_policy, "value", None) or spec.engine.image_pull_policy
        ),
        "args": (
            vllm_args(spec, served_name, ctx.vllm_port)
            if merge is None
            else merged.vllm_args(spec, merge, ctx.vllm_port)
        ),
        "env": env,
        "ports": [{"name": "http", "containerPort": ctx.vllm_port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "startupProbe": {
            "httpGet": health(),
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(
                spec.engine.startup_timeout_seconds / STARTUP_PERIOD_SECONDS
            ),
        },
        "livenessProbe": {
            "httpGet": health(),
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": health(),
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 1,
        },
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    return container


def agent_container(
    spec: BaseModelDeploymentSpec, base_model: str, ctx: PodContext
) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": env_name("agent_port"), "value": str(ctx.agent_port)},
        {"name": env_name("vllm_url"), "value": f"http://127.0.0.1:{ctx.vllm_port}"},
        {"name": env_name("adapter_root"), "value": naming.ADAPTER_MOUNT_PATH},
        {
            "name": env_name("agent_token"),
            "valueFrom": {
                "secretKeyRef": {
                    "name": naming.agent_secret_name(base_model),
                    "key": naming.AGENT_TOKEN_KEY,
                }
            },
        },
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": env_name("base_model"), "value": base_model},
        {"name": env_name("metrics_port"), "value": str(ctx.agent_metrics_port)},
        *({"name": k, "value": v} for k, v in sorted(ctx.source_env.items())),
    ]
    if ctx.engine_plugin:
        env.append({"name": env_name("residency_dir"), "value": naming.RESIDENCY_MOUNT_PATH})
    if spec.engine.api_key_secret_ref is not None:
        env.append(_secret_env(env_name("vllm_api_key"), spec.engine.api_key_secret_ref))
    if spec.model.source.path is not None:
        # Lets the agent check adapter shapes against the base model's config.json.
        env.append({"name": env_name("model_path"), "value": spec.model.source.path})
    return {
        "name": naming.AGENT_CONTAINER,
        "image": ctx.agent_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["loraplane-agent"],
        "env": env,
        "ports": [
            {"name": "agent", "containerPort": ctx.agent_port, "protocol": "TCP"},
            {"name": "agent-metrics", "containerPort": ctx.agent_metrics_port, "protocol": "TCP"},
        ],
        # The user's mounts too: the agent reads `path` adapter sources from them.
        "volumeMounts": [
            {"name": naming.ADAPTER_VOLUME, "mountPath": naming.ADAPTER_MOUNT_PATH},
            *([_residency_mount(read_only=True)] if ctx.engine_plugin else []),
            *(dict(m) for m in spec.template.volume_mounts),
        ],
        # The pod is Ready only when it serves every adapter it should, which only the agent
        # knows: vLLM healthy and each adapter the operator marked required registered.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "agent"},
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "agent"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "resources": json.loads(json.dumps(ctx.agent_resources)),
    }


def merge_env(spec: BaseModelDeploymentSpec, ctx: PodContext) -> list[dict[str, Any]]:
    """The merge init container's: the agent's source settings, the hub's cache and token."""
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(ctx.source_env.items())]
    hf = spec.model.source.huggingface
    if hf is not None:
        env.append({"name": "HF_HOME", "value": MODEL_MOUNT_CACHE})
        if hf.token_secret_ref is not None:
            env.append(_secret_env("HF_TOKEN", hf.token_secret_ref))
    if spec.model.source.path is not None:
        env.append({"name": env_name("model_path"), "value": spec.model.source.path})
    return env + [dict(e) for e in spec.engine.env if e.get("name") != "VLLM_PLUGINS"]


def pod_template(
    owner: Mapping[str, Any],
    spec: BaseModelDeploymentSpec,
    served_name: str,
    ctx: PodContext,
    merge: MergeInputs | None = None,
) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    tmpl = spec.template
    volumes: list[dict[str, Any]] = [_adapter_volume(spec)]
    if ctx.engine_plugin:
        volumes.append(
            {
                "name": naming.RESIDENCY_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": naming.RESIDENCY_SIZE_LIMIT},
            }
        )
    if spec.model.source.huggingface is not None:
        volumes.append({"name": "loraplane-model-cache", "emptyDir": {}})
    if spec.engine.tensor_parallel_size > 1:
        # NCCL needs far more shared memory than the runtime's 64 MiB default.
        volumes.append({"name": "loraplane-dshm", "emptyDir": {"medium": "Memory"}})
    if merge is not None:
        volumes += merged.volumes(merge)
    volumes += [dict(v) for v in tmpl.volumes]
    pod_spec: dict[str, Any] = {
        "containers": [
            vllm_container(spec, served_name, ctx, merge),
            agent_container(spec, name, ctx),
        ],
        "volumes": volumes,
        # Set by the operator once every adapter this pod should serve is registered, so a new
        # or restarted server takes no traffic before its adapters are back.
        "readinessGates": [{"conditionType": naming.ADAPTERS_READY_GATE}],
        "terminationGracePeriodSeconds": 30,
    }
    if merge is not None:
        image = ctx.merge_image or spec.engine.image
        pod_spec["initContainers"] = [
            merged.init_container(spec, merge, image, merge_env(spec, ctx))
        ]
    if tmpl.node_selector:
        pod_spec["nodeSelector"] = dict(tmpl.node_selector)
    if tmpl.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tmpl.tolerations]
    if tmpl.affinity:
        pod_spec["affinity"] = dict(tmpl.affinity)
    if tmpl.service_account_name:
        pod_spec["serviceAccountName"] = tmpl.service_account_name
    if tmpl.priority_class_name:
        pod_spec["priorityClassName"] = tmpl.priority_class_name
    labels = {**(tmpl.labels or {}), **naming.common_labels(name, "model-server")}
    metadata: dict[str, Any] = {"labels": labels}
    annotations = dict(tmpl.annotations or {})
    if merge is not None:
        annotations.update(merged.pod_annotations(merge))
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod_spec}


def deployment(
    owner: Mapping[str, Any],
    spec: BaseModelDeploymentSpec,
    served_name: str,
    ctx: PodContext,
    merge: MergeInputs | None = None,
) -> dict[str, Any]:
    """The Deployment of a BaseModelDeployment; with `merge`, its pods serve that merged
    version. Raises ArgsError / ResourceError on a bad spec."""
    meta = owner["metadata"]
    name = meta["name"]
    template = pod_template(owner, spec, served_name, ctx, merge)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": naming.deployment_name(name),
            "namespace": meta["namespace"],
            "labels": naming.common_labels(name, "model-server"),
            "ownerReferences": [naming.owner_reference(owner)],
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": naming.selector_labels(name)},
            # Never drop below the requested count while rolling: a model server takes minutes
            # to start, and a surge pod is cheaper than an outage.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": spec.engine.startup_timeout_seconds + 600,
            "template": template,
        },
    }

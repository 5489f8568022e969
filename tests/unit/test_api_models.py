"""The API models: round trips, defaults, and agreement with the CRD's own defaulting."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from loraplane import api
from loraplane.api import crd

FULL_BMD_SPEC: dict[str, Any] = {
    "replicas": 3,
    "model": {
        "source": {
            "huggingface": {
                "repo": "meta-llama/Llama-3.1-8B-Instruct",
                "revision": "0e9e39f249a16976918f6564b8830bc894c89659",
                "tokenSecretRef": {"name": "hf-token", "key": "token"},
            }
        },
        "servedName": "llama-3.1-8b",
        "quantization": "awq_marlin",
        "dtype": "bfloat16",
        "maxModelLen": 8192,
    },
    "lora": {
        "maxLoras": 4,
        "maxCpuLoras": 16,
        "maxLoraRank": 64,
        "loraDtype": "bfloat16",
        "fullyShardedLoras": True,
        "maxAdaptersPerReplica": 32,
    },
    "engine": {
        "image": "vllm/vllm-openai:v0.31.0",
        "imagePullPolicy": "Always",
        "extraArgs": ["--gpu-memory-utilization", "0.92"],
        "env": [
            {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
        "resources": {"limits": {"nvidia.com/gpu": 2, "memory": "48Gi"}},
        "tensorParallelSize": 2,
        "apiKeySecretRef": {"name": "vllm-api-key", "key": "key"},
        "startupTimeoutSeconds": 3600,
    },
    "template": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
        "serviceAccountName": "vllm",
        "priorityClassName": "inference",
        "labels": {"team": "ml"},
        "annotations": {"example.com/owner": "ml-platform"},
    },
    "adapterStore": {"persistentVolumeClaim": {"claimName": "adapters"}},
}

FULL_BMD_STATUS: dict[str, Any] = {
    "observedGeneration": 4,
    "replicas": 3,
    "readyReplicas": 2,
    "updatedReplicas": 3,
    "ready": "2/3",
    "selector": "loraplane.dev/base-model=llama",
    "endpoint": "http://llama.ml.svc:8000/v1",
    "servedName": "llama-3.1-8b",
    "conditions": [
        {
            "type": "Available",
            "status": "True",
            "reason": "MinimumReplicasAvailable",
            "message": "2 of 3 pods ready",
            "lastTransitionTime": "2026-11-29T01:02:03Z",
            "observedGeneration": 4,
        },
        {"type": "Degraded", "status": "False"},
    ],
    "adapters": {"desired": 5, "ready": 4},
}

FULL_LORA_SPEC: dict[str, Any] = {
    "baseModel": "llama",
    "servedName": "sql-lora",
    "source": {
        "huggingface": {
            "repo": "yard1/llama-2-7b-sql-lora-test",
            "revision": "v1.0",
            "tokenSecretRef": {"name": "hf-token", "key": "token"},
        }
    },
    "priority": 100,
    "updatePolicy": "Follow",
    "refresh": "2026-11-29",
}

FULL_LORA_STATUS: dict[str, Any] = {
    "observedGeneration": 2,
    "phase": "Ready",
    "message": "registered on 2 of 2 pods",
    "conditions": [
        {"type": "Validated", "status": "True", "reason": "Validated"},
        {"type": "Ready", "status": "True", "reason": "Registered"},
    ],
    "adapter": {
        "rank": 16,
        "alpha": 32.0,
        "targetModules": ["q_proj", "v_proj"],
        "baseModel": "meta-llama/Llama-2-7b-hf",
        "sizeBytes": 33554432,
        "digest": "sha256:0123abcd",
        "path": "/adapters/sql-lora/0123abcd",
    },
    "replicas": {"desired": 2, "registered": 2, "outdated": 0},
    "ready": "2/2",
    "pods": [
        {"name": "llama-abc-1", "state": "Registered", "since": "2026-11-29T01:02:03Z"},
        {
            "name": "llama-abc-2",
            "state": "Failed",
            "since": "2026-11-29T01:02:04.500000Z",
            "lastError": "vLLM answered 500",
        },
    ],
}

ROUND_TRIPS: list[tuple[type[api.K8sModel], dict[str, Any]]] = [
    (api.BaseModelDeploymentSpec, FULL_BMD_SPEC),
    (api.BaseModelDeploymentStatus, FULL_BMD_STATUS),
    (api.LoRAAdapterSpec, FULL_LORA_SPEC),
    (api.LoRAAdapterStatus, FULL_LORA_STATUS),
]


@pytest.mark.parametrize(("model", "data"), ROUND_TRIPS, ids=lambda x: getattr(x, "__name__", ""))
def test_round_trip(model: type[api.K8sModel], data: dict[str, Any]) -> None:
    parsed = model.from_k8s(data)
    assert parsed.to_k8s() == data
    assert model.from_k8s(parsed.to_k8s()) == parsed


def test_round_trip_of_whole_objects() -> None:
    body = {
        "apiVersion": "loraplane.dev/v1alpha1",
        "kind": "BaseModelDeployment",
        "metadata": {
            "name": "llama",
            "namespace": "ml",
            "uid": "u-1",
            "generation": 4,
            "resourceVersion": "123",
            "labels": {"a": "b"},
        },
        "spec": FULL_BMD_SPEC,
        "status": FULL_BMD_STATUS,
    }
    obj = api.BaseModelDeployment.from_k8s(body)
    assert obj.to_k8s() == body
    assert obj.served_name == "llama-3.1-8b"
    assert obj.metadata.generation == 4

    lora = api.LoRAAdapter.from_k8s(
        {"metadata": {"name": "sql", "namespace": "ml"}, "spec": FULL_LORA_SPEC}
    )
    assert lora.api_version == api.API_VERSION
    assert lora.kind == "LoRAAdapter"
    assert lora.served_name == "sql-lora"
    assert lora.to_k8s()["spec"] == FULL_LORA_SPEC


def test_served_name_defaults_to_metadata_name() -> None:
    bmd = api.BaseModelDeployment.from_k8s(
        {"metadata": {"name": "tiny"}, "spec": {"model": {"source": {"path": "/m"}}}}
    )
    assert bmd.served_name == "tiny"
    lora = api.LoRAAdapter.from_k8s(
        {"metadata": {"name": "a1"}, "spec": {"baseModel": "tiny", "source": {"path": "/a"}}}
    )
    assert lora.served_name == "a1"


def test_bmd_defaults() -> None:
    spec = api.BaseModelDeploymentSpec.from_k8s({"model": {"source": {"path": "/models/tiny"}}})
    assert spec.to_k8s() == {
        "replicas": 1,
        "model": {"source": {"path": "/models/tiny"}, "dtype": "auto"},
        "lora": {
            "maxLoras": 1,
            "maxLoraRank": 16,
            "loraDtype": "auto",
            "fullyShardedLoras": False,
        },
        "engine": {
            "image": "vllm/vllm-openai:v0.32.0",
            "imagePullPolicy": "IfNotPresent",
            "extraArgs": [],
            "env": [],
            "tensorParallelSize": 1,
            "startupTimeoutSeconds": 1800,
        },
        "template": {"tolerations": [], "volumes": [], "volumeMounts": []},
        "adapterStore": {"emptyDir": {"sizeLimit": "10Gi"}},
    }
    assert spec.engine.image == api.DEFAULT_IMAGE
    assert spec.lora.max_cpu_loras is None
    assert spec.lora.max_adapters_per_replica is None
    assert spec.adapter_store.empty_dir is not None
    assert spec.adapter_store.persistent_volume_claim is None


def test_hugging_face_defaults() -> None:
    src = api.ModelSource.from_k8s({"huggingface": {"repo": "org/model"}})
    assert src.huggingface is not None
    assert src.huggingface.revision == "main"
    assert src.huggingface.token_secret_ref is None


def test_lora_defaults() -> None:
    spec = api.LoRAAdapterSpec.from_k8s({"baseModel": "tiny", "source": {"path": "/a"}})
    assert spec.to_k8s() == {
        "baseModel": "tiny",
        "source": {"path": "/a"},
        "priority": 0,
        "updatePolicy": "Pinned",
    }


def test_status_defaults_are_empty() -> None:
    assert api.BaseModelDeploymentStatus().to_k8s() == {"conditions": []}
    assert api.LoRAAdapterStatus().to_k8s() == {"conditions": []}


def test_snake_case_names_are_accepted_too() -> None:
    spec = api.LoRASpec(max_loras=2, max_cpu_loras=4)
    assert spec.to_k8s()["maxCpuLoras"] == 4
    assert api.LoRASpec.from_k8s({"max_loras": 3}).max_loras == 3


class _ReadOnlyMapping(Mapping[str, Any]):
    """Like kopf's Spec / Body: a Mapping that is not a dict."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return _ReadOnlyMapping(value) if isinstance(value, Mapping) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_from_k8s_takes_any_mapping() -> None:
    spec = api.BaseModelDeploymentSpec.from_k8s(_ReadOnlyMapping(FULL_BMD_SPEC))
    assert spec.to_k8s() == FULL_BMD_SPEC


def test_unknown_spec_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"lora\.maxLora\b[\s\S]*Extra inputs"):
        api.BaseModelDeploymentSpec.from_k8s(
            {"model": {"source": {"path": "/m"}}, "lora": {"maxLora": 4}}
        )


def test_unknown_status_field_is_ignored() -> None:
    status = api.LoRAAdapterStatus.from_k8s({"phase": "Ready", "fromTheFuture": 1})
    assert status.to_k8s() == {"phase": "Ready", "conditions": []}


def test_models_are_validated_on_assignment() -> None:
    spec = api.LoRASpec()
    with pytest.raises(ValidationError, match="maxLoraRank must be one of"):
        spec.max_lora_rank = 7


def test_kind_constants() -> None:
    assert (api.GROUP, api.VERSION, api.API_VERSION) == (
        "loraplane.dev",
        "v1alpha1",
        "loraplane.dev/v1alpha1",
    )
    assert (api.BASE_MODEL_KIND, api.BASE_MODEL_PLURAL, api.BASE_MODEL_SINGULAR) == (
        "BaseModelDeployment",
        "basemodeldeployments",
        "basemodeldeployment",
    )
    assert (api.ADAPTER_KIND, api.ADAPTER_PLURAL, api.ADAPTER_SINGULAR) == (
        "LoRAAdapter",
        "loraadapters",
        "loraadapter",
    )
    assert (api.BASE_MODEL_SHORT_NAME, api.ADAPTER_SHORT_NAME) == ("bmd", "lora")


# --- the API server's defaulting, as apiextensions-apiserver implements it ------------------
def apply_schema_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """Port of k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting.Default."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, prop in props.items():
            if "default" in prop and key not in value:
                value[key] = copy.deepcopy(prop["default"])
        for key, item in value.items():
            if key in props:
                apply_schema_defaults(item, props[key])
            elif isinstance(schema.get("additionalProperties"), Mapping):
                apply_schema_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_schema_defaults(item, schema["items"])
    return value


SPARSE_SPECS: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (api.BaseModelDeploymentSpec, {"model": {"source": {"path": "/m"}}}),
    (
        api.BaseModelDeploymentSpec,
        {
            "model": {"source": {"huggingface": {"repo": "o/n"}}},
            "lora": {"maxLoras": 2},
            "engine": {"tensorParallelSize": 2},
            "template": {"labels": {"a": "b"}},
            "adapterStore": {"emptyDir": {}},
        },
    ),
    (
        api.BaseModelDeploymentSpec,
        {
            "model": {"source": {"path": "/m"}},
            "adapterStore": {"persistentVolumeClaim": {"claimName": "c"}},
        },
    ),
    (api.LoRAAdapterSpec, {"baseModel": "b", "source": {"huggingface": {"repo": "o/n"}}}),
]


@pytest.mark.parametrize(("model", "sparse"), SPARSE_SPECS)
def test_crd_defaults_agree_with_model_defaults(
    model: type[api.K8sModel], sparse: dict[str, Any]
) -> None:
    """What the API server stores for a sparse object is what the model fills in."""
    server_side = apply_schema_defaults(copy.deepcopy(sparse), crd.openapi_schema(model))
    assert server_side == model.from_k8s(sparse).to_k8s()

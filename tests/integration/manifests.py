"""Manifests the integration tests apply: what a user would write for the tiny CPU model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

API_VERSION = "loraplane.dev/v1alpha1"


def tiny_base_model(name: str, models_dir: Path, replicas: int = 1, **lora: Any) -> dict[str, Any]:
    """A BaseModelDeployment of the tiny Llama, mounted from the node's model directory."""
    return {
        "apiVersion": API_VERSION,
        "kind": "BaseModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "model": {
                "source": {"path": "/models/tiny-llama"},
                "dtype": "bfloat16",
                "maxModelLen": 512,
            },
            "lora": {"maxLoras": 2, "maxCpuLoras": 4, "maxLoraRank": 16, **lora},
            "engine": {
                "extraArgs": ["--max-num-seqs", "8"],
                "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}],
                "startupTimeoutSeconds": 600,
            },
            "template": {
                "volumes": [
                    {"name": "models", "hostPath": {"path": str(models_dir), "type": "Directory"}}
                ],
                "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
            },
            "adapterStore": {"emptyDir": {"sizeLimit": "1Gi"}},
        },
    }


def lora_adapter(name: str, base_model: str, path: str, priority: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LoRAAdapter",
        "metadata": {"name": name},
        "spec": {"baseModel": base_model, "source": {"path": path}, "priority": priority},
    }

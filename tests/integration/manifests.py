"""Manifests the integration tests apply: what a user would write for the tiny CPU model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

API_VERSION = "loraplane.dev/v1alpha1"


ADAPTER_SOURCES = "/adapter-sources"
# Where a base model mounts the CA of the source servers the tests run (operator setting
# LORAPLANE_SOURCE_CA_FILE).
SOURCE_CA_DIR = "/etc/loraplane-test-ca"
SOURCE_CA_FILE = f"{SOURCE_CA_DIR}/ca.crt"


def tiny_base_model(name: str, home: Path, replicas: int = 1, **lora: Any) -> dict[str, Any]:
    """A BaseModelDeployment of the tiny Llama; the model and the test adapters are mounted from
    the node ($LORAPLANE_HOME/models and /adapters), as a cluster would mount a shared volume."""
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
                    {"name": "models", "hostPath": {"path": str(home / "models")}},
                    {"name": "adapter-sources", "hostPath": {"path": str(home / "adapters")}},
                ],
                "volumeMounts": [
                    {"name": "models", "mountPath": "/models", "readOnly": True},
                    {"name": "adapter-sources", "mountPath": ADAPTER_SOURCES, "readOnly": True},
                ],
            },
            "adapterStore": {"emptyDir": {"sizeLimit": "1Gi"}},
        },
    }


def lora_adapter(name: str, base_model: str, path: str, priority: int = 0) -> dict[str, Any]:
    """A LoRAAdapter from a path inside the pods (see ADAPTER_SOURCES for the test adapters)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "LoRAAdapter",
        "metadata": {"name": name},
        "spec": {"baseModel": base_model, "source": {"path": path}, "priority": priority},
    }

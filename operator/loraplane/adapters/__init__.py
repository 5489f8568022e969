"""Adapter inspection (config + safetensors header), pre-flight validation and sources."""

from loraplane.adapters.inspect import (
    AdapterConfigMissing,
    AdapterInspectionError,
    CorruptSafetensors,
    Inspection,
    InvalidAdapterConfig,
    ModuleWeights,
    NoTensors,
    inspect_adapter,
)
from loraplane.adapters.validate import (
    BaseModelFacts,
    Finding,
    ModuleShape,
    llama_base_facts,
    validate,
)

__all__ = [
    "AdapterConfigMissing",
    "AdapterInspectionError",
    "BaseModelFacts",
    "CorruptSafetensors",
    "Finding",
    "Inspection",
    "InvalidAdapterConfig",
    "ModuleShape",
    "ModuleWeights",
    "NoTensors",
    "inspect_adapter",
    "llama_base_facts",
    "validate",
]

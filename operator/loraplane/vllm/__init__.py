"""Async client for one vLLM server and the classification of its errors."""

from loraplane.vllm.client import LoadOutcome, ModelCard, ModelList, UnloadOutcome, VLLMClient
from loraplane.vllm.errors import (
    AdapterNameConflict,
    AdapterNotLoaded,
    AdapterRejected,
    AlreadyLoaded,
    InvalidRequest,
    Reason,
    RuntimeLoRAUpdatingDisabled,
    TransientVLLMError,
    Unauthorized,
    VLLMError,
    VLLMServerError,
    classify,
)

__all__ = [
    "AdapterNameConflict",
    "AdapterNotLoaded",
    "AdapterRejected",
    "AlreadyLoaded",
    "InvalidRequest",
    "LoadOutcome",
    "ModelCard",
    "ModelList",
    "Reason",
    "RuntimeLoRAUpdatingDisabled",
    "TransientVLLMError",
    "Unauthorized",
    "UnloadOutcome",
    "VLLMClient",
    "VLLMError",
    "VLLMServerError",
    "classify",
]

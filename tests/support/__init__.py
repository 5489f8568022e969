"""Test fixtures that are real things: a tiny model, peft adapters, a CPU vLLM server."""

from .adapters import ensure_adapter, ensure_adapters, ensure_many_adapters
from .cache import loraplane_home
from .tinymodel import ensure_tiny_model
from .vllm_server import (
    CPU_VLLM_ARGS,
    CPU_VLLM_ENV,
    DEFAULT_LORA_ARGS,
    RUNTIME_LORA_ENV,
    VllmServer,
    running_vllm,
    start_vllm,
)

__all__ = [
    "CPU_VLLM_ARGS",
    "CPU_VLLM_ENV",
    "DEFAULT_LORA_ARGS",
    "RUNTIME_LORA_ENV",
    "VllmServer",
    "ensure_adapter",
    "ensure_adapters",
    "ensure_many_adapters",
    "ensure_tiny_model",
    "loraplane_home",
    "running_vllm",
    "start_vllm",
]

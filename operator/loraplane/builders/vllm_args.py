"""vLLM command-line arguments from a BaseModelDeployment spec, and the checks on extra args.

Flags that vLLM removed, or that would break runtime LoRA management, are refused here so that a
spec mistake becomes a Degraded condition instead of a crash-looping pod.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from loraplane.api import BaseModelDeploymentSpec

MODEL_MOUNT_CACHE = "/cache/huggingface"

# flag -> why it is refused (shown to the user verbatim).
REMOVED_FLAGS: dict[str, str] = {
    "--lora-extra-vocab-size": "was removed in vLLM 0.12; drop it",
    "--long-lora-scaling-factors": "was removed in vLLM 0.10; drop it",
    "--enable-lora-bias": "was removed in vLLM 0.11.1 (adapters with bias are not supported)",
}
# Flags the operator sets from the spec: a second copy in extraArgs would be ambiguous.
OWNED_FLAGS: dict[str, str] = {
    "--model": "set spec.model.source instead",
    "--served-model-name": "set spec.model.servedName instead",
    "--enable-lora": "LoRA is always enabled by loraplane",
    "--max-loras": "set spec.lora.maxLoras instead",
    "--max-cpu-loras": "set spec.lora.maxCpuLoras instead",
    "--max-lora-rank": "set spec.lora.maxLoraRank instead",
    "--lora-dtype": "set spec.lora.loraDtype instead",
    "--fully-sharded-loras": "set spec.lora.fullyShardedLoras instead",
    "--tensor-parallel-size": "set spec.engine.tensorParallelSize instead",
    "-tp": "set spec.engine.tensorParallelSize instead",
    "--port": "the port is fixed at 8000",
    "--host": "the server must listen on the pod IP",
    "--api-key": "set spec.engine.apiKeySecretRef instead (a key in args leaks into the pod spec)",
    "--lora-modules": "static adapters are lost on re-registration; create LoRAAdapter objects",
}


class ArgsError(ValueError):
    """An extraArgs entry loraplane refuses; the message says what to do instead."""


@dataclass(frozen=True)
class Flag:
    name: str
    value: str | None


def _value(x: Any) -> str:
    return str(x.value) if isinstance(x, Enum) else str(x)


def parse_flags(args: Sequence[str]) -> list[Flag]:
    """Split `--flag value` / `--flag=value` / `--switch` into flags (positional values kept)."""
    flags: list[Flag] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            if "=" in arg:
                name, value = arg.split("=", 1)
                flags.append(Flag(name, value))
            elif i + 1 < len(args) and not args[i + 1].startswith("-"):
                flags.append(Flag(arg, args[i + 1]))
                i += 1
            else:
                flags.append(Flag(arg, None))
        i += 1
    return flags


def check_extra_args(extra_args: Sequence[str]) -> list[str]:
    """Every problem with `extraArgs`, as messages a user can act on (empty when fine)."""
    problems: list[str] = []
    for flag in parse_flags(extra_args):
        name = flag.name.replace("_", "-")
        if name in REMOVED_FLAGS:
            problems.append(f"extraArgs {flag.name} {REMOVED_FLAGS[name]}")
        elif name in OWNED_FLAGS:
            problems.append(f"extraArgs {flag.name} is managed by loraplane: {OWNED_FLAGS[name]}")
        elif name in ("--api-server-count", "-asc"):
            try:
                count = int(flag.value or "1")
            except ValueError:
                count = 0
            if count != 1:
                problems.append(
                    f"extraArgs {flag.name} {flag.value}: runtime LoRA loading needs exactly one "
                    "API server (vLLM refuses VLLM_ALLOW_RUNTIME_LORA_UPDATING with more); "
                    "drop the flag or set it to 1"
                )
    return problems


def _has_flag(extra_args: Sequence[str], *names: str) -> bool:
    return any(f.name in names for f in parse_flags(extra_args))


def model_reference(spec: BaseModelDeploymentSpec) -> str:
    source = spec.model.source
    if source.path is not None:
        return source.path
    assert source.huggingface is not None  # the schema guarantees exactly one source
    return source.huggingface.repo


def model_flags(spec: BaseModelDeploymentSpec) -> list[str]:
    """How vLLM holds the model (dtype, context, tensor parallelism), merged or not."""
    args: list[str] = []
    if _value(spec.model.dtype) != "auto":
        args += ["--dtype", _value(spec.model.dtype)]
    if spec.model.max_model_len is not None:
        args += ["--max-model-len", str(spec.model.max_model_len)]
    if spec.engine.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(spec.engine.tensor_parallel_size)]
    return args


def vllm_args(spec: BaseModelDeploymentSpec, served_name: str, port: int) -> list[str]:
    """The full argument list of the vLLM container. Raises ArgsError for refused extraArgs."""
    problems = check_extra_args(spec.engine.extra_args)
    if problems:
        raise ArgsError("; ".join(problems))
    lora = spec.lora
    args = [
        "--model",
        model_reference(spec),
        "--served-model-name",
        served_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(lora.max_loras),
        "--max-lora-rank",
        str(lora.max_lora_rank),
    ]
    hf = spec.model.source.huggingface
    if hf is not None and hf.revision:
        args += ["--revision", hf.revision]
    if lora.max_cpu_loras is not None:
        args += ["--max-cpu-loras", str(lora.max_cpu_loras)]
    if _value(lora.lora_dtype) != "auto":
        args += ["--lora-dtype", _value(lora.lora_dtype)]
    if lora.fully_sharded_loras:
        args.append("--fully-sharded-loras")
    if spec.model.quantization is not None:
        args += ["--quantization", _value(spec.model.quantization)]
    args += model_flags(spec)
    extra = list(spec.engine.extra_args)
    # With data parallelism vLLM defaults to one API server per rank, which runtime LoRA forbids.
    if _has_flag(extra, "--data-parallel-size", "-dp") and not _has_flag(
        extra, "--api-server-count", "-asc"
    ):
        args += ["--api-server-count", "1"]
    return args + extra

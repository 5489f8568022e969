"""Merge a LoRA adapter into its base checkpoint: W = W0 + scaling * B A, tensor by tensor.

The base safetensors files are streamed: each output file's header is written first from the
input headers (shapes and dtypes are known without reading a weight), then each tensor is read,
merged if the adapter adapts it, written, and dropped. Peak memory is about the largest tensor
plus the adapter, whatever the model's size (measured in docs/merge.md).

The arithmetic is peft's `merge_and_unload` on CPU, which tests compare against bit for bit:
the delta is computed in float32 as `(B @ A) * scaling` (embeddings: `(B @ A).T * scaling`),
added to the base weight in float32, and rounded once to the output dtype.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplane.adapters.inspect import Inspection, inspect_adapter, parse_tensor_name

if TYPE_CHECKING:
    import torch

INDEX_FILE = "model.safetensors.index.json"
# Weight files the merge replaces; every other file of the base (config, tokenizer, generation
# config, chat template) is copied as it is.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# safetensors dtype names of the floating types a merge may write.
FLOAT_DTYPES = ("F16", "BF16", "F32")
# spec.model.dtype -> the safetensors dtype the merged weights are written in (auto: the base's).
OUTPUT_DTYPES = {
    "half": "F16",
    "float16": "F16",
    "bfloat16": "BF16",
    "float": "F32",
    "float32": "F32",
}
_ALIGN = 8  # safetensors pads its header so tensor data starts 8-byte aligned


class MergeError(Exception):
    """The merge cannot be done; `reason` names why for the operator's condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class LoRAPair:
    """One adapted module: its matrices and scale, as peft's LoraLayer would hold them."""

    a: torch.Tensor
    b: torch.Tensor
    scaling: float
    embedding: bool

    def delta(self) -> torch.Tensor:
        product = self.b.float() @ self.a.float()
        return (product.T if self.embedding else product) * self.scaling


@dataclass
class MergeReport:
    """What one merge did: for status, logs and the cost measured in docs/merge.md."""

    merged_modules: int = 0
    tensors: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    files: list[str] = field(default_factory=list)


def _pattern_value(patterns: dict[str, Any], module: str) -> Any:
    """peft's get_pattern_key: the first pattern that matches the module name's tail."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return value
    return None


def scaling(summary: Inspection, module: str) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA), with rank_pattern and alpha_pattern applied."""
    rank = _pattern_value(summary.rank_pattern, module) or summary.rank
    alpha = _pattern_value(summary.alpha_pattern, module) or summary.alpha
    return float(alpha) / (math.sqrt(rank) if summary.use_rslora else rank)


def base_weight_name(module: str) -> str:
    """peft's module name (without base_model.model.) is the base checkpoint's, plus .weight."""
    return f"{module}.weight"


def load_pairs(adapter_dir: Path) -> tuple[Inspection, dict[str, LoRAPair]]:
    """The adapter's LoRA pairs by the base weight they change (adapters are small: read whole)."""
    from safetensors import safe_open

    summary = inspect_adapter(adapter_dir, digest=False)
    if summary.weights_file is None or not summary.weights_file.endswith(".safetensors"):
        raise MergeError(
            "MergeUnsupported",
            f"the adapter's weights are {summary.weights_file}: the merge reads safetensors only",
        )
    found: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(adapter_dir / summary.weights_file), "pt") as weights:
        for name in weights.keys():  # noqa: SIM118  (safe_open is not a mapping)
            module, role, _ = parse_tensor_name(name)
            if role in ("lora_A", "lora_embedding_A"):
                found.setdefault(module, {})["a"] = weights.get_tensor(name)
            elif role in ("lora_B", "lora_embedding_B"):
                found.setdefault(module, {})["b"] = weights.get_tensor(name)
    pairs: dict[str, LoRAPair] = {}
    for module, mats in sorted(found.items()):
        if "a" not in mats or "b" not in mats:
            raise MergeError("MergeShapeMismatch", f"{module} has only one of lora_A and lora_B")
        embedding = summary.modules[module].embedding if module in summary.modules else False
        pairs[base_weight_name(module)] = LoRAPair(
            mats["a"], mats["b"], scaling(summary, module), embedding
        )
    if not pairs:
        raise MergeError("MergeUnsupported", "the adapter has no LoRA matrices to merge")
    return summary, pairs


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str] | None, int]:
    """(tensors in file order, __metadata__, where the data starts) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    metadata = header.pop("__metadata__", None)
    ordered = dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))
    return ordered, metadata, 8 + size


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}.get(dtype, 1)


def _out_header(
    tensors: dict[str, dict[str, Any]], metadata: dict[str, str] | None, dtype: str | None
) -> tuple[bytes, dict[str, str]]:
    """The output file's header, and each tensor's output dtype."""
    out: dict[str, Any] = {}
    dtypes: dict[str, str] = {}
    offset = 0
    for name, info in tensors.items():
        kind = dtype if dtype is not None and info["dtype"] in FLOAT_DTYPES else info["dtype"]
        size = math.prod(info["shape"]) * _itemsize(kind)
        out[name] = {"dtype": kind, "shape": info["shape"], "data_offsets": [offset, offset + size]}
        dtypes[name] = kind
        offset += size
    if metadata is not None:
        out["__metadata__"] = metadata
    raw = json.dumps(out, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw, dtypes


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[name]


def merge_file(
    src: Path, dst: Path, pairs: dict[str, LoRAPair], dtype: str | None, report: MergeReport
) -> set[str]:
    """Stream one safetensors file into `dst`, merging what `pairs` adapts; returns the names
    it merged."""
    from safetensors import safe_open

    tensors, metadata, _ = read_header(src)
    header, dtypes = _out_header(tensors, metadata, dtype)
    merged: set[str] = set()
    with safe_open(str(src), "pt") as weights, open(dst, "wb") as out:
        out.write(header)
        for name in tensors:
            tensor = weights.get_tensor(name)
            report.bytes_read += tensor.numel() * tensor.element_size()
            pair = pairs.get(name)
            if pair is not None:
                delta = pair.delta()
                if delta.shape != tensor.shape:
                    raise MergeError(
                        "MergeShapeMismatch",
                        f"{name}: the adapter's delta is {list(delta.shape)}, the base weight "
                        f"{list(tensor.shape)}: the adapter was trained on another base model",
                    )
                tensor = tensor.float() + delta
                merged.add(name)
            if dtypes[name] in FLOAT_DTYPES:
                tensor = tensor.to(_torch_dtype(dtypes[name]))
            data = tensor.contiguous().reshape(-1).view(_uint8()).numpy()
            out.write(memoryview(data))
            report.bytes_written += data.nbytes
            report.tensors += 1
            del tensor, data
        out.flush()
        os.fsync(out.fileno())
    return merged


def _uint8() -> torch.dtype:
    import torch

    return torch.uint8


def weight_files(base_dir: Path) -> list[str]:
    """The base checkpoint's safetensors files, in the index's order when it has one."""
    index = base_dir / INDEX_FILE
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    files = sorted(p.name for p in base_dir.glob("*.safetensors"))
    if not files:
        raise MergeError(
            "MergeUnsupported",
            f"{base_dir} has no safetensors weights: the merge reads safetensors checkpoints only",
        )
    return files


def _other_files(base_dir: Path) -> Iterator[Path]:
    for path in sorted(base_dir.iterdir()):
        if (
            path.is_file()
            and not path.name.startswith(".")
            and not path.name.endswith(WEIGHT_SUFFIXES)
            and path.name != INDEX_FILE
        ):
            yield path


def merge_checkpoint(
    base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str | None = None
) -> MergeReport:
    """Write the merged model into `out_dir` (which must be empty or absent): every non-weight
    file of the base copied, every safetensors file streamed through the merge. `dtype`: the
    safetensors dtype of the merged float tensors (None: each tensor keeps the base's)."""
    _, pairs = load_pairs(adapter_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = MergeReport()
    merged: set[str] = set()
    for name in weight_files(base_dir):
        merged |= merge_file(base_dir / name, out_dir / name, pairs, dtype, report)
        report.files.append(name)
    missing = sorted(set(pairs) - merged)
    if missing:
        raise MergeError(
            "MergeShapeMismatch",
            f"the base model has no weight {', '.join(missing[:3])}"
            + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
            + ": the adapter was trained on another base model",
        )
    for path in _other_files(base_dir):
        (out_dir / path.name).write_bytes(path.read_bytes())
    index = base_dir / INDEX_FILE
    if index.is_file():
        data = json.loads(index.read_text())
        # The sizes change with the dtype; the weight map does not.
        data.setdefault("metadata", {})["total_size"] = report.bytes_written
        (out_dir / INDEX_FILE).write_text(json.dumps(data, indent=2) + "\n")
    report.merged_modules = len(merged)
    return report

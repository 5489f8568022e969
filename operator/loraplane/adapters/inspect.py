"""Read an adapter's adapter_config.json and safetensors header, never its weights.

A safetensors file is 8 bytes of little-endian header length N, N bytes of JSON
(``name -> {dtype, shape, data_offsets}``), then the raw tensor data. Reading the header is enough
to know every tensor name and shape, so inspection costs the same for a 1 MB and a 1 GB adapter
(the digest aside, which streams each file once in 1 MiB chunks).

An adapter without safetensors but with a torch pickle (adapter_model.bin or .pt, which vLLM
loads too) is read the same way: its pickled state dict is parsed without being executed and
without its storages (``loraplane.adapters.pickled``), so it gets the same pre-flight.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraplane.adapters.pickled import REUPLOAD_HINT, PickleRefused, read_torch_save
from loraplane.vllm.errors import Reason

__all__ = [
    "CONFIG_FILE",
    "MAX_HEADER_BYTES",
    "AdapterConfigMissing",
    "AdapterInspectionError",
    "CorruptSafetensors",
    "Inspection",
    "InvalidAdapterConfig",
    "ModuleWeights",
    "NoTensors",
    "PickleNotInspectable",
    "TensorInfo",
    "directory_digest",
    "inspect_adapter",
    "parse_config",
    "parse_tensor_name",
    "read_safetensors_header",
    "summarize",
]

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
# vLLM falls back to these torch pickles, in this order (read by loraplane.adapters.pickled).
PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt")
# The safetensors library refuses headers above 100 MB; an adapter's is a few hundred KB at most.
MAX_HEADER_BYTES = 100_000_000
MAX_CONFIG_BYTES = 10_000_000
_CHUNK = 1 << 20

_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F4": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


class AdapterInspectionError(Exception):
    """The adapter cannot be inspected; ``reason`` is from the shared vocabulary."""

    reason: Reason = Reason.ADAPTER_REJECTED
    # What the user can do, added to every message of the class that does not say it already.
    hint: str = ""

    def __init__(self, message: str) -> None:
        if self.hint and self.hint not in message:
            message = f"{message}; {self.hint}"
        super().__init__(message)
        self.message = message


class AdapterConfigMissing(AdapterInspectionError):
    reason = Reason.ADAPTER_NOT_FOUND


class InvalidAdapterConfig(AdapterInspectionError):
    reason = Reason.INVALID_ADAPTER_CONFIG
    hint = "fix adapter_config.json or save the adapter again with peft's save_pretrained"


class CorruptSafetensors(AdapterInspectionError):
    reason = Reason.CORRUPT_WEIGHTS
    hint = REUPLOAD_HINT


class NoTensors(AdapterInspectionError):
    reason = Reason.NO_TENSORS
    hint = "save the adapter again with peft's save_pretrained"


class PickleNotInspectable(AdapterInspectionError):
    """A pickled weights file pre-flight refuses: code inside (``UnsafePickle``), damaged
    (``CorruptWeights``), or a format or size it does not read (``UnsupportedWeightsFormat``).
    The message says which and what to do."""

    def __init__(self, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


class TensorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    dtype: str
    shape: tuple[int, ...]


TensorRole = Literal[
    "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "base_embedding", "other"
]
# peft's default save (save_embedding_layers="auto") writes the base layer's whole weight beside the
# LoRA of embed_tokens or lm_head; vLLM skips exactly these names (is_base_embedding_weights).
_BASE_EMBEDDING_SUFFIXES = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")


class ModuleWeights(BaseModel):
    """The tensors of one module of the base model, e.g. ``model.layers.0.self_attn.q_proj``.

    For a linear module ``lora_a`` is ``[r, in_features]`` and ``lora_b`` ``[out_features, r]``;
    for an embedding ``lora_a`` is ``[r, vocab]`` and ``lora_b`` ``[hidden, r]`` (PEFT's layout).
    ``other`` holds any other tensor of the module (full weights of modules_to_save, biases,
    DoRA magnitudes) by its last name components.
    """

    model_config = ConfigDict(frozen=True)

    lora_a: tuple[int, ...] | None = None
    lora_b: tuple[int, ...] | None = None
    embedding: bool = False
    other: dict[str, tuple[int, ...]] = Field(default_factory=dict)

    @property
    def rank(self) -> int | None:
        if self.lora_a is not None and self.lora_a:
            return self.lora_a[0]
        if self.lora_b is not None and self.lora_b:
            return self.lora_b[-1]
        return None

    @property
    def in_features(self) -> int | None:
        return self.lora_a[-1] if self.lora_a else None

    @property
    def out_features(self) -> int | None:
        return self.lora_b[0] if self.lora_b else None


class Inspection(BaseModel):
    """What an adapter is, read from its config and its safetensors header."""

    model_config = ConfigDict(frozen=True)

    path: str
    peft_type: str | None = None
    task_type: str | None = None
    rank: int
    alpha: float
    target_modules: list[str] | str | None = None
    rank_pattern: dict[str, int] = Field(default_factory=dict)
    alpha_pattern: dict[str, float] = Field(default_factory=dict)
    use_dora: bool = False
    use_rslora: bool = False
    bias: str = "none"
    lora_bias: bool = False
    modules_to_save: list[str] | None = None
    base_model_name_or_path: str | None = None
    init_lora_weights: bool | str = True
    # Other PEFT features vLLM refuses, by config key, when set (aLoRA, layer_replication, ...).
    unsupported_features: dict[str, Any] = Field(default_factory=dict)
    weights_file: str | None = None
    # False when the tensors were not read: a hub adapter whose weights are a pickle, which the
    # operator's remote pre-flight does not download (the agents read it after the download).
    weights_inspected: bool = True
    tensors: dict[str, TensorInfo] = Field(default_factory=dict)
    modules: dict[str, ModuleWeights] = Field(default_factory=dict)
    unparsed_tensors: list[str] = Field(default_factory=list)
    size_bytes: int
    digest: str
    files: list[str] = Field(default_factory=list)

    @property
    def max_rank(self) -> int:
        """The largest rank of any module: r, every rank_pattern value and the tensors' own."""
        ranks = [self.rank, *self.rank_pattern.values()]
        ranks += [m.rank for m in self.modules.values() if m.rank is not None]
        return max(ranks)

    @property
    def module_suffixes(self) -> set[str]:
        """Last name component of every module with LoRA weights (q_proj, embed_tokens, ...)."""
        return {
            name.rsplit(".", 1)[-1]
            for name, m in self.modules.items()
            if m.lora_a is not None or m.lora_b is not None
        }

    @property
    def digest_hex(self) -> str:
        return self.digest.removeprefix("sha256:")


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def parse_tensor_name(name: str) -> tuple[str, TensorRole, str]:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` ->
    (``model.layers.0.self_attn.q_proj``, ``lora_A``, ``weight``).

    The same split vLLM's ``parse_fine_tuned_lora_name`` does, plus a role for everything vLLM
    would refuse (``other``: the module is the name without its last component) and for the
    base embedding weights vLLM skips (``base_embedding``).
    """
    if name.endswith(_BASE_EMBEDDING_SUFFIXES):
        module = name.removeprefix("base_model.model.").removesuffix(".base_layer.weight")
        return module, "base_embedding", "base_layer.weight"
    stem = name.removeprefix("base_model.model.")
    parts = stem.split(".")
    if len(parts) >= 3 and parts[-2] in ("lora_A", "lora_B"):
        if parts[-1] != "weight":
            # lora_B.bias (PEFT's lora_bias): not a LoRA matrix.
            return ".".join(parts[:-2]), "other", ".".join(parts[-2:])
        role: TensorRole = "lora_A" if parts[-2] == "lora_A" else "lora_B"
        return ".".join(parts[:-2]), role, parts[-1]
    if len(parts) >= 2 and parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        role = "lora_embedding_A" if parts[-1] == "lora_embedding_A" else "lora_embedding_B"
        return ".".join(parts[:-1]), role, ""
    # DoRA magnitudes are saved as `<module>.lora_magnitude_vector[.weight]`.
    if "lora_magnitude_vector" in parts:
        i = parts.index("lora_magnitude_vector")
        return ".".join(parts[:i]), "other", ".".join(parts[i:])
    if len(parts) >= 2:
        return ".".join(parts[:-1]), "other", parts[-1]
    return stem, "other", ""


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name -> dtype and shape, from the header only; checks that the data is all there."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CorruptSafetensors(
                    f"{path.name} is {size} bytes long: too short for a safetensors header"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise CorruptSafetensors(
                    f"{path.name} declares a {header_len}-byte header in a {size}-byte file: "
                    "the file is truncated or not safetensors"
                )
            raw = f.read(header_len)
    except OSError as e:
        raise CorruptSafetensors(f"cannot read {path.name}: {e.strerror or e}") from e
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptSafetensors(f"{path.name} has an unreadable header: {e}") from e
    if not isinstance(header, dict):
        raise CorruptSafetensors(f"{path.name} has a header that is not a JSON object")

    data_len = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    end_max = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptSafetensors(f"{path.name}: malformed header entry for {name!r}") from e
        if any(d < 0 for d in shape) or not 0 <= start <= end:
            raise CorruptSafetensors(f"{path.name}: invalid shape or offsets for {name!r}")
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and dtype != "F4" and (end - start) != math.prod(shape) * width:
            raise CorruptSafetensors(
                f"{path.name}: {name!r} is {dtype}{list(shape)} but spans {end - start} bytes"
            )
        end_max = max(end_max, end)
        tensors[name] = TensorInfo(dtype=dtype, shape=shape)
    if end_max > data_len:
        raise CorruptSafetensors(
            f"{path.name} is truncated: its header declares {end_max} bytes of tensor data, "
            f"the file holds {data_len}"
        )
    return tensors


def parse_config(text: str | bytes) -> dict[str, Any]:
    """Parse adapter_config.json; ``InvalidAdapterConfig`` when it is not a JSON object."""
    try:
        config = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidAdapterConfig(f"{CONFIG_FILE} is not readable JSON: {e}") from e
    if not isinstance(config, dict):
        raise InvalidAdapterConfig(f"{CONFIG_FILE} is not a JSON object")
    return config


def _load_config(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG_FILE
    if directory.exists() and not directory.is_dir():
        # Pointing at one of the adapter's files instead of its directory is an easy slip.
        hint = (
            f"; did you mean its directory {directory.parent}?"
            if (directory.parent / CONFIG_FILE).is_file()
            else f": give the directory that holds {CONFIG_FILE}"
        )
        raise AdapterConfigMissing(f"{directory} is a file, not an adapter directory{hint}")
    if not directory.is_dir():
        raise AdapterConfigMissing(
            f"adapter directory {directory} does not exist: check spec.source, and that the "
            "pods of the base model mount the volume that holds it"
        )
    if not config_path.is_file():
        raise AdapterConfigMissing(
            f"{CONFIG_FILE} is missing in {directory}: not a PEFT adapter directory; point "
            f"spec.source at the directory peft's save_pretrained wrote ({CONFIG_FILE} and the "
            "weights)"
        )
    try:
        if config_path.stat().st_size > MAX_CONFIG_BYTES:
            raise InvalidAdapterConfig(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes")
        text = config_path.read_bytes()
    except OSError as e:
        raise InvalidAdapterConfig(f"{CONFIG_FILE} is not readable: {e.strerror or e}") from e
    return parse_config(text)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidAdapterConfig(
            f"{CONFIG_FILE}: {key} must be a positive integer, got {value!r}"
        )
    return value


# PEFT settings vLLM refuses besides DoRA, bias and modules_to_save (vllm/lora/peft_helper.py),
# each with the value that means "not used".
_UNSUPPORTED_FEATURES: dict[str, Any] = {
    "layer_replication": None,
    "alora_invocation_tokens": None,
    "use_bdlora": None,
    "use_qalora": False,
}
# vLLM's PEFTHelper has no default for these keys and refuses a config without one of them.
_REQUIRED_KEYS = ("r", "lora_alpha", "target_modules")
# init_lora_weights values that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, ...).
_SUPPORTED_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


def _summary_fields(config: dict[str, Any]) -> dict[str, Any]:
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        raise InvalidAdapterConfig(
            f"{CONFIG_FILE} has no {', '.join(missing)}: vLLM requires r, lora_alpha and "
            "target_modules (peft's save_pretrained writes them all)"
        )
    rank = _positive_int("r", config["r"])
    rank_pattern_raw = config.get("rank_pattern") or {}
    alpha_pattern_raw = config.get("alpha_pattern") or {}
    if not isinstance(rank_pattern_raw, dict) or not isinstance(alpha_pattern_raw, dict):
        raise InvalidAdapterConfig(f"{CONFIG_FILE}: rank_pattern and alpha_pattern must be maps")
    rank_pattern = {
        str(k): _positive_int(f"rank_pattern[{k!r}]", v) for k, v in rank_pattern_raw.items()
    }
    try:
        alpha = float(config["lora_alpha"])
        alpha_pattern = {str(k): float(v) for k, v in alpha_pattern_raw.items()}
    except (TypeError, ValueError) as e:
        raise InvalidAdapterConfig(f"{CONFIG_FILE}: lora_alpha must be a number: {e}") from e
    target = config.get("target_modules")
    if isinstance(target, list):
        target = [str(t) for t in target]
    elif target is not None and not isinstance(target, str):
        raise InvalidAdapterConfig(f"{CONFIG_FILE}: target_modules must be a list or a string")
    modules_to_save = config.get("modules_to_save")
    if modules_to_save is not None:
        if not isinstance(modules_to_save, list):
            raise InvalidAdapterConfig(f"{CONFIG_FILE}: modules_to_save must be a list")
        modules_to_save = [str(m) for m in modules_to_save]
    init = config.get("init_lora_weights", True)
    if not isinstance(init, bool | str):
        init = True
    unsupported = {
        key: config[key]
        for key, unset in _UNSUPPORTED_FEATURES.items()
        if config.get(key, unset) not in (unset, None, False, [], {})
    }
    if isinstance(init, str) and init.lower() not in _SUPPORTED_INITS:
        unsupported["init_lora_weights"] = init
    bias = config.get("bias") or "none"
    return {
        "peft_type": _opt_str(config.get("peft_type")),
        "task_type": _opt_str(config.get("task_type")),
        "rank": rank,
        "alpha": alpha,
        "target_modules": target,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_dora": bool(config.get("use_dora", False)),
        "use_rslora": bool(config.get("use_rslora", False)),
        "bias": str(bias),
        "lora_bias": bool(config.get("lora_bias", False)),
        "modules_to_save": modules_to_save or None,
        "base_model_name_or_path": _opt_str(config.get("base_model_name_or_path")),
        "init_lora_weights": init,
        "unsupported_features": unsupported,
    }


def _opt_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _group_modules(tensors: dict[str, TensorInfo]) -> tuple[dict[str, ModuleWeights], list[str]]:
    grouped: dict[str, dict[str, Any]] = {}
    unparsed: list[str] = []
    for name, info in sorted(tensors.items()):
        module, role, rest = parse_tensor_name(name)
        if role == "base_embedding":
            continue  # vLLM never reads it, so nothing about it can make vLLM refuse
        if not module:
            unparsed.append(name)
            continue
        entry = grouped.setdefault(module, {"other": {}})
        if role in ("lora_A", "lora_embedding_A"):
            entry["lora_a"] = info.shape
        elif role in ("lora_B", "lora_embedding_B"):
            entry["lora_b"] = info.shape
        else:
            entry["other"][rest] = info.shape
        if role.startswith("lora_embedding"):
            entry["embedding"] = True
    return {k: ModuleWeights(**v) for k, v in grouped.items()}, unparsed


def _adapter_files(directory: Path) -> list[str]:
    """Relative paths of the regular files that make up the adapter, in a stable order.

    Hidden files and directories (``.cache/`` of huggingface_hub, our own markers) are not part
    of the adapter.
    """
    files: list[str] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            full = Path(root) / name
            if full.is_file():
                files.append(full.relative_to(directory).as_posix())
    return sorted(files)


def directory_digest(directory: Path, files: list[str] | None = None) -> tuple[str, int]:
    """``sha256:<hex>`` of the adapter's files, and their total size.

    The digest is the sha256 of ``sha256sum``'s output for the files sorted by relative path
    (``"<hex>  <path>\\n"`` per file), so it is reproducible with
    ``find . -type f ! -path './.*' | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum | sha256sum``.
    A full hash rather than a cheaper one (size + mtime, or the header only): the digest names
    the immutable directory vLLM re-reads weights from, so it must change with any byte.
    """
    names = _adapter_files(directory) if files is None else files
    outer = hashlib.sha256()
    total = 0
    for rel in names:
        inner = hashlib.sha256()
        with (directory / rel).open("rb") as f:
            while chunk := f.read(_CHUNK):
                inner.update(chunk)
                total += len(chunk)
        outer.update(f"{inner.hexdigest()}  {rel}\n".encode())
    return "sha256:" + outer.hexdigest(), total


def summarize(
    config: Mapping[str, Any],
    tensors: Mapping[str, TensorInfo],
    *,
    path: str,
    weights_file: str | None,
    size_bytes: int,
    digest: str = "",
    files: list[str] | None = None,
    weights_inspected: bool = True,
) -> Inspection:
    """An Inspection from a parsed adapter_config.json and safetensors header (pure), for
    sources that are not a local directory (a hub's metadata API)."""
    fields = _summary_fields(dict(config))
    modules, unparsed = _group_modules(dict(tensors))
    return Inspection(
        path=path,
        weights_file=weights_file,
        weights_inspected=weights_inspected,
        tensors=dict(tensors),
        modules=modules,
        unparsed_tensors=unparsed,
        size_bytes=size_bytes,
        digest=digest,
        files=files or [],
        **fields,
    )


def read_pickled_weights(path: Path) -> dict[str, TensorInfo]:
    """Tensor name -> dtype and shape of a torch pickle, never executing it nor reading its
    storages; ``PickleNotInspectable`` when pre-flight refuses it."""
    try:
        tensors = read_torch_save(path)
    except PickleRefused as exc:
        raise PickleNotInspectable(exc.message, exc.reason) from exc
    return {name: TensorInfo(dtype=t.dtype, shape=t.shape) for name, t in tensors.items()}


def inspect_adapter(directory: Path | str, *, digest: bool = True) -> Inspection:
    """Summarize the PEFT LoRA adapter in ``directory`` without loading its weights.

    Raises ``AdapterConfigMissing``, ``InvalidAdapterConfig``, ``CorruptSafetensors``,
    ``PickleNotInspectable`` or ``NoTensors``. ``digest=False`` skips hashing (the digest is
    then empty) for callers that already know it.
    """
    directory = Path(directory)
    config = _load_config(directory)
    _summary_fields(config)  # a bad config is reported before the weights are looked at

    weights_file: str | None = None
    tensors: dict[str, TensorInfo] = {}
    if (directory / SAFETENSORS_FILE).is_file():
        weights_file = SAFETENSORS_FILE
        tensors = read_safetensors_header(directory / SAFETENSORS_FILE)
    else:
        # vLLM's order: adapter_model.bin, else adapter_model.pt.
        weights_file = next((f for f in PICKLE_FILES if (directory / f).is_file()), None)
        if weights_file is not None:
            tensors = read_pickled_weights(directory / weights_file)
    if weights_file is not None and not tensors:
        raise NoTensors(f"{weights_file} in {directory} holds no tensors")
    if weights_file is None:
        raise NoTensors(
            f"{directory} has {CONFIG_FILE} but no weights "
            f"({SAFETENSORS_FILE}, {' or '.join(PICKLE_FILES)})"
        )

    files = _adapter_files(directory)
    if digest:
        digest_value, size = directory_digest(directory, files)
    else:
        digest_value, size = "", sum((directory / f).stat().st_size for f in files)
    return summarize(
        config,
        tensors,
        path=str(directory),
        weights_file=weights_file,
        size_bytes=size,
        digest=digest_value,
        files=files,
    )


def layer_index(module: str) -> int | None:
    match = _LAYER.search(module + ".")
    return int(match.group(1)) if match else None

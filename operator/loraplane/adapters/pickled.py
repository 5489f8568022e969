"""Read the tensor names, dtypes and shapes of a torch.save file without unpickling it for real.

vLLM still loads ``adapter_model.bin`` and ``adapter_model.pt`` (with ``torch.load``) when an
adapter has no safetensors file, so pre-flight judges them with the same checks. torch.save (the
zip format, torch >= 1.6) writes a zip archive:

- ``<archive>/data.pkl``: a pickle of the state dict, in which every tensor is a call of
  ``torch._utils._rebuild_tensor_v2`` (or ``_v3``) on a storage, an offset, a shape and strides,
  and every storage a persistent id ``("storage", torch.FloatStorage, "<key>", "cpu", numel)``;
- ``<archive>/data/<key>``: the raw bytes of each storage; a few small records besides.

``read_torch_save`` reads data.pkl with a restricted unpickler: ``find_class`` maps the few
globals torch.save writes for a state dict to stubs of our own, and refuses any other (a pickle
that names ``os.system`` or a class of its author holds code, not only tensors); persistent ids
become storage descriptors (dtype, key, size); no storage is read. Nothing the file names is
imported or called, and torch is not needed. Then each storage is checked against its zip entry,
so a truncated or damaged file is refused like a truncated safetensors file.

Bounds: data.pkl above ``MAX_PICKLE_BYTES`` or of more than ``MAX_PICKLE_OPCODES`` opcodes is
refused (an adapter's is a few hundred KB and about 35 opcodes per tensor), and so is one that
takes longer than ``PICKLE_TIMEOUT_SECONDS`` to scan. The opcodes are scanned with
``pickletools.genops`` (which parses, never executes) before anything is unpickled: the scan
bounds the time and the objects the unpickler can build, and refuses the opcodes a state dict
never needs (sets, object construction, out-of-band buffers) and absurd memo indices.

Legacy torch pickles (torch.save before torch 1.6, or ``_use_new_zipfile_serialization=False``:
a bare sequence of pickles) are refused with ``UnsupportedWeightsFormat`` rather than parsed: no
tool of the PEFT era writes them, and their storage records cannot be bounded without reading
the whole file.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

from loraplane.vllm.errors import Reason

__all__ = [
    "MAX_PICKLE_BYTES",
    "MAX_PICKLE_OPCODES",
    "PICKLE_TIMEOUT_SECONDS",
    "CorruptPickle",
    "PickleRefused",
    "PickledAdapters",
    "PickledTensor",
    "UnsafePickle",
    "UnsupportedPickle",
    "read_torch_save",
]

# What a deployment does with pickled adapter weights (Settings.pickled_adapters, FetchRequest).
PickledAdapters = Literal["verify", "refuse"]

MAX_PICKLE_BYTES = 64 << 20
MAX_PICKLE_OPCODES = 2_000_000
PICKLE_TIMEOUT_SECONDS = 10.0
# The zip's central directory is read whole: an adapter's has one entry per tensor (~100 bytes).
MAX_DIRECTORY_BYTES = 16 << 20
# A largest dimension no tensor has; keeps every size computation small.
_MAX_DIM = 1 << 48
_MAX_NDIM = 64

SAVE_HINT = (
    "save the adapter with safetensors (peft's save_pretrained writes adapter_model.safetensors "
    "with its default safe_serialization=True)"
)
REUPLOAD_HINT = "upload the adapter's files again (a cut-off upload or download leaves such a file)"

# The first pickle of a legacy torch.save file: its magic number, 0x1950a86a20f9469cfc6c.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_ZIP_LOCAL = b"PK\x03\x04"
_ZIP_END = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_END = b"PK\x06\x06"


class PickleRefused(Exception):
    """Pre-flight refuses a pickled weights file; ``reason`` is from the shared vocabulary."""

    reason: Reason = Reason.CORRUPT_WEIGHTS

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsafePickle(PickleRefused):
    """The pickle names a global that is not part of a tensor: code or arbitrary objects."""

    reason = Reason.UNSAFE_PICKLE


class CorruptPickle(PickleRefused):
    """Truncated or damaged: not what torch.save wrote."""

    reason = Reason.CORRUPT_WEIGHTS


class UnsupportedPickle(PickleRefused):
    """A pickle pre-flight does not read: the legacy format, too large, or not a state dict."""

    reason = Reason.UNSUPPORTED_WEIGHTS_FORMAT


class PickledTensor(NamedTuple):
    dtype: str  # safetensors' names: F32, BF16, ...
    shape: tuple[int, ...]


# torch's storage classes (what a typed storage pickles as) -> dtype, and torch dtypes (what
# _rebuild_tensor_v3 takes, for the dtypes that have no typed storage) -> dtype; with widths.
_STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "DoubleStorage": "F64",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
    "ComplexDoubleStorage": "C128",
}
_TORCH_DTYPES = {
    "float32": "F32",
    "float64": "F64",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "complex64": "C64",
    "complex128": "C128",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
    "float4_e2m1fn_x2": "F4",
}
_WIDTHS = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
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
    "C128": 16,
}

# Opcodes a state dict never needs, refused by the scan: they build objects through classes
# (INST, OBJ, NEWOBJ*), reach the extension registry, take out-of-band buffers, or build sets
# (the largest empty object per opcode: a memory multiplier). BUILD stays: nn.Module.state_dict()
# is an OrderedDict with a _metadata attribute, set by BUILD; it reaches only _StateDict, since
# every other object the unpickler can hold has neither __setstate__, __dict__ nor settable slots.
_REFUSED_OPCODES = frozenset(
    {
        "INST",
        "OBJ",
        "NEWOBJ",
        "NEWOBJ_EX",
        "EXT1",
        "EXT2",
        "EXT4",
        "EMPTY_SET",
        "ADDITEMS",
        "FROZENSET",
        "NEXT_BUFFER",
        "READONLY_BUFFER",
        "PERSID",
    }
)
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class _StorageType(NamedTuple):
    dtype: str  # "" for torch.UntypedStorage (bytes)


class _Dtype(NamedTuple):
    dtype: str


class _Storage(NamedTuple):
    dtype: str  # of its elements ("U8" for an untyped storage, whose numel counts bytes)
    key: str
    numel: int


class _Tensor(NamedTuple):
    storage: _Storage
    dtype: str
    offset: int  # in elements of dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > _MAX_NDIM:
        raise CorruptPickle(f"a tensor's {what} is not a tuple of integers")
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < _MAX_DIM:
            raise CorruptPickle(f"a tensor's {what} holds {d!r}, not a dimension")
    return value


def _offset(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_DIM:
        raise CorruptPickle(f"a tensor's storage offset is {value!r}")
    return value


def _tensor(storage: Any, offset: Any, shape: Any, stride: Any, dtype: str) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise CorruptPickle("a tensor is rebuilt from something that is not a storage")
    size, strides = _dims(shape, "shape"), _dims(stride, "stride")
    if len(size) != len(strides):
        raise CorruptPickle(f"a tensor has shape {list(size)} but strides {list(strides)}")
    return _Tensor(storage, dtype, _offset(offset), size, strides)


def _rebuild_tensor_v2(storage: Any, offset: Any, shape: Any, stride: Any, *_rest: Any) -> _Tensor:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
    metadata]): a tensor of the typed storage's dtype."""
    if not isinstance(storage, _Storage) or storage.dtype == "":
        raise CorruptPickle("_rebuild_tensor_v2 takes a typed storage")
    return _tensor(storage, offset, shape, stride, storage.dtype)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    shape: Any,
    stride: Any,
    _requires_grad: Any = False,
    _hooks: Any = None,
    dtype: Any = None,
    *_rest: Any,
) -> _Tensor:
    """torch._utils._rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks,
    dtype[, metadata]): the dtypes without a typed storage (uint16, float8, ...), on an untyped
    one."""
    if not isinstance(dtype, _Dtype):
        raise CorruptPickle("_rebuild_tensor_v3 takes a torch dtype")
    if not isinstance(storage, _Storage) or storage.dtype != "U8":
        raise CorruptPickle("_rebuild_tensor_v3 takes an untyped storage")
    return _tensor(storage, offset, shape, stride, dtype.dtype)


def _rebuild_parameter(data: Any, *_rest: Any) -> _Tensor:
    """torch._utils._rebuild_parameter(data, requires_grad, hooks): the tensor itself."""
    if not isinstance(data, _Tensor):
        raise CorruptPickle("_rebuild_parameter takes a tensor")
    return data


class _StateDict(dict[Any, Any]):
    """What collections.OrderedDict becomes: a dict whose state (nn.Module.state_dict()'s
    _metadata, set by BUILD) is dropped."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        pass


def _ordered_dict(*args: Any) -> _StateDict:
    """collections.OrderedDict: state dicts and tensors' (empty) backward hooks."""
    if len(args) > 1:
        raise CorruptPickle("OrderedDict takes at most one argument")
    return _StateDict(*args)


class _Call:
    """A stub the unpickler may call, and nothing else: no __dict__ and no settable slot, so that
    BUILD cannot change it (a plain function's __defaults__ could be set), for this file or the
    next."""

    __slots__ = ("_function",)
    _function: Callable[..., Any]

    def __init__(self, function: Callable[..., Any]) -> None:
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(name)

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)


_FUNCTIONS: dict[tuple[str, str], _Call] = {
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Call(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("collections", "OrderedDict"): _Call(_ordered_dict),
}


def _stub(module: str, name: str) -> Any:
    """Our stand-in for a global torch.save writes for a state dict; None for any other."""
    function = _FUNCTIONS.get((module, name))
    if function is not None:
        return function
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(_STORAGE_DTYPES[name])
    if module in ("torch", "torch.storage") and name == "UntypedStorage":
        return _StorageType("")
    if module == "torch" and name in _TORCH_DTYPES:
        return _Dtype(_TORCH_DTYPES[name])
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what torch.save writes for a state dict, to the stubs above."""

    def find_class(self, module: str, name: str) -> Any:
        stub = _stub(module, name)
        if stub is None:
            raise UnsafePickle(f"{module}.{name}")
        return stub

    def persistent_load(self, pid: Any) -> _Storage:
        # ("storage", storage type, key, location, numel): the zip format's storage reference.
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and not isinstance(pid[4], bool)
            and 0 <= pid[4] < _MAX_DIM
        ):
            raise CorruptPickle(f"a persistent id is {str(pid)[:80]}, not a torch storage")
        return _Storage(pid[1].dtype or "U8", pid[2], pid[4])


def _unsafe(name: str, qualified: str) -> UnsafePickle:
    return UnsafePickle(
        f"the pickle {name} references {qualified}: it holds code or Python objects, not only "
        f"tensors, so it is not served; {SAVE_HINT}"
    )


def _scan(data: bytes, name: str, where: str, deadline: float) -> None:
    """Walk the opcodes without executing any: bounded in count and time; refuse a global other
    than a tensor's (by name, where GLOBAL spells it), the opcodes a state dict never uses and
    memo indices no pickle of this size needs."""
    count = 0
    too_slow = UnsupportedPickle(
        f"{where} took longer than {PICKLE_TIMEOUT_SECONDS:g} s to scan; {SAVE_HINT}"
    )
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            count += 1
            if count > MAX_PICKLE_OPCODES:
                raise UnsupportedPickle(
                    f"{where} has more than {MAX_PICKLE_OPCODES} pickle opcodes, far more than "
                    f"any adapter's state dict; {SAVE_HINT}"
                )
            if count % 4096 == 0 and time.monotonic() > deadline:
                raise too_slow
            if opcode.name == "GLOBAL" and isinstance(arg, str):
                module, _, attr = arg.partition(" ")
                if _stub(module, attr) is None:
                    raise _unsafe(name, f"{module}.{attr}")
            if opcode.name in _REFUSED_OPCODES:
                raise UnsafePickle(
                    f"{where} uses the pickle opcode {opcode.name}, which builds Python objects "
                    f"a state dict of tensors never holds; {SAVE_HINT}"
                )
            if opcode.name in _MEMO_PUTS and isinstance(arg, int) and arg > MAX_PICKLE_OPCODES:
                raise CorruptPickle(f"{where} stores to memo slot {arg}: not a torch.save pickle")
    except ValueError as exc:
        raise CorruptPickle(f"{where} is not a readable pickle ({exc}); {REUPLOAD_HINT}") from exc
    if time.monotonic() > deadline:
        raise too_slow


def _directory_size(path: Path, size: int) -> int:
    """The size of the zip's central directory, from its end record (zip64 too)."""
    tail_len = min(size, 22 + 0xFFFF)
    with path.open("rb") as f:
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(_ZIP_END)
        if at < 0 or tail_len - at < 22:
            raise CorruptPickle(
                f"{path.name} is truncated: the end of its zip archive is missing; {REUPLOAD_HINT}"
            )
        entries, directory = struct.unpack("<H I", tail[at + 10 : at + 16])
        if entries != 0xFFFF and directory != 0xFFFFFFFF:
            return int(directory)
        locator = tail[at - 20 : at] if at >= 20 else b""
        if not locator.startswith(_ZIP64_LOCATOR):
            raise CorruptPickle(f"{path.name} has a damaged zip end record; {REUPLOAD_HINT}")
        (end64,) = struct.unpack("<Q", locator[8:16])
        if end64 > size - 56:
            raise CorruptPickle(f"{path.name} has a damaged zip64 end record; {REUPLOAD_HINT}")
        f.seek(end64)
        record = f.read(56)
    if not record.startswith(_ZIP64_END):
        raise CorruptPickle(f"{path.name} has a damaged zip64 end record; {REUPLOAD_HINT}")
    (directory64,) = struct.unpack("<Q", record[40:48])
    return int(directory64)


def _refuse_other_formats(path: Path, head: bytes) -> None:
    if head.startswith(_ZIP_LOCAL):
        return
    if head.startswith(_LEGACY_MAGIC):
        raise UnsupportedPickle(
            f"{path.name} is in torch's legacy serialization format (torch.save before torch 1.6, "
            "or with _use_new_zipfile_serialization=False), which pre-flight does not read; "
            + SAVE_HINT
        )
    raise CorruptPickle(
        f"{path.name} is not a torch.save archive (it does not begin as a zip archive); "
        f"{REUPLOAD_HINT}, or {SAVE_HINT}"
    )


def read_torch_save(path: Path) -> dict[str, PickledTensor]:
    """Tensor name -> dtype and shape of the state dict torch.save wrote to ``path``.

    Raises ``UnsafePickle`` (a global other than a tensor's, or an object-building opcode),
    ``CorruptPickle`` (truncated, damaged, a storage shorter than its tensors) or
    ``UnsupportedPickle`` (the legacy format, above the bounds, or not a dict of tensors).
    """
    deadline = time.monotonic() + PICKLE_TIMEOUT_SECONDS
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
        _refuse_other_formats(path, head)
        if _directory_size(path, size) > MAX_DIRECTORY_BYTES:
            raise UnsupportedPickle(
                f"{path.name} has a zip directory above {MAX_DIRECTORY_BYTES} bytes, far more "
                f"entries than any adapter's; {SAVE_HINT}"
            )
        with zipfile.ZipFile(path) as archive:
            return _read_archive(path.name, archive, size, deadline)
    except OSError as exc:
        raise CorruptPickle(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error) as exc:
        raise CorruptPickle(
            f"{path.name} is not a readable zip archive ({exc}); {REUPLOAD_HINT}"
        ) from exc


def _read_archive(
    name: str, archive: zipfile.ZipFile, size: int, deadline: float
) -> dict[str, PickledTensor]:
    entries = archive.infolist()
    if not entries:
        raise CorruptPickle(f"{name} is an empty zip archive, not a torch.save file")
    # torch's reader: every record sits under one top-level directory, named by the first.
    prefix = entries[0].filename.split("/", 1)[0]
    records = {e.filename.removeprefix(prefix + "/"): e for e in entries}
    pkl = records.get("data.pkl")
    if pkl is None:
        raise CorruptPickle(f"{name} has no {prefix}/data.pkl: not a torch.save archive")
    where = f"{name} ({prefix}/data.pkl)"
    if pkl.file_size > MAX_PICKLE_BYTES:
        raise UnsupportedPickle(
            f"{where} is {pkl.file_size} bytes, above pre-flight's limit of {MAX_PICKLE_BYTES} "
            f"(an adapter's is a few hundred KB); {SAVE_HINT}"
        )
    with archive.open(pkl) as stream:
        data = stream.read(MAX_PICKLE_BYTES + 1)
    _scan(data, name, where, deadline)
    try:
        loaded = _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickle as exc:
        raise _unsafe(name, exc.message) from None
    except PickleRefused as exc:
        raise type(exc)(f"{where}: {exc.message}; {REUPLOAD_HINT}") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, EOFError, RecursionError, MemoryError) as exc:  # fmt: skip
        raise CorruptPickle(
            f"{where} cannot be read as a state dict ({type(exc).__name__}: {exc}); {REUPLOAD_HINT}"
        ) from None
    return _check_tensors(name, prefix, records, loaded, size)


def _check_tensors(
    name: str,
    prefix: str,
    records: dict[str, zipfile.ZipInfo],
    loaded: Any,
    size: int,
) -> dict[str, PickledTensor]:
    if not isinstance(loaded, dict):
        raise UnsupportedPickle(
            f"{name} holds a value of type {type(loaded).__name__}, not a dict of tensors as "
            "peft saves; " + SAVE_HINT
        )
    tensors: dict[str, PickledTensor] = {}
    storages: dict[str, _Storage] = {}
    for key, tensor in loaded.items():
        if not isinstance(key, str) or not isinstance(tensor, _Tensor):
            raise UnsupportedPickle(
                f"{name} maps {str(key)[:80]!r} to a value of type {type(tensor).__name__}: not "
                f"a dict of tensor names to tensors as peft saves; {SAVE_HINT}"
            )
        storage = tensor.storage
        seen = storages.setdefault(storage.key, storage)
        if seen != storage:
            raise CorruptPickle(f"{name} declares storage {storage.key} twice, differently")
        width = _WIDTHS.get(tensor.dtype)
        if width is None:
            raise UnsupportedPickle(f"{name}: {key!r} has dtype {tensor.dtype}; {SAVE_HINT}")
        available = storage.numel * _WIDTHS[storage.dtype] // width
        if math.prod(tensor.shape) > 0:
            steps = zip(tensor.shape, tensor.stride, strict=True)
            last = tensor.offset + sum((d - 1) * s for d, s in steps)
            if last >= available:
                raise CorruptPickle(
                    f"{name}: {key!r} ({tensor.dtype}{list(tensor.shape)}) reaches past the end "
                    f"of its storage; {REUPLOAD_HINT}"
                )
        tensors[key] = PickledTensor(tensor.dtype, tensor.shape)
    for key, storage in storages.items():
        entry = records.get(f"data/{key}")
        if entry is None:
            raise CorruptPickle(
                f"{name} has no record {prefix}/data/{key} for a storage its tensors use: "
                f"truncated or damaged; {REUPLOAD_HINT}"
            )
        need = storage.numel * _WIDTHS[storage.dtype]
        if entry.file_size < need or entry.header_offset + entry.compress_size > size:
            raise CorruptPickle(
                f"{name} is truncated or damaged: {prefix}/data/{key} holds {entry.file_size} "
                f"bytes, its tensors need {need}; {REUPLOAD_HINT}"
            )
    return tensors

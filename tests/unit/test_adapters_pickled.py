"""Pre-flight of pickled adapters (adapter_model.bin / .pt): tensor names, dtypes and shapes read
from torch.save's zip archive without executing the pickle, on real peft files
(tests/support/pickled.py) and on hand-made archives for what peft never writes."""

from __future__ import annotations

import asyncio
import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from loraplane.adapters import pickled
from loraplane.adapters.inspect import PickleNotInspectable, inspect_adapter
from loraplane.adapters.pickled import PickledTensor, read_torch_save
from loraplane.adapters.sources.versions import SUMMARY_FILE
from loraplane.adapters.validate import BaseModelFacts, errors, llama_base_facts, validate
from loraplane.agent.protocol import FetchRequest
from loraplane.agent.store import AdapterStore, Rejected
from loraplane.api import AdapterSource
from loraplane.vllm.errors import Reason
from tests.support import ensure_adapter, ensure_tiny_model
from tests.support.pickled import (
    PICKLE_NAME,
    add_payload,
    copy_adapter,
    ensure_pickled_adapter,
    truncate_pickle,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def rank8_bin() -> Path:
    return ensure_pickled_adapter("rank8-bin")


@pytest.fixture(scope="session")
def wrong_base_bin() -> Path:
    return ensure_pickled_adapter("wrong-base-bin")


@pytest.fixture(scope="session")
def facts() -> BaseModelFacts:
    tiny = ensure_tiny_model()
    return llama_base_facts(tiny, max_lora_rank=16, model_name=str(tiny), deployment="tiny")


def refused(directory: Path) -> PickleNotInspectable:
    with pytest.raises(PickleNotInspectable) as info:
        inspect_adapter(directory)
    return info.value


def config_only(directory: Path) -> Path:
    """An adapter directory with the tiny rank-8 config and no weights yet."""
    directory.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


def torch_save(directory: Path, obj: Any, **kwargs: Any) -> Path:
    import torch

    torch.save(obj, directory / PICKLE_NAME, **kwargs)
    return directory


def write_archive(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None) -> None:
    """A torch.save-shaped zip written by hand: `archive/data.pkl` and `archive/data/<key>`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")


# Real peft files.


def test_peft_bin_reads_like_its_safetensors_twin(rank8_bin: Path) -> None:
    s = inspect_adapter(rank8_bin)
    twin = inspect_adapter(ensure_adapter("rank8"))
    assert s.weights_file == PICKLE_NAME and s.weights_inspected
    assert s.tensors == twin.tensors and s.modules == twin.modules
    assert (s.rank, s.max_rank, s.module_suffixes) == (8, 8, {"q_proj", "v_proj"})


def test_peft_bin_passes_preflight(rank8_bin: Path, facts: BaseModelFacts) -> None:
    assert errors(validate(inspect_adapter(rank8_bin), facts)) == []


def test_bin_for_another_base_names_the_modules_like_its_twin(
    wrong_base_bin: Path, facts: BaseModelFacts
) -> None:
    """vLLM says only "The size of tensor a (128) must match the size of tensor b (256)"."""
    (finding,) = errors(validate(inspect_adapter(wrong_base_bin), facts))
    (twin,) = errors(validate(inspect_adapter(ensure_adapter("wrong-base")), facts))
    assert finding.reason == Reason.BASE_MODEL_SHAPE_MISMATCH
    assert finding.message == twin.message
    assert "q_proj is 256->256, the base's is 128->128" in finding.message


def test_a_payload_is_refused_by_name_and_never_executed(rank8_bin: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directory = copy_adapter(rank8_bin, tmp_path / "evil")
    add_payload(directory, f"echo pwned > {marker}")
    error = refused(directory)
    assert error.reason == Reason.UNSAFE_PICKLE
    assert "references posix.system" in error.message
    assert "save the adapter with safetensors" in error.message
    assert "weights_only" not in error.message
    assert not marker.exists(), "pre-flight executed the pickle"
    # The payload is live: torch's full unpickler runs it (the reason pre-flight never does).
    import torch

    torch.load(directory / PICKLE_NAME, weights_only=False)
    assert marker.exists()


class Custom:
    """An object of the author's own class in the state dict."""

    def __init__(self) -> None:
        self.value = 1


def test_any_other_object_is_refused_by_name(tmp_path: Path) -> None:
    import torch

    directory = torch_save(
        config_only(tmp_path / "a"), {"w.lora_A.weight": torch.zeros(2, 2), "x": Custom()}
    )
    error = refused(directory)
    assert error.reason == Reason.UNSAFE_PICKLE
    assert f"references {__name__}.Custom" in error.message


def test_truncated_bin_is_corrupt(rank8_bin: Path, tmp_path: Path) -> None:
    directory = copy_adapter(rank8_bin, tmp_path / "cut")
    truncate_pickle(directory)
    error = refused(directory)
    assert error.reason == Reason.CORRUPT_WEIGHTS
    assert "truncated" in error.message and "upload the adapter's files again" in error.message


def test_storage_shorter_than_its_tensors_is_corrupt(rank8_bin: Path, tmp_path: Path) -> None:
    """A whole zip directory but a storage record cut short (rewritten, so the zip is valid)."""
    directory = copy_adapter(rank8_bin, tmp_path / "short")
    weights = directory / PICKLE_NAME
    with zipfile.ZipFile(weights) as archive:
        records = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(weights, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(name, data[: len(data) // 2] if name.endswith("/data/0") else data)
    error = refused(directory)
    assert error.reason == Reason.CORRUPT_WEIGHTS
    assert "data/0 holds" in error.message and "its tensors need" in error.message


def test_legacy_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    import torch

    directory = torch_save(
        config_only(tmp_path / "a"),
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 128)},
        _use_new_zipfile_serialization=False,
    )
    error = refused(directory)
    assert error.reason == Reason.UNSUPPORTED_WEIGHTS_FORMAT
    assert "legacy serialization format" in error.message
    assert "save the adapter with safetensors" in error.message


def test_not_a_torch_file_is_corrupt(tmp_path: Path) -> None:
    directory = config_only(tmp_path / "a")
    (directory / PICKLE_NAME).write_bytes(b"not even a pickle")
    error = refused(directory)
    assert error.reason == Reason.CORRUPT_WEIGHTS
    assert "not a torch.save archive" in error.message


def test_pt_file_is_read_too(tmp_path: Path) -> None:
    import torch

    directory = config_only(tmp_path / "a")
    torch.save({"base_model.model.x.q_proj.lora_A.weight": torch.zeros(8, 4)}, directory / "a.pt")
    (directory / "a.pt").rename(directory / "adapter_model.pt")
    s = inspect_adapter(directory)
    assert s.weights_file == "adapter_model.pt" and s.modules["x.q_proj"].lora_a == (8, 4)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ([], "holds a value of type list, not a dict of tensors"),
        ({"a": 1}, "maps 'a' to a value of type int"),
        ({}, "holds no tensors"),
    ],
    ids=["list", "not-a-tensor", "empty"],
)
def test_not_a_state_dict_of_tensors(tmp_path: Path, state: Any, match: str) -> None:
    directory = torch_save(config_only(tmp_path / "a"), state)
    with pytest.raises(Exception, match=match) as info:
        inspect_adapter(directory)
    assert info.value.reason in (  # type: ignore[attr-defined]
        Reason.UNSUPPORTED_WEIGHTS_FORMAT,
        Reason.NO_TENSORS,
    )


def test_dtypes_parameters_views_and_shared_storages(tmp_path: Path) -> None:
    import torch

    base = torch.zeros(6, 4)
    state = {
        "p": torch.nn.Parameter(torch.zeros(2, 3)),
        "bf16": torch.zeros(3, 2, dtype=torch.bfloat16),
        "f8": torch.zeros(5, dtype=torch.float8_e4m3fn),
        "u16": torch.zeros(2, dtype=torch.uint16),
        "whole": base,
        "view": base[2:],  # the same storage at an offset
        "transposed": base.t(),
        "empty": torch.zeros(0, 7),
    }
    path = tmp_path / "state.bin"
    torch.save(state, path)
    assert read_torch_save(path) == {
        "p": PickledTensor("F32", (2, 3)),
        "bf16": PickledTensor("BF16", (3, 2)),
        "f8": PickledTensor("F8_E4M3", (5,)),
        "u16": PickledTensor("U16", (2,)),
        "whole": PickledTensor("F32", (6, 4)),
        "view": PickledTensor("F32", (4, 4)),
        "transposed": PickledTensor("F32", (4, 6)),
        "empty": PickledTensor("F32", (0, 7)),
    }


# Hand-made archives: what torch.save never writes.


class _Marker:
    pass


def _tensor_pickle(offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """data.pkl of {"t": a float32 tensor on storage "0" of 4 elements}, written with the real
    globals torch.save uses, but with the offset, shape and strides given."""
    import torch

    storage = _Marker()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", 4)
            return None

    class Tensor:
        def __reduce__(self) -> Any:
            rebuild = torch._utils._rebuild_tensor_v2
            return (rebuild, (storage, offset, size, stride, False, OrderedDict()))

    out = io.BytesIO()
    Pickler(out, protocol=2).dump({"t": Tensor()})
    return out.getvalue()


def test_handmade_archive_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ok.bin"
    write_archive(path, _tensor_pickle(0, (2, 2), (2, 1)), {"0": b"\0" * 16})
    assert read_torch_save(path) == {"t": PickledTensor("F32", (2, 2))}


def test_tensor_past_the_end_of_its_storage(tmp_path: Path) -> None:
    path = tmp_path / "over.bin"
    write_archive(path, _tensor_pickle(2, (2, 2), (2, 1)), {"0": b"\0" * 16})
    with pytest.raises(pickled.CorruptPickle, match="reaches past the end of its storage"):
        read_torch_save(path)


def test_missing_storage_record(tmp_path: Path) -> None:
    path = tmp_path / "gone.bin"
    write_archive(path, _tensor_pickle(0, (2, 2), (2, 1)))
    with pytest.raises(pickled.CorruptPickle, match="has no record archive/data/0"):
        read_torch_save(path)


def test_absurd_memo_index_is_refused_before_unpickling(tmp_path: Path) -> None:
    """The C unpickler would grow its memo to 2**31 slots (16 GiB) for this pickle."""
    path = tmp_path / "memo.bin"
    write_archive(path, b"\x80\x02}r\xff\xff\xff\x7f.")
    with pytest.raises(pickled.CorruptPickle, match="memo slot 2147483647"):
        read_torch_save(path)


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x02cbuiltins\nset\n)R.",  # a global by GLOBAL
        b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x01x\x85R.",  # by STACK_GLOBAL
        b"\x80\x02c__main__\nC\n)\x81}b.",  # NEWOBJ + BUILD of a class
    ],
    ids=["global", "stack-global", "newobj"],
)
def test_other_globals_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "g.bin"
    write_archive(path, data)
    with pytest.raises(pickled.UnsafePickle, match=r"references|opcode"):
        read_torch_save(path)


def test_a_module_state_dict_with_its_metadata_is_read(tmp_path: Path) -> None:
    """nn.Module.state_dict() is an OrderedDict whose _metadata pickles by BUILD."""
    import torch

    path = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    assert read_torch_save(path) == {
        "weight": PickledTensor("F32", (2, 3)),
        "bias": PickledTensor("F32", (2,)),
    }


def test_build_cannot_change_the_stubs(tmp_path: Path, rank8_bin: Path) -> None:
    """BUILD on a stub (here: setting __defaults__ as a slot state) fails, and changes nothing
    for the next file."""
    path = tmp_path / "build.bin"
    state = b"N}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86"  # (None, {"__defaults__": (1,)})
    write_archive(path, b"\x80\x02ctorch._utils\n_rebuild_tensor_v3\n" + state + b"b.")
    with pytest.raises(pickled.CorruptPickle, match="cannot be read as a state dict"):
        read_torch_save(path)
    assert pickled._rebuild_tensor_v3.__defaults__ == (False, None, None)
    assert len(read_torch_save(rank8_bin / PICKLE_NAME)) == 8


def test_object_building_opcodes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "set.bin"
    write_archive(path, b"\x80\x04\x8f.")  # EMPTY_SET
    with pytest.raises(pickled.UnsafePickle, match="opcode EMPTY_SET"):
        read_torch_save(path)


def test_data_pkl_above_the_size_limit(
    tmp_path: Path, rank8_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pickled, "MAX_PICKLE_BYTES", 100)
    with pytest.raises(pickled.UnsupportedPickle, match="above pre-flight's limit of 100"):
        read_torch_save(rank8_bin / PICKLE_NAME)


def test_opcode_limit(tmp_path: Path, rank8_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickled, "MAX_PICKLE_OPCODES", 50)
    with pytest.raises(pickled.UnsupportedPickle, match="more than 50 pickle opcodes"):
        read_torch_save(rank8_bin / PICKLE_NAME)


def test_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickled, "PICKLE_TIMEOUT_SECONDS", -1.0)
    path = tmp_path / "slow.bin"
    write_archive(path, b"\x80\x02(" + b"N" * 10_000 + b"l.")
    with pytest.raises(pickled.UnsupportedPickle, match="took longer than"):
        read_torch_save(path)


def test_zip_directory_above_its_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pickled, "MAX_DIRECTORY_BYTES", 10)
    path = tmp_path / "big.bin"
    write_archive(path, _tensor_pickle(0, (2, 2), (2, 1)), {"0": b"\0" * 16})
    with pytest.raises(pickled.UnsupportedPickle, match="zip directory above 10 bytes"):
        read_torch_save(path)


def test_zip64_end_record_is_read(tmp_path: Path) -> None:
    """torch writes zip64 records past 4 GiB or 65,535 entries: the size comes from them."""
    path = tmp_path / "z64.bin"
    write_archive(path, _tensor_pickle(0, (2, 2), (2, 1)), {"0": b"\0" * 16})
    data = path.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    entries, size, offset = struct.unpack("<HII", data[end + 10 : end + 20])
    record = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, entries, entries,
                                         size, offset)  # fmt: skip
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, end, 1)
    ending = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, size, offset, 0)
    path.write_bytes(data[:end] + record + locator + ending)
    assert pickled._directory_size(path, path.stat().st_size) == size


def test_the_reader_needs_no_torch(rank8_bin: Path) -> None:
    """The operator image has no torch: the reader must not import it."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from pathlib import Path\n"
        "from loraplane.adapters.inspect import inspect_adapter\n"
        f"s = inspect_adapter(Path({str(rank8_bin)!r}))\n"
        "assert s.rank == 8 and len(s.tensors) == 8, s\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# The setting: verify (the default) or refuse.


def test_refuse_turns_every_pickle_away(rank8_bin: Path, facts: BaseModelFacts) -> None:
    summary = inspect_adapter(rank8_bin)
    (finding,) = errors(validate(summary, facts, pickled_adapters="refuse"))
    assert finding.reason == Reason.PICKLED_WEIGHTS_REFUSED
    assert "safetensors only" in finding.message and "pickledAdapters" in finding.message
    safetensors = inspect_adapter(ensure_adapter("rank8"))
    assert errors(validate(safetensors, facts, pickled_adapters="refuse")) == []


def fetch(source: Path, store: Path, **fields: Any) -> FetchRequest:
    return FetchRequest(
        name="bin", source=AdapterSource(path=str(source)), max_lora_rank=16, **fields
    )


def test_agent_verifies_by_default_and_refuses_when_told(rank8_bin: Path, tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "store", None)
    assert fetch(rank8_bin, tmp_path).pickled_adapters == "verify"
    fetched = asyncio.run(store.fetch(fetch(rank8_bin, tmp_path)))
    assert fetched.summary.rank == 8
    assert sorted(fetched.summary.target_modules) == ["q_proj", "v_proj"]
    refusing = AdapterStore(tmp_path / "strict", None)
    with pytest.raises(Rejected) as info:
        asyncio.run(refusing.fetch(fetch(rank8_bin, tmp_path, pickled_adapters="refuse")))
    assert info.value.reason == "PickledWeightsRefused"
    assert not any((tmp_path / "strict" / "bin").glob("[!.]*"))


def test_agent_refuses_a_payload_and_stores_nothing(rank8_bin: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    directory = copy_adapter(rank8_bin, tmp_path / "evil")
    add_payload(directory, f"touch {marker}")
    store = AdapterStore(tmp_path / "store", None)
    with pytest.raises(Rejected) as info:
        asyncio.run(store.fetch(fetch(directory, tmp_path)))
    assert info.value.reason == "UnsafePickle"
    assert not marker.exists()
    assert not any((tmp_path / "store" / "bin").glob("[!.]*"))


def test_a_stored_version_inspected_before_pickles_were_read_is_judged_again(
    rank8_bin: Path, tmp_path: Path
) -> None:
    """A version an older agent stored, whose summary says its pickle was never read."""
    store = AdapterStore(tmp_path / "store", None)
    fetched = asyncio.run(store.fetch(fetch(rank8_bin, tmp_path)))
    version = Path(fetched.path)
    summary_file = version / SUMMARY_FILE
    old = json.loads(summary_file.read_text())
    summary_file.write_text(json.dumps({**old, "weights_inspected": False, "tensors": {},
                                        "modules": {}}))  # fmt: skip
    again = asyncio.run(
        store.fetch(fetch(rank8_bin, tmp_path, expected_digest=fetched.summary.digest))
    )
    assert again.path == fetched.path and again.summary.rank == 8
    assert json.loads(summary_file.read_text())["weights_inspected"] is True

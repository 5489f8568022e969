"""inspect_adapter on real peft adapters (tests/support/adapters.py) and on hand-written
safetensors files for the header edge cases peft never produces."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loraplane.adapters.inspect import (
    MAX_HEADER_BYTES,
    AdapterConfigMissing,
    CorruptSafetensors,
    InvalidAdapterConfig,
    NoTensors,
    PickleNotInspectable,
    directory_digest,
    inspect_adapter,
    parse_tensor_name,
    read_safetensors_header,
)
from loraplane.vllm.errors import Reason
from tests.support import ensure_adapters


@pytest.fixture(scope="session")
def adapters() -> dict[str, Path]:
    return ensure_adapters()


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A valid safetensors file of zero-filled tensors, written by hand (no torch)."""
    widths = {"F32": 4, "BF16": 2, "F16": 2}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = widths[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def write_adapter(
    directory: Path,
    config: dict[str, Any] | None = None,
    tensors: dict[str, tuple[str, list[int]]] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    base_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "bias": "none",
        "base_model_name_or_path": "tiny-llama",
    }
    (directory / "adapter_config.json").write_text(json.dumps({**base_config, **(config or {})}))
    if tensors is None:
        tensors = {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", [4, 128]),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": ("F32", [128, 4]),
        }
    write_safetensors(directory / "adapter_model.safetensors", tensors)
    return directory


# Real peft adapters: what inspect reads from them.


def test_rank8_summary(adapters: dict[str, Path]) -> None:
    s = inspect_adapter(adapters["rank8"])
    assert (s.peft_type, s.task_type, s.rank, s.alpha) == ("LORA", "CAUSAL_LM", 8, 16.0)
    assert s.target_modules == ["q_proj", "v_proj"]
    assert not s.use_dora and s.bias == "none" and s.modules_to_save is None
    assert s.module_suffixes == {"q_proj", "v_proj"}
    q = s.modules["model.layers.0.self_attn.q_proj"]
    assert (q.rank, q.in_features, q.out_features) == (8, 128, 128)
    v = s.modules["model.layers.1.self_attn.v_proj"]
    assert (v.in_features, v.out_features) == (128, 64)  # 2 KV heads of 32
    assert len(s.tensors) == 8 and not s.unparsed_tensors
    assert s.weights_file == "adapter_model.safetensors" and s.weights_inspected
    assert "adapter_config.json" in s.files
    assert not any(f.startswith(".") for f in s.files)  # the fixture stamp is not the adapter
    assert s.size_bytes == sum((adapters["rank8"] / f).stat().st_size for f in s.files)
    assert s.digest.startswith("sha256:") and len(s.digest_hex) == 64


def test_digest_is_reproducible_with_sha256sum(adapters: dict[str, Path]) -> None:
    directory = adapters["rank16"]
    s = inspect_adapter(directory)
    listing = subprocess.run(
        ["sha256sum", *s.files], cwd=directory, check=True, capture_output=True
    ).stdout
    assert s.digest == "sha256:" + hashlib.sha256(listing).hexdigest()


def test_new_revision_has_a_new_digest(adapters: dict[str, Path]) -> None:
    v1, v2 = inspect_adapter(adapters["rank8"]), inspect_adapter(adapters["rank8-v2"])
    assert v1.size_bytes == v2.size_bytes
    assert v1.digest != v2.digest


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("rank16", lambda s: s.rank == 16 and s.module_suffixes == {"q_proj", "k_proj",
                                                                     "v_proj", "o_proj"}),
        ("rank64", lambda s: s.max_rank == 64),
        ("rank8-mlp", lambda s: s.module_suffixes == {"gate_proj", "up_proj", "down_proj"}),
        ("rank-pattern", lambda s: s.rank == 8 and s.max_rank == 32 and s.rank_pattern),
        ("dora", lambda s: s.use_dora and any(
            "lora_magnitude_vector" in m.other for m in s.modules.values())),
        ("bias", lambda s: s.bias == "all"),
        ("modules-to-save", lambda s: s.modules_to_save == ["lm_head"]
         and s.modules["lm_head"].other == {"weight": (1545, 128)}),
        ("rank8-embed", lambda s: s.modules["model.embed_tokens"].embedding
         and s.modules["model.embed_tokens"].in_features == 1545),
        # The base embedding peft saves beside the LoRA is no module of its own.
        ("embed-default", lambda s: s.modules["model.embed_tokens"].embedding
         and s.modules["model.embed_tokens"].other == {}
         and "model.embed_tokens.base_layer" not in s.modules
         and "base_model.model.model.embed_tokens.base_layer.weight" in s.tensors),
        ("lm-head-default", lambda s: s.module_suffixes == {"lm_head"}
         and s.modules["lm_head"].other == {}),
        ("wrong-base", lambda s: s.modules["model.layers.0.self_attn.q_proj"].in_features == 256),
        ("other-base-name", lambda s: s.base_model_name_or_path == "meta-llama/Llama-3.2-1B"),
    ],
)  # fmt: skip
def test_fixture_adapters(adapters: dict[str, Path], name: str, check: Any) -> None:
    assert check(inspect_adapter(adapters[name]))


@pytest.mark.parametrize(
    ("name", "error", "reason"),
    [
        ("no-config", AdapterConfigMissing, Reason.ADAPTER_NOT_FOUND),
        ("corrupt", CorruptSafetensors, Reason.CORRUPT_WEIGHTS),
        ("corrupt-data", CorruptSafetensors, Reason.CORRUPT_WEIGHTS),
        ("no-tensors", NoTensors, Reason.NO_TENSORS),
        ("no-alpha", InvalidAdapterConfig, Reason.INVALID_ADAPTER_CONFIG),
    ],
)
def test_broken_fixture_adapters(
    adapters: dict[str, Path], name: str, error: type[Exception], reason: Reason
) -> None:
    with pytest.raises(error) as info:
        inspect_adapter(adapters[name])
    assert info.value.reason == reason  # type: ignore[attr-defined]


# Hand-written files: header edge cases.


def test_handwritten_adapter_round_trip(tmp_path: Path) -> None:
    s = inspect_adapter(write_adapter(tmp_path / "a"))
    assert s.rank == 4 and s.module_suffixes == {"q_proj"}


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(AdapterConfigMissing, match="does not exist"):
        inspect_adapter(tmp_path / "nope")


@pytest.mark.parametrize(
    ("config_text", "match"),
    [
        ("{not json", "not readable JSON"),
        ("[1]", "not a JSON object"),
        ('{"peft_type": "LORA"}', "has no r, lora_alpha, target_modules: vLLM requires"),
        ('{"r": 8, "target_modules": null}', "has no lora_alpha: vLLM requires"),
        ('{"r": 0, "lora_alpha": 1, "target_modules": null}', "positive integer"),
        (
            '{"r": 8, "lora_alpha": 16, "target_modules": null, "rank_pattern": {"q_proj": -1}}',
            "positive integer",
        ),
        ('{"r": 8, "lora_alpha": "x", "target_modules": null}', "lora_alpha"),
        ('{"r": 8, "lora_alpha": 16, "target_modules": 3}', "target_modules"),
    ],
)
def test_invalid_config(tmp_path: Path, config_text: str, match: str) -> None:
    directory = write_adapter(tmp_path / "a")
    (directory / "adapter_config.json").write_text(config_text)
    with pytest.raises(InvalidAdapterConfig, match=match) as info:
        inspect_adapter(directory)
    assert info.value.reason == Reason.INVALID_ADAPTER_CONFIG


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "too short"),
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "header"),
        (struct.pack("<Q", 2**63) + b"{}", "header"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "unreadable header"),
        (struct.pack("<Q", 4) + b"[12]", "not a JSON object"),
        (struct.pack("<Q", 20) + b'{"t": {"dtype": 1}} ', "malformed"),
    ],
    ids=["empty", "short", "huge-header", "absurd-header", "not-utf8", "not-object", "malformed"],
)
def test_unreadable_headers(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(CorruptSafetensors, match=match):
        read_safetensors_header(path)


def test_offsets_must_match_dtype_and_shape(tmp_path: Path) -> None:
    header = json.dumps({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(CorruptSafetensors, match="spans 8 bytes"):
        read_safetensors_header(path)


def test_header_is_read_without_the_data(tmp_path: Path) -> None:
    """A 64 MiB tensor: inspect reads the header (and the digest streams the file in chunks)."""
    directory = write_adapter(
        tmp_path / "big",
        tensors={
            "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight": ("F32", [4096, 4096]),
        },
    )
    tensors = read_safetensors_header(directory / "adapter_model.safetensors")
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (
        4096,
        4096,
    )


def test_no_weights_file(tmp_path: Path) -> None:
    directory = write_adapter(tmp_path / "a")
    (directory / "adapter_model.safetensors").unlink()
    with pytest.raises(NoTensors, match="no weights"):
        inspect_adapter(directory)


def test_pickle_weights_are_read_not_trusted(tmp_path: Path) -> None:
    """No safetensors: the pickle is pre-flighted (tests/unit/test_adapters_pickled.py), and one
    that is not torch.save's is refused, not passed on to vLLM unread."""
    directory = write_adapter(tmp_path / "a")
    (directory / "adapter_model.safetensors").unlink()
    (directory / "adapter_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(PickleNotInspectable, match=r"not a torch\.save archive") as info:
        inspect_adapter(directory)
    assert info.value.reason == Reason.CORRUPT_WEIGHTS


@pytest.mark.parametrize(
    ("error", "content", "hint"),
    [
        (CorruptSafetensors, b"\x01\x02", "upload the adapter's files again"),
        (NoTensors, None, "save the adapter again with peft's save_pretrained"),
        (InvalidAdapterConfig, "{not json", "save the adapter again with peft's save_pretrained"),
    ],
    ids=["corrupt", "no-tensors", "bad-config"],
)
def test_every_refusal_says_what_to_do(
    tmp_path: Path, error: type[Exception], content: Any, hint: str
) -> None:
    directory = write_adapter(tmp_path / "a", tensors={} if content is None else None)
    if error is CorruptSafetensors:
        (directory / "adapter_model.safetensors").write_bytes(content)
    elif error is InvalidAdapterConfig:
        (directory / "adapter_config.json").write_text(content)
    with pytest.raises(error) as info:
        inspect_adapter(directory)
    assert hint in info.value.message  # type: ignore[attr-defined]


def test_unsupported_peft_features_are_recorded(tmp_path: Path) -> None:
    directory = write_adapter(
        tmp_path / "a",
        config={"init_lora_weights": "pissa", "layer_replication": [[0, 2]], "use_qalora": False},
    )
    s = inspect_adapter(directory)
    assert s.unsupported_features == {"init_lora_weights": "pissa", "layer_replication": [[0, 2]]}


def test_digest_ignores_hidden_files_and_sees_every_byte(tmp_path: Path) -> None:
    directory = write_adapter(tmp_path / "a")
    before, _ = directory_digest(directory)
    (directory / ".cache").mkdir()
    (directory / ".cache" / "x").write_text("bookkeeping")
    (directory / ".stamp").write_text("x")
    assert directory_digest(directory)[0] == before
    weights = directory / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert directory_digest(directory)[0] != before


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            ("model.layers.0.self_attn.q_proj", "lora_A", "weight"),
        ),
        (
            "base_model.model.model.embed_tokens.lora_embedding_B",
            ("model.embed_tokens", "lora_embedding_B", ""),
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
            ("model.layers.0.self_attn.q_proj", "other", "lora_B.bias"),
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight",
            ("model.layers.0.self_attn.q_proj", "other", "lora_magnitude_vector.weight"),
        ),
        ("base_model.model.lm_head.weight", ("lm_head", "other", "weight")),
        (
            "base_model.model.model.embed_tokens.base_layer.weight",
            ("model.embed_tokens", "base_embedding", "base_layer.weight"),
        ),
        (
            "base_model.model.lm_head.base_layer.weight",
            ("lm_head", "base_embedding", "base_layer.weight"),
        ),
        # vLLM skips only the embeddings' base layers; any other is an unsupported weight.
        (
            "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
            ("model.layers.0.self_attn.q_proj.base_layer", "other", "weight"),
        ),
        ("language_model.layers.0.q_proj.lora_A.weight",
         ("language_model.layers.0.q_proj", "lora_A", "weight")),
    ],
)  # fmt: skip
def test_parse_tensor_name(name: str, parsed: tuple[str, str, str]) -> None:
    assert parse_tensor_name(name) == parsed

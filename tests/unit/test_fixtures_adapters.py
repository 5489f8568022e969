"""The test fixtures are what their names say: the tiny model, each peft adapter's config and
tensors, the damaged ones really damaged, and the build-once cache rebuilding on a new recipe."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support.adapters import (
    CONFIG_NAME,
    SPECS,
    WEIGHTS_NAME,
    ensure_adapters,
    ensure_many_adapters,
)
from tests.support.cache import build_once, read_stamp
from tests.support.tinymodel import ensure_tiny_model

safetensors = pytest.importorskip("safetensors", reason="the fixtures need the vllm extra")


@pytest.fixture(scope="module")
def adapters(loraplane_home: Path) -> dict[str, Path]:
    return ensure_adapters(loraplane_home)


def config_of(path: Path) -> dict[str, object]:
    return dict(json.loads((path / CONFIG_NAME).read_text()))


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    with safetensors.safe_open(str(path / WEIGHTS_NAME), "pt") as weights:
        return {key: list(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118


def test_tiny_model_is_llama_shaped_and_its_vocabulary_matches_the_tokenizer(
    loraplane_home: Path,
) -> None:
    from transformers import AutoTokenizer

    model = ensure_tiny_model(loraplane_home)
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["dtype"]) == (
        2, 128, "bfloat16",
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert len(tokenizer) == config["vocab_size"]
    ids = tokenizer("The operator pushes adapters").input_ids
    assert ids[0] == tokenizer.bos_token_id == config["bos_token_id"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "The operator pushes adapters"


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if s.post is None])
def test_config_says_what_the_name_says(adapters: dict[str, Path], name: str) -> None:
    spec = SPECS[name]
    config = config_of(adapters[name])
    assert config["peft_type"] == "LORA"
    assert config["r"] == spec.r
    assert config["lora_alpha"] == 2 * spec.r
    # peft writes "all-linear" out as the full name of every module it chose.
    assert {str(t).rsplit(".", 1)[-1] for t in config["target_modules"]} == set(spec.modules)
    assert config["use_dora"] is (name == "dora")
    assert config["bias"] == ("all" if name == "bias" else "none")
    assert config["modules_to_save"] == (["lm_head"] if name == "modules-to-save" else None)
    for key, unset in [
        ("rank_pattern", {}),
        ("alpha_pattern", {}),
        ("use_rslora", False),
        ("layers_to_transform", None),
        ("lora_bias", False),
        ("init_lora_weights", True),
    ]:
        assert config[key] == spec.lora_kwargs.get(key, unset), key


@pytest.mark.parametrize("name", ["rank8", "rank16", "rank64", "rank8-mlp", "wrong-base"])
def test_tensor_shapes_follow_rank_and_base_width(adapters: dict[str, Path], name: str) -> None:
    spec = SPECS[name]
    shapes = tensor_shapes(adapters[name])
    modules = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in shapes}
    assert modules == set(spec.modules)
    assert len(shapes) == 2 * 2 * len(spec.modules)  # A and B, 2 layers
    for key, shape in shapes.items():
        if ".lora_A." in key:
            assert shape[0] == spec.r
        if ".q_proj.lora_A." in key:
            assert shape[1] == spec.shape.hidden_size


def test_rank_pattern_really_has_a_rank_32_tensor(adapters: dict[str, Path]) -> None:
    shapes = tensor_shapes(adapters["rank-pattern"])
    assert shapes["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == [32, 128]
    assert shapes["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"] == [8, 128]


def test_broken_extras_carry_what_vllm_refuses(adapters: dict[str, Path]) -> None:
    assert any("lora_magnitude_vector" in key for key in tensor_shapes(adapters["dora"]))
    assert "base_model.model.lm_head.weight" in tensor_shapes(adapters["modules-to-save"])
    assert any(key.endswith("lora_B.bias") for key in tensor_shapes(adapters["lora-bias"]))
    vocab = json.loads((ensure_tiny_model() / "config.json").read_text())["vocab_size"]
    resized = tensor_shapes(adapters["new-tokens"])
    assert resized["base_model.model.model.embed_tokens.weight"] == [vocab + 8, 128]
    assert resized["base_model.model.lm_head.weight"] == [vocab + 8, 128]
    assert "lora_alpha" not in config_of(adapters["no-alpha"])


@pytest.mark.parametrize(
    ("name", "base_weight"),
    [
        ("embed-default", "base_model.model.model.embed_tokens.base_layer.weight"),
        ("lm-head-default", "base_model.model.lm_head.base_layer.weight"),
    ],
)
def test_peft_default_save_keeps_the_base_embedding(
    adapters: dict[str, Path], name: str, base_weight: str
) -> None:
    vocab = json.loads((ensure_tiny_model() / "config.json").read_text())["vocab_size"]
    shapes = tensor_shapes(adapters[name])
    assert shapes[base_weight] == [vocab, 128]
    # The LoRA-only saves of the same modules do not have it.
    lora_only = {"embed-default": "rank8-embed", "lm-head-default": "lm-head"}[name]
    assert base_weight not in tensor_shapes(adapters[lora_only])
    assert len(shapes) == len(tensor_shapes(adapters[lora_only])) + 1


def test_layers_to_transform_has_tensors_for_those_layers_only(
    adapters: dict[str, Path],
) -> None:
    shapes = tensor_shapes(adapters["layers-to-transform"])
    assert {key.split(".layers.")[1].split(".")[0] for key in shapes} == {"0"}
    assert len(shapes) == 2 * len(SPECS["layers-to-transform"].modules)


def test_lora_b_is_not_peft_s_zero_init(adapters: dict[str, Path]) -> None:
    with safetensors.safe_open(str(adapters["rank8"] / WEIGHTS_NAME), "pt") as weights:
        for key in weights.keys():  # noqa: SIM118
            assert weights.get_tensor(key).abs().max() > 0.1, key


def test_rank8_v2_has_rank8_s_shape_and_other_weights(adapters: dict[str, Path]) -> None:
    assert tensor_shapes(adapters["rank8-v2"]) == tensor_shapes(adapters["rank8"])
    assert digest(adapters["rank8-v2"] / WEIGHTS_NAME) != digest(adapters["rank8"] / WEIGHTS_NAME)


def test_corrupt_header_is_unreadable(adapters: dict[str, Path]) -> None:
    with pytest.raises(safetensors.SafetensorError, match="header"):
        safetensors.safe_open(str(adapters["corrupt"] / WEIGHTS_NAME), "pt")


def test_corrupt_data_has_a_whole_header_and_is_still_unreadable(
    adapters: dict[str, Path],
) -> None:
    data = (adapters["corrupt-data"] / WEIGHTS_NAME).read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    assert any(key.endswith("lora_A.weight") for key in header)
    with pytest.raises(safetensors.SafetensorError, match="incomplete metadata"):
        safetensors.safe_open(str(adapters["corrupt-data"] / WEIGHTS_NAME), "pt")


def test_missing_pieces_are_missing(adapters: dict[str, Path]) -> None:
    assert not (adapters["no-config"] / CONFIG_NAME).exists()
    assert (adapters["no-config"] / WEIGHTS_NAME).exists()
    assert not (adapters["no-weights"] / WEIGHTS_NAME).exists()
    assert config_of(adapters["no-weights"])["r"] == 8
    assert tensor_shapes(adapters["no-tensors"]) == {}


def test_many_adapters_are_distinct_copies_of_rank8(
    loraplane_home: Path, adapters: dict[str, Path]
) -> None:
    many = ensure_many_adapters(loraplane_home, 5)
    assert [p.name for p in many] == [f"many-{i:03d}" for i in range(5)]
    assert len({digest(p / WEIGHTS_NAME) for p in many}) == 5
    for path in many:
        assert config_of(path) == config_of(adapters["rank8"])
        assert tensor_shapes(path) == tensor_shapes(adapters["rank8"])


def test_build_once_builds_once_and_rebuilds_on_a_new_recipe(tmp_path: Path) -> None:
    calls: list[str] = []

    def build(out: Path, text: str) -> None:
        calls.append(text)
        (out / "file").write_text(text)

    target = tmp_path / "thing"
    assert build_once(target, "r1", lambda out: build(out, "one")) == target
    build_once(target, "r1", lambda out: build(out, "again"))
    assert calls == ["one"]
    build_once(target, "r2", lambda out: build(out, "two"))
    assert (target / "file").read_text() == "two"
    assert read_stamp(target) == {"recipe": "r2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock", "thing"]


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def build(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(tmp_path / "thing", "r1", build)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

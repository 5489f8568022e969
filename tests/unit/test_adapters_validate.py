"""Pre-flight validation on the real peft fixtures against the tiny model's own config.json: each
broken adapter gets exactly the reason vLLM's refusal is classified under (measured against the
real server in tests/integration/test_vllm_contract.py), each good one gets no error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loraplane.adapters.inspect import Inspection, inspect_adapter
from loraplane.adapters.validate import (
    LLAMA_LIKE_LORA_MODULES,
    BaseModelFacts,
    ModuleShape,
    errors,
    llama_base_facts,
    validate,
    warnings,
)
from loraplane.vllm.errors import Reason
from tests.support import ensure_adapters, ensure_tiny_model

# The reason of the one error pre-flight reports for each fixture on a maxLoraRank-16 base.
EXPECTED_ERROR: dict[str, Reason | None] = {
    "rank8": None,
    "rank16": None,
    "rank8-mlp": None,
    "rank8-v2": None,
    "rank8-embed": None,
    "other-base-name": None,
    "rank64": Reason.RANK_EXCEEDS_MAX,
    "rank-pattern": Reason.RANK_EXCEEDS_MAX,
    "dora": Reason.DORA_NOT_SUPPORTED,
    "bias": Reason.BIAS_NOT_SUPPORTED,
    "modules-to-save": Reason.MODULES_TO_SAVE_NOT_SUPPORTED,
    "wrong-base": Reason.BASE_MODEL_SHAPE_MISMATCH,
    "lm-head": None,
    "embed-default": None,
    "lm-head-default": None,
    "all-linear": None,
    "alpha-pattern": None,
    "rslora": None,
    "layers-to-transform": None,
    "lora-bias": Reason.BIAS_NOT_SUPPORTED,
    "pissa": Reason.UNSUPPORTED_LORA_FEATURE,
    "new-tokens": Reason.UNSUPPORTED_TARGET_MODULES,
}


@pytest.fixture(scope="session")
def adapters() -> dict[str, Path]:
    return ensure_adapters()


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return ensure_tiny_model()


@pytest.fixture(scope="session")
def facts(tiny_dir: Path) -> BaseModelFacts:
    return llama_base_facts(tiny_dir, max_lora_rank=16, model_name=str(tiny_dir), deployment="tiny")


@pytest.mark.parametrize("name", sorted(EXPECTED_ERROR))
def test_fixture_reasons(adapters: dict[str, Path], facts: BaseModelFacts, name: str) -> None:
    findings = validate(inspect_adapter(adapters[name]), facts)
    expected = EXPECTED_ERROR[name]
    assert [f.reason for f in errors(findings)] == ([expected] if expected else [])


def test_rank_message_is_actionable(adapters: dict[str, Path], facts: BaseModelFacts) -> None:
    (finding,) = validate(inspect_adapter(adapters["rank64"]), facts)
    assert finding.message == (
        "rank 64 (r) exceeds maxLoraRank 16 of BaseModelDeployment tiny; raise "
        "spec.lora.maxLoraRank to 64 or use an adapter of rank <= 16"
    )
    assert finding.details == {"rank": 64, "maxLoraRank": 16}


def test_rank_pattern_value_is_checked(adapters: dict[str, Path], facts: BaseModelFacts) -> None:
    summary = inspect_adapter(adapters["rank-pattern"])
    assert summary.rank == 8
    (finding,) = validate(summary, facts)
    assert "rank 32 (rank_pattern 'layers.0.self_attn.q_proj')" in finding.message
    assert "raise spec.lora.maxLoraRank to 32" in finding.message
    assert validate(summary, facts.model_copy(update={"max_lora_rank": 32})) == []


def test_rank_suggests_the_next_allowed_max_rank(
    adapters: dict[str, Path], facts: BaseModelFacts
) -> None:
    summary = inspect_adapter(adapters["rank8"]).model_copy(update={"rank": 300})
    (finding,) = validate(summary, facts)
    assert "raise spec.lora.maxLoraRank to 320" in finding.message
    huge = summary.model_copy(update={"rank": 1024})
    assert "no maxLoraRank vLLM accepts" in validate(huge, facts)[0].message


def test_wrong_base_names_the_shapes(adapters: dict[str, Path], facts: BaseModelFacts) -> None:
    (finding,) = validate(inspect_adapter(adapters["wrong-base"]), facts)
    assert "q_proj is 256->256, the base's is 128->128" in finding.message
    assert "loraplane/tiny-llama-wide" in finding.message
    # The name differs too, but the shape error already says so: no extra warning.
    assert warnings(validate(inspect_adapter(adapters["wrong-base"]), facts)) == []


def test_other_base_name_is_only_a_warning(
    adapters: dict[str, Path], facts: BaseModelFacts
) -> None:
    findings = validate(inspect_adapter(adapters["other-base-name"]), facts)
    assert [(f.severity, f.reason) for f in findings] == [
        ("warning", Reason.BASE_MODEL_NAME_DIFFERS)
    ]
    assert "meta-llama/Llama-3.2-1B" in findings[0].message


def test_same_name_differently_spelled_is_no_warning(
    adapters: dict[str, Path], facts: BaseModelFacts
) -> None:
    summary = inspect_adapter(adapters["rank8"])
    assert validate(summary, facts.model_copy(update={"model_name": "someorg/Tiny-Llama/"})) == []


def test_unknown_target_module(tmp_path: Path, facts: BaseModelFacts) -> None:
    from tests.unit.test_adapters_inspect import write_adapter

    directory = write_adapter(
        tmp_path / "fc1",
        config={"target_modules": ["fc1", "q_proj", "c_attn"]},
        tensors={
            "base_model.model.model.layers.0.mlp.fc1.lora_A.weight": ("F32", [4, 128]),
            "base_model.model.model.layers.0.mlp.fc1.lora_B.weight": ("F32", [256, 4]),
        },
    )
    findings = validate(inspect_adapter(directory), facts)
    assert [(f.severity, f.reason) for f in findings] == [
        ("error", Reason.UNSUPPORTED_TARGET_MODULES),
        ("warning", Reason.UNSUPPORTED_TARGET_MODULES),
    ]
    assert "weights for fc1, which are not LoRA modules of the base model" in findings[0].message
    assert "c_attn" in findings[1].message


def test_resized_vocabulary_says_what_happened(
    adapters: dict[str, Path], facts: BaseModelFacts
) -> None:
    (finding,) = validate(inspect_adapter(adapters["new-tokens"]), facts)
    assert finding.message == (
        "the adapter holds whole weights of lm_head, model.embed_tokens, not LoRA matrices "
        "(peft saves the embeddings whole when tokens were added to the vocabulary for "
        "training); vLLM serves LoRA weights only: train without adding tokens, or merge the "
        "adapter into the base model"
    )


def test_layers_beyond_the_base(tmp_path: Path, facts: BaseModelFacts) -> None:
    from tests.unit.test_adapters_inspect import write_adapter

    directory = write_adapter(
        tmp_path / "deep",
        tensors={
            "base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight": ("F32", [4, 128]),
            "base_model.model.model.layers.5.self_attn.q_proj.lora_B.weight": ("F32", [128, 4]),
        },
    )
    (finding,) = validate(inspect_adapter(directory), facts)
    assert finding.reason == Reason.BASE_MODEL_SHAPE_MISMATCH
    assert "layer 5, the base has 2 layers" in finding.message


Q = "base_model.model.model.layers.0.self_attn.q_proj"
V = "base_model.model.model.layers.1.self_attn.v_proj"


@pytest.mark.parametrize(
    ("tensors", "says"),
    [
        (
            {f"{Q}.lora_A.weight": ("F32", [4, 128]), f"{V}.lora_A.weight": ("F32", [4, 128])},
            "model.layers.0.self_attn.q_proj has lora_A but no lora_B; "
            "model.layers.1.self_attn.v_proj has lora_A but no lora_B",
        ),
        ({f"{Q}.lora_B.weight": ("F32", [128, 4])}, "q_proj has lora_B but no lora_A"),
        (
            {f"{Q}.lora_A.weight": ("F32", [4, 128]), f"{Q}.lora_B.weight": ("F32", [128, 8])},
            "q_proj has lora_A of rank 4 but lora_B of rank 8",
        ),
    ],
    ids=["no-lora-B", "no-lora-A", "ranks-differ"],
)
def test_incomplete_lora_pairs_are_refused_naming_the_modules(
    tmp_path: Path, facts: BaseModelFacts, tensors: dict[str, Any], says: str
) -> None:
    """vLLM 0.32 answers a lora_A without lora_B with "unsupported operand type(s) for *=:
    'NoneType' and 'float'"; the safetensors header already shows it."""
    from tests.unit.test_adapters_inspect import write_adapter

    directory = write_adapter(tmp_path / "a", config={"r": 8}, tensors=tensors)
    found = errors(validate(inspect_adapter(directory), facts))
    assert [f.reason for f in found] == [Reason.INCOMPLETE_LORA_WEIGHTS]
    assert says in found[0].message
    assert "save the adapter again with peft's save_pretrained" in found[0].message


def test_many_incomplete_modules_are_counted_not_listed() -> None:
    from loraplane.adapters.inspect import ModuleWeights

    modules = {f"model.layers.{i}.q_proj": ModuleWeights(lora_a=(8, 128)) for i in range(9)}
    (finding,) = validate(base_summary(modules=modules), BaseModelFacts(max_lora_rank=16))
    assert finding.message.count("has lora_A but no lora_B") == 5
    assert "; and 4 more" in finding.message
    assert len(finding.details["modules"]) == 9


def base_summary(**update: Any) -> Inspection:
    summary = Inspection(path="/x", rank=8, alpha=16, size_bytes=0, digest="")
    return summary.model_copy(update=update)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"peft_type": "IA3"}, Reason.NOT_LORA),
        ({"lora_bias": True}, Reason.BIAS_NOT_SUPPORTED),
        ({"bias": "lora_only"}, Reason.BIAS_NOT_SUPPORTED),
        ({"modules_to_save": ["embed_tokens", "score"]}, Reason.MODULES_TO_SAVE_NOT_SUPPORTED),
        ({"unsupported_features": {"use_qalora": True}}, Reason.UNSUPPORTED_LORA_FEATURE),
        ({"rank_pattern": {"q_proj": 64}}, Reason.RANK_EXCEEDS_MAX),
    ],
)
def test_config_only_checks(facts: BaseModelFacts, update: dict[str, Any], reason: Reason) -> None:
    assert [f.reason for f in validate(base_summary(**update), facts)] == [reason]


@pytest.mark.parametrize("allowed", [None, [], ["classifier"], ["classifier", "score"]])
def test_modules_to_save_vllm_accepts(facts: BaseModelFacts, allowed: list[str] | None) -> None:
    assert validate(base_summary(modules_to_save=allowed), facts) == []


def test_unknown_base_skips_module_and_shape_checks(
    adapters: dict[str, Path],
) -> None:
    facts = BaseModelFacts(max_lora_rank=16)
    assert validate(inspect_adapter(adapters["wrong-base"]), facts) == []


def test_errors_come_before_warnings(adapters: dict[str, Path], facts: BaseModelFacts) -> None:
    summary = inspect_adapter(adapters["other-base-name"]).model_copy(update={"use_dora": True})
    assert [f.severity for f in validate(summary, facts)] == ["error", "warning"]


def test_llama_facts_from_config(tiny_dir: Path) -> None:
    config = json.loads((tiny_dir / "config.json").read_text())
    facts = llama_base_facts(config, max_lora_rank=8)
    assert facts.lora_target_modules == LLAMA_LIKE_LORA_MODULES
    assert facts.module_shapes is not None
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    assert facts.module_shapes["embed_tokens"] == ModuleShape(
        in_features=vocab, out_features=hidden
    )
    assert facts.module_shapes["lm_head"] == ModuleShape(in_features=hidden, out_features=vocab)
    assert facts.num_hidden_layers == config["num_hidden_layers"]


def test_llama_facts_8b_gqa_and_explicit_head_dim() -> None:
    llama_8b = {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "num_hidden_layers": 32,
    }
    shapes = llama_base_facts(llama_8b, max_lora_rank=64).module_shapes
    assert shapes is not None
    assert shapes["k_proj"] == ModuleShape(in_features=4096, out_features=1024)
    assert shapes["down_proj"] == ModuleShape(in_features=14336, out_features=4096)
    qwen3 = {**llama_8b, "model_type": "qwen3", "head_dim": 128, "hidden_size": 2560}
    shapes = llama_base_facts(qwen3, max_lora_rank=64).module_shapes
    assert shapes is not None
    assert shapes["q_proj"] == ModuleShape(in_features=2560, out_features=4096)
    assert shapes["o_proj"] == ModuleShape(in_features=4096, out_features=2560)


@pytest.mark.parametrize(
    "config", [{"model_type": "gpt2"}, {"model_type": "llama", "hidden_size": 8}]
)
def test_llama_facts_refuses_what_it_cannot_describe(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        llama_base_facts(config, max_lora_rank=8)


def test_preflight_keeps_refused_adapters_out_of_the_store(
    adapters: dict[str, Path], facts: BaseModelFacts, tmp_path: Path
) -> None:
    from loraplane.adapters.sources import fetch_path

    class Refused(Exception):
        pass

    def verify(summary: Inspection) -> None:
        """What the agent's store verifies a fetch with: an error refuses, a warning does not."""
        found = validate(summary, facts)
        if errors(found):
            raise Refused([f.reason for f in found])

    with pytest.raises(Refused) as info:
        fetch_path(adapters["dora"], tmp_path, "dora", verify=verify)
    assert info.value.args[0] == [Reason.DORA_NOT_SUPPORTED]
    assert list((tmp_path / "dora").iterdir()) == []
    # Warnings do not refuse.
    result = fetch_path(adapters["other-base-name"], tmp_path, "ok", verify=verify)
    assert result.created


def test_summarize_from_hub_metadata_matches_local_inspection(
    adapters: dict[str, Path], facts: BaseModelFacts
) -> None:
    """What the central pre-flight builds from a hub's config + header equals the local view."""
    from loraplane.adapters.inspect import parse_config, read_safetensors_header, summarize

    directory = adapters["rank64"]
    local = inspect_adapter(directory)
    remote = summarize(
        parse_config((directory / "adapter_config.json").read_bytes()),
        read_safetensors_header(directory / "adapter_model.safetensors"),
        path="hf://org/rank64@abc",
        weights_file="adapter_model.safetensors",
        size_bytes=local.size_bytes,
    )
    assert remote.modules == local.modules and remote.max_rank == 64
    assert validate(remote, facts) == validate(local, facts)

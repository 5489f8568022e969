"""The streamed merge against the reference users trust: peft's merge_and_unload, same inputs.

Real peft adapters on the tiny model (tests/support): the merged checkpoint loaded by
transformers must hold exactly the weights peft's merge_and_unload gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraplane.merge.weights import MergeError, merge_checkpoint
from tests.support import ensure_adapter, ensure_tiny_model

# Every kind of scale peft knows: plain alpha/r, rank_pattern, alpha_pattern, rsLoRA, all linear
# modules, the MLP, and LoRA on the embedding.
ADAPTERS = ["rank8", "rank16", "rank8-mlp", "rank-pattern", "alpha-pattern", "rslora", "all-linear"]


def _peft_merged(base: Path, adapter: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("name", ADAPTERS)
@pytest.mark.parametrize(("dtype", "out"), [(torch.bfloat16, None), (torch.float32, "F32")])
def test_merge_equals_peft_merge_and_unload(
    tmp_path: Path, name: str, dtype: torch.dtype, out: str | None
) -> None:
    base, adapter = ensure_tiny_model(), ensure_adapter(name)
    report = merge_checkpoint(base, adapter, tmp_path / "merged", out)
    got = load_file(tmp_path / "merged" / "model.safetensors")
    want = _peft_merged(base, adapter, dtype)
    assert report.merged_modules > 0
    assert set(got) == set(want)
    for key, tensor in got.items():
        assert tensor.dtype == want[key].dtype, key
        assert torch.equal(tensor, want[key]), key


def test_embedding_lora_within_one_rounding_of_peft_in_bf16(tmp_path: Path) -> None:
    """peft keeps an embedding's LoRA in the base's bf16 and rounds its delta before adding it;
    the merge rounds once, at the end: in float32 the two are equal, in bf16 one rounding apart."""
    base, adapter = ensure_tiny_model(), ensure_adapter("rank8-embed")
    merge_checkpoint(base, adapter, tmp_path / "f32", "F32")
    got = load_file(tmp_path / "f32" / "model.safetensors")
    want = _peft_merged(base, adapter, torch.float32)
    assert all(torch.equal(got[k], want[k]) for k in got)
    merge_checkpoint(base, adapter, tmp_path / "bf16", None)
    got = load_file(tmp_path / "bf16" / "model.safetensors")
    want = _peft_merged(base, adapter, torch.bfloat16)
    embed = "model.embed_tokens.weight"
    assert all(torch.equal(got[k], want[k]) for k in got if k != embed)
    torch.testing.assert_close(got[embed], want[embed], rtol=2**-7, atol=2**-7)


def test_merged_directory_is_a_whole_model(tmp_path: Path) -> None:
    base = ensure_tiny_model()
    merge_checkpoint(base, ensure_adapter("rank8"), tmp_path / "m", "F32")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= names
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == json.loads(
        (base / "config.json").read_text()
    )


def test_adapter_of_another_base_is_a_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(MergeError) as err:
        merge_checkpoint(ensure_tiny_model(), ensure_adapter("wrong-base"), tmp_path / "m")
    assert err.value.reason == "MergeShapeMismatch"
    assert "another base model" in err.value.message


def test_sharded_checkpoint_keeps_its_index(tmp_path: Path) -> None:
    """A checkpoint in several files (every large model): each file streamed on its own."""
    base = ensure_tiny_model()
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    tensors = load_file(base / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors":
              names[1::2]}  # fmt: skip
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, sharded / file, metadata={"format": "pt"})
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for p in base.iterdir():
        if not p.name.endswith(".safetensors"):
            (sharded / p.name).write_bytes(p.read_bytes())
    adapter = ensure_adapter("all-linear")
    merge_checkpoint(sharded, adapter, tmp_path / "m", None)
    got = {k: v for f in halves for k, v in load_file(tmp_path / "m" / f).items()}
    want = _peft_merged(base, adapter, torch.bfloat16)
    assert all(torch.equal(got[k], want[k]) for k in want)
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == weight_map

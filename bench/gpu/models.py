"""The kit's models, built on the GPU machine (no hub there): a Llama-3.1-8B shape with random
bf16 weights, LoRA adapters in peft's layout, a real merge of one, and a GPTQ int4 checkpoint.

Throughput does not depend on the weights' values, only on their shapes and types. Tensors are
drawn on the GPU from seeded generators and written with safetensors, shard by shard, so an 8B
model takes seconds of compute and the disk's time to write 16 GB. Needs torch, safetensors,
tokenizers and transformers (the lent machine has them); nothing here imports vLLM.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QV_MODULES = ("q_proj", "v_proj")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
WEIGHT_STD = 0.02
SHARD_BYTES = 4 * 2**30
STAMP = ".kit-built"


@dataclass(frozen=True)
class Shape:
    hidden: int = 4096
    intermediate: int = 14336
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 128256
    max_positions: int = 8192

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear(self, module: str) -> tuple[int, int]:
        """(out, in) of a linear module."""
        kv = self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, self.hidden),
            "k_proj": (kv, self.hidden),
            "v_proj": (kv, self.hidden),
            "o_proj": (self.hidden, self.hidden),
            "gate_proj": (self.intermediate, self.hidden),
            "up_proj": (self.intermediate, self.hidden),
            "down_proj": (self.hidden, self.intermediate),
        }[module]


LLAMA_8B = Shape()


def module_path(layer: int, module: str) -> str:
    group = "self_attn" if module in ATTENTION else "mlp"
    return f"model.layers.{layer}.{group}.{module}"


def config(shape: Shape, dtype: str = "bfloat16") -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.max_positions,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "dtype": dtype,  # transformers 5
        "torch_dtype": dtype,  # transformers 4
        "attention_bias": False,
        "mlp_bias": False,
    }


def tensor_shapes(shape: Shape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of the model in file order."""
    yield "model.embed_tokens.weight", (shape.vocab, shape.hidden)
    for layer in range(shape.layers):
        yield f"model.layers.{layer}.input_layernorm.weight", (shape.hidden,)
        for module in ALL_MODULES:
            yield f"{module_path(layer, module)}.weight", shape.linear(module)
        yield f"model.layers.{layer}.post_attention_layernorm.weight", (shape.hidden,)
    yield "model.norm.weight", (shape.hidden,)
    yield "lm_head.weight", (shape.vocab, shape.hidden)


def shards(items: Sequence[tuple[str, int]], limit: int = SHARD_BYTES) -> list[list[str]]:
    """Names grouped into shards of at most `limit` bytes (a larger tensor gets its own)."""
    out: list[list[str]] = [[]]
    size = 0
    for name, nbytes in items:
        if out[-1] and size + nbytes > limit:
            out.append([])
            size = 0
        out[-1].append(name)
        size += nbytes
    return out


def built(directory: Path) -> bool:
    return (directory / STAMP).exists()


def _finish(directory: Path, what: dict[str, Any]) -> None:
    (directory / STAMP).write_text(json.dumps(what) + "\n")


def write_tokenizer(directory: Path, vocab: int) -> None:
    """A word-level tokenizer with exactly `vocab` ids, so every id the model emits decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {BOS: 0, EOS: 1, UNK: 2, **{f"w{i}": i for i in range(3, vocab)}}
    raw = Tokenizer(models.WordLevel(vocab=words, unk_token=UNK))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    tokenizer.save_pretrained(directory)


def _save_sharded(
    directory: Path,
    names: list[tuple[str, tuple[int, ...]]],
    make: Callable[[str], Any],
    itemsize: int,
) -> None:
    from safetensors.torch import save_file

    groups = shards([(n, math.prod(s) * itemsize) for n, s in names])
    index: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in group:
            t = make(name).contiguous().cpu()
            total += t.numel() * t.element_size()
            tensors[name] = t
            index[name] = file
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1)
    )


def build_base(directory: Path, shape: Shape = LLAMA_8B, seed: int = 0) -> Path:
    """Random bf16 weights (normal, std 0.02; norms 1) in the Llama layout."""
    import torch

    if built(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    names = list(tensor_shapes(shape))
    sizes = dict(names)
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def make(name: str) -> Any:
        size = sizes[name]
        if len(size) == 1:
            return torch.ones(size, dtype=torch.bfloat16, device="cuda")
        t = torch.empty(size, dtype=torch.bfloat16, device="cuda")
        return t.normal_(0.0, WEIGHT_STD, generator=gen)

    _save_sharded(directory, names, make, 2)
    (directory / "config.json").write_text(json.dumps(config(shape), indent=1))
    write_tokenizer(directory, shape.vocab)
    _finish(directory, {"shape": shape.__dict__, "seed": seed})
    return directory


def adapter_config(rank: int, modules: Sequence[str], base: str) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "use_rslora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }


def peft_key(layer: int, module: str, which: str) -> str:
    return f"base_model.model.{module_path(layer, module)}.lora_{which}.weight"


def build_adapter(
    directory: Path,
    rank: int,
    modules: Sequence[str],
    shape: Shape = LLAMA_8B,
    seed: int = 0,
    base: str = "kit-llama-8b",
) -> Path:
    """Random A (std 1/sqrt(in)) and B (std 0.002) for each target module of each layer."""
    import torch
    from safetensors.torch import save_file

    if built(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    tensors = {}
    for layer in range(shape.layers):
        for module in modules:
            out, inp = shape.linear(module)
            a = torch.empty((rank, inp), dtype=torch.bfloat16, device="cuda")
            b = torch.empty((out, rank), dtype=torch.bfloat16, device="cuda")
            tensors[peft_key(layer, module, "A")] = a.normal_(0, inp**-0.5, generator=gen).cpu()
            tensors[peft_key(layer, module, "B")] = b.normal_(0, 0.002, generator=gen).cpu()
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    (directory / "adapter_config.json").write_text(
        json.dumps(adapter_config(rank, modules, base), indent=1)
    )
    _finish(directory, {"rank": rank, "modules": list(modules), "seed": seed})
    return directory


def merge_weight(weight: Any, a: Any, b: Any, scaling: float) -> Any:
    """peft's merge of one linear: W + (B @ A) * scaling, in W's dtype (lora/layer.py)."""
    return weight + (b.to(weight.dtype) @ a.to(weight.dtype)) * scaling


def merge(base: Path, adapter: Path, directory: Path) -> Path:
    """The adapter merged into the base, streamed shard by shard on the GPU (what peft's
    merge_and_unload computes, without the whole model in memory)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if built(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scaling = cfg["lora_alpha"] / cfg["r"]
    lora: dict[str, Any] = {}
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt", device="cuda") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            lora[key] = f.get_tensor(key)
    index = json.loads((base / "model.safetensors.index.json").read_text())
    merged = 0
    for file in sorted(set(index["weight_map"].values())):
        tensors = {}
        with safe_open(str(base / file), "pt", device="cuda") as f:
            for name in f.keys():  # noqa: SIM118
                t = f.get_tensor(name)
                prefix = "base_model.model." + name.removesuffix(".weight")
                a, b = lora.get(prefix + ".lora_A.weight"), lora.get(prefix + ".lora_B.weight")
                if a is not None and b is not None:
                    t = merge_weight(t, a, b, scaling)
                    merged += 1
                tensors[name] = t.contiguous().cpu()
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
        del tensors
        torch.cuda.empty_cache()
    if merged != len(lora) // 2:
        raise RuntimeError(f"merged {merged} modules of the adapter's {len(lora) // 2}")
    for item in base.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and item.name != STAMP:
            shutil.copy2(item, directory / item.name)
    _finish(directory, {"base": str(base), "adapter": str(adapter), "modules": merged})
    return directory


GPTQ_GROUP = 128
GPTQ_BITS = 4


def gptq_config() -> dict[str, Any]:
    return {
        "quant_method": "gptq",
        "bits": GPTQ_BITS,
        "group_size": GPTQ_GROUP,
        "desc_act": False,
        "sym": True,
        "static_groups": False,
        "true_sequential": True,
        "damp_percent": 0.01,
        "checkpoint_format": "gptq",
    }


def gptq_shapes(shape: Shape) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """Every tensor of the GPTQ checkpoint: (name, shape, dtype) in GPTQ's (AutoGPTQ) format:
    qweight int32 [in/8, out] (eight 4-bit values along the input), qzeros int32
    [in/group, out/8], scales float16 [in/group, out], g_idx int32 [in]."""
    pack = 32 // GPTQ_BITS
    for name, size in tensor_shapes(shape):
        module = name.removesuffix(".weight")
        if len(size) == 2 and module.rsplit(".", 1)[-1] in ALL_MODULES:
            out, inp = size
            yield f"{module}.qweight", (inp // pack, out), "int32"
            yield f"{module}.qzeros", (inp // GPTQ_GROUP, out // pack), "int32"
            yield f"{module}.scales", (inp // GPTQ_GROUP, out), "float16"
            yield f"{module}.g_idx", (inp,), "int32"
        else:
            yield name, size, "float16"


def build_gptq(directory: Path, shape: Shape = LLAMA_8B, seed: int = 0) -> Path:
    """Random int4 weights in GPTQ's format (symmetric, group 128; zero points 8), float16 rest."""
    import torch

    if built(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    items = list(gptq_shapes(shape))
    info = {n: (s, d) for n, s, d in items}
    gen = torch.Generator(device="cuda").manual_seed(seed)
    # GPTQ's v1 format stores each zero point minus one: 7 in every nibble means 8.
    zeros = 0x77777777

    def make(name: str) -> Any:
        size, _dtype = info[name]
        if name.endswith(".qweight"):
            return torch.randint(
                -(2**31), 2**31 - 1, size, dtype=torch.int32, device="cuda", generator=gen
            )
        if name.endswith(".qzeros"):
            return torch.full(size, zeros, dtype=torch.int32, device="cuda")
        if name.endswith(".scales"):
            t = torch.empty(size, dtype=torch.float16, device="cuda")
            return t.uniform_(0.5 * WEIGHT_STD / 4, 1.5 * WEIGHT_STD / 4, generator=gen)
        if name.endswith(".g_idx"):
            return torch.arange(size[0], dtype=torch.int32, device="cuda") // GPTQ_GROUP
        if len(size) == 1:
            return torch.ones(size, dtype=torch.float16, device="cuda")
        t = torch.empty(size, dtype=torch.float16, device="cuda")
        return t.normal_(0.0, WEIGHT_STD, generator=gen)

    _save_sharded(directory, [(n, s) for n, s, _ in items], make, 2)
    cfg = config(shape, dtype="float16")
    cfg["quantization_config"] = gptq_config()
    (directory / "config.json").write_text(json.dumps(cfg, indent=1))
    write_tokenizer(directory, shape.vocab)
    _finish(directory, {"shape": shape.__dict__, "seed": seed, "gptq": gptq_config()})
    return directory


def size_gib(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 2**30

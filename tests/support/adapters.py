"""Real peft LoRA adapters for the tiny model: valid ones of several ranks and shapes, and the
broken kinds that vLLM refuses (DESIGN.md §4), each built once into
$LORAPLANE_HOME/adapters/<name>/.

peft initialises lora_B to zero, which would make every adapter a no-op. The weights here are
overwritten with seeded random values large enough that greedy decoding through an adapter
visibly differs from the base model, so tests can tell "served by the adapter" from "served by
the base".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .cache import build_once, is_current, loraplane_home
from .tinymodel import (
    DEFAULT_SHAPE,
    MODEL_DIR_NAME,
    WIDE_SHAPE,
    TinyShape,
    ensure_tiny_model,
    llama_config,
    random_llama,
)
from .tinymodel import (
    RECIPE_VERSION as MODEL_RECIPE,
)

# Bump when a recipe below changes; the model's recipe is part of every adapter's stamp too,
# since an adapter is only meaningful for the exact base it was made for.
RECIPE_VERSION = "adapters-v4"

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHT_STD = 0.1  # of lora_A and lora_B; with alpha = 2r this moves greedy output reliably

ATTN_QV = ["q_proj", "v_proj"]
ATTN_ALL = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
# What peft's target_modules="all-linear" expands to on a causal LM: every linear layer but the
# output layer.
ALL_LINEAR = [*ATTN_ALL, *MLP]

WIDE_BASE_NAME = "loraplane/tiny-llama-wide"
OTHER_BASE_NAME = "meta-llama/Llama-3.2-1B"


@dataclass(frozen=True)
class AdapterSpec:
    """How one fixture adapter is made, and whether vLLM 0.32 (max_lora_rank 16) accepts it."""

    r: int
    target_modules: list[str] | Literal["all-linear"]
    seed: int
    valid: bool
    description: str
    lora_kwargs: dict[str, Any] = field(default_factory=dict)
    shape: TinyShape = DEFAULT_SHAPE
    base_name: str | None = None  # None: the tiny model's directory, as peft records it
    post: str | None = None  # a damage applied after saving, see _POST
    # peft's default: with embed_tokens or lm_head targeted, "auto" also saves the base layer's
    # whole weight (`...embed_tokens.base_layer.weight`) beside the LoRA matrices.
    save_embedding_layers: bool | Literal["auto"] = "auto"
    added_tokens: int = 0  # grow the base's vocabulary before training, as for new special tokens

    @property
    def modules(self) -> list[str]:
        """The modules peft puts LoRA on, with "all-linear" expanded as peft expands it."""
        return ALL_LINEAR if isinstance(self.target_modules, str) else self.target_modules


SPECS: dict[str, AdapterSpec] = {
    "rank8": AdapterSpec(8, ATTN_QV, 8, True, "rank 8 on q_proj and v_proj"),
    "rank16": AdapterSpec(16, ATTN_ALL, 16, True, "rank 16 on all attention projections"),
    "rank64": AdapterSpec(64, ATTN_QV, 64, False, "rank 64: above a maxLoraRank-16 base"),
    "rank8-mlp": AdapterSpec(8, MLP, 81, True, "rank 8 on the MLP projections"),
    "rank8-v2": AdapterSpec(8, ATTN_QV, 82, True, "rank8's shape, other weights: a new revision"),
    "rank8-embed": AdapterSpec(
        8,
        ["embed_tokens", "q_proj", "v_proj"],
        83,
        True,
        "LoRA on embed_tokens, the LoRA matrices only (vLLM accepts)",
        save_embedding_layers=False,
    ),
    "other-base-name": AdapterSpec(
        8,
        ATTN_QV,
        84,
        True,
        "config names another base model; shapes match (vLLM accepts)",
        base_name=OTHER_BASE_NAME,
    ),
    "dora": AdapterSpec(8, ATTN_QV, 90, False, "DoRA", lora_kwargs={"use_dora": True}),
    "bias": AdapterSpec(8, ATTN_QV, 91, False, 'bias="all"', lora_kwargs={"bias": "all"}),
    "modules-to-save": AdapterSpec(
        8,
        ATTN_QV,
        92,
        False,
        'modules_to_save=["lm_head"]',
        lora_kwargs={"modules_to_save": ["lm_head"]},
    ),
    "wrong-base": AdapterSpec(
        8,
        ATTN_QV,
        93,
        False,
        "trained on a tiny Llama of hidden size 256 (base: 128)",
        shape=WIDE_SHAPE,
        base_name=WIDE_BASE_NAME,
    ),
    "rank-pattern": AdapterSpec(
        8,
        ATTN_QV,
        94,
        False,
        "r=8 with a rank_pattern entry of 32",
        lora_kwargs={"rank_pattern": {"layers.0.self_attn.q_proj": 32}},
    ),
    "corrupt": AdapterSpec(
        8,
        ATTN_QV,
        8,
        False,
        "rank8 with adapter_model.safetensors cut inside its header",
        post="truncate-header",
    ),
    "corrupt-data": AdapterSpec(
        8,
        ATTN_QV,
        8,
        False,
        "rank8 with a whole header but half its tensor data",
        post="truncate-data",
    ),
    "no-config": AdapterSpec(
        8, ATTN_QV, 8, False, "rank8 without adapter_config.json", post="drop-config"
    ),
    "no-tensors": AdapterSpec(
        8,
        ATTN_QV,
        8,
        False,
        "a valid config and a safetensors file with no tensors",
        post="empty-tensors",
    ),
    "no-weights": AdapterSpec(
        8, ATTN_QV, 8, False, "a valid config and no weights file at all", post="drop-weights"
    ),
    "lm-head": AdapterSpec(
        8,
        ["lm_head"],
        85,
        True,
        "LoRA on lm_head, the LoRA matrices only (vLLM 0.32 accepts)",
        save_embedding_layers=False,
    ),
    # What peft options users set often, each saved as peft saves it by default.
    "embed-default": AdapterSpec(
        8,
        ["embed_tokens", "q_proj", "v_proj"],
        86,
        True,
        "LoRA on embed_tokens, saved with peft's defaults (the base embedding beside it)",
    ),
    "lm-head-default": AdapterSpec(
        8,
        ["lm_head"],
        87,
        True,
        "LoRA on lm_head, saved with peft's defaults (the base lm_head beside it)",
    ),
    "all-linear": AdapterSpec(8, "all-linear", 88, True, 'target_modules="all-linear"'),
    "alpha-pattern": AdapterSpec(
        8,
        ATTN_QV,
        89,
        True,
        "an alpha_pattern entry of 64 for one module",
        lora_kwargs={"alpha_pattern": {"layers.0.self_attn.q_proj": 64}},
    ),
    "rslora": AdapterSpec(
        8,
        ATTN_QV,
        95,
        True,
        "use_rslora (scaling alpha/sqrt(r))",
        lora_kwargs={"use_rslora": True},
    ),
    "layers-to-transform": AdapterSpec(
        8,
        ATTN_QV,
        96,
        True,
        "layers_to_transform=[0]: LoRA on the first layer only",
        lora_kwargs={"layers_to_transform": [0]},
    ),
    "lora-bias": AdapterSpec(
        8,
        ATTN_QV,
        97,
        False,
        "lora_bias=True: a trained bias on lora_B",
        lora_kwargs={"lora_bias": True},
    ),
    "pissa": AdapterSpec(
        8,
        ATTN_QV,
        98,
        False,
        'init_lora_weights="pissa", not converted: it needs PiSSA\'s modified base weights',
        lora_kwargs={"init_lora_weights": "pissa"},
    ),
    "new-tokens": AdapterSpec(
        8,
        ATTN_QV,
        99,
        False,
        "trained after adding 8 tokens to the vocabulary: peft saves the resized embeddings",
        added_tokens=8,
    ),
    "no-alpha": AdapterSpec(
        8, ATTN_QV, 8, False, "rank8 with lora_alpha removed from its config", post="drop-alpha"
    ),
}

VALID = [name for name, spec in SPECS.items() if spec.valid]
BROKEN = [name for name, spec in SPECS.items() if not spec.valid]
# What `make demo` serves (examples/tiny/adapters.yaml's sources, /adapter-sources/<name>): three
# adapters and one refused for its rank. `make demo-fixtures` builds only these.
DEMO = ("rank8", "rank16", "all-linear", "rank64")


def _truncate_header(out: Path) -> None:
    weights = out / WEIGHTS_NAME
    data = weights.read_bytes()
    # Keep the 8-byte length prefix and half the JSON header: the header cannot be parsed.
    header_len = int.from_bytes(data[:8], "little")
    weights.write_bytes(data[: 8 + header_len // 2])


def _truncate_data(out: Path) -> None:
    weights = out / WEIGHTS_NAME
    data = weights.read_bytes()
    # The header stays intact (a header-only reader sees every tensor); the data does not:
    # what an interrupted download leaves behind.
    header_len = int.from_bytes(data[:8], "little")
    weights.write_bytes(data[: 8 + header_len + (len(data) - 8 - header_len) // 2])


def _drop_config(out: Path) -> None:
    (out / CONFIG_NAME).unlink()


def _drop_alpha(out: Path) -> None:
    config = json.loads((out / CONFIG_NAME).read_text())
    del config["lora_alpha"]
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _drop_weights(out: Path) -> None:
    (out / WEIGHTS_NAME).unlink()


def _empty_tensors(out: Path) -> None:
    from safetensors.torch import save_file

    save_file({}, str(out / WEIGHTS_NAME), metadata={"format": "pt"})


_POST: dict[str, Callable[[Path], None]] = {
    "truncate-header": _truncate_header,
    "truncate-data": _truncate_data,
    "drop-config": _drop_config,
    "empty-tensors": _empty_tensors,
    "drop-weights": _drop_weights,
    "drop-alpha": _drop_alpha,
}


def _base_model(model_dir: Path, shape: TinyShape) -> Any:
    """The float32 base to attach LoRA to: the real tiny model, or a random one of `shape`."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    if shape == DEFAULT_SHAPE:
        return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base_config = AutoConfig.from_pretrained(model_dir)
    special = {
        "<s>": base_config.bos_token_id,
        "</s>": base_config.eos_token_id,
        "<pad>": base_config.pad_token_id,
    }
    return random_llama(llama_config(base_config.vocab_size, shape, special))


def _randomize_lora(peft_model: Any, seed: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if ".lora_A." in name or ".lora_B." in name or "lora_embedding_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * WEIGHT_STD)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence what peft and transformers say while a fixture is made on purpose the way they
    warn about (lora_bias on a layer without bias, save_embedding_layers switched on, resized
    embeddings): the fixture's description already says it, the warning is only noise."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def build_adapter(
    out: Path, spec: AdapterSpec, model_dir: Path, *, safe_serialization: bool = True
) -> None:
    """Write one adapter with peft's own save_pretrained into `out` (safe_serialization=False:
    adapter_model.bin, a torch pickle, as older peft versions saved)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with _quiet_libraries():
        _build_adapter(out, spec, model_dir, safe_serialization)


def _build_adapter(out: Path, spec: AdapterSpec, model_dir: Path, safe_serialization: bool) -> None:
    from peft import LoraConfig, get_peft_model

    base = _base_model(model_dir, spec.shape)
    if spec.added_tokens:
        base.resize_token_embeddings(base.config.vocab_size + spec.added_tokens)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=2 * spec.r,
        target_modules=spec.target_modules,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        **spec.lora_kwargs,
    )
    peft_model = get_peft_model(base, config)
    _randomize_lora(peft_model, spec.seed)
    peft_model.save_pretrained(
        str(out),
        save_embedding_layers=spec.save_embedding_layers,
        safe_serialization=safe_serialization,
    )

    config_path = out / CONFIG_NAME
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = spec.base_name or str(model_dir)
    # peft stores target_modules from a set: its order changes with PYTHONHASHSEED.
    data["target_modules"] = sorted(data["target_modules"])
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (out / "README.md").unlink(missing_ok=True)  # peft's model-card stub: noise in a fixture
    if spec.post:
        _POST[spec.post](out)


RECIPE = f"{RECIPE_VERSION}+{MODEL_RECIPE}"


def ensure_adapter(name: str, home: Path | None = None) -> Path:
    """One fixture adapter by name (see SPECS), built on first use."""
    home = home or loraplane_home()
    spec = SPECS[name]
    model_dir = ensure_tiny_model(home)
    target = home / "adapters" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return build_once(
        target,
        RECIPE,
        lambda out: build_adapter(out, spec, model_dir),
        extra_stamp={"description": spec.description, "valid_for_vllm": spec.valid},
    )


def ensure_adapters(home: Path | None = None) -> dict[str, Path]:
    """Every fixture adapter of SPECS, name -> directory."""
    return {name: ensure_adapter(name, home) for name in SPECS}


def ensure_many_adapters(home: Path | None = None, n: int = 50) -> list[Path]:
    """`n` distinct valid rank-8 adapters (adapters/many/many-000 ...), for scale benchmarks.

    Each has rank8's config and tensor names with its own seeded random weights: cheap to make
    (no peft, no model), distinct in content, digest and greedy output, loadable like rank8.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    home = home or loraplane_home()
    source = ensure_adapter("rank8", home)
    parent = home / "adapters" / "many"
    parent.mkdir(parents=True, exist_ok=True)
    with safe_open(str(source / WEIGHTS_NAME), "pt") as weights:
        shapes = {key: list(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118

    def build(out: Path, index: int) -> None:
        generator = torch.Generator().manual_seed(10_000 + index)
        tensors = {
            key: torch.randn(shape, generator=generator) * WEIGHT_STD
            for key, shape in sorted(shapes.items())
        }
        save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        shutil.copy2(source / CONFIG_NAME, out / CONFIG_NAME)

    def builder(index: int) -> Callable[[Path], None]:
        return lambda out: build(out, index)

    recipe = f"{RECIPE_VERSION}+{MODEL_RECIPE}+many"
    return [build_once(parent / f"many-{i:03d}", recipe, builder(i)) for i in range(n)]


def main(argv: list[str]) -> int:
    """`make fixtures` (every adapter of SPECS) and `make demo-fixtures` (`--demo`: DEMO only),
    printing one line per thing built and a summary."""
    names = list(DEMO) if argv == ["--demo"] else list(SPECS) if not argv else None
    if names is None:
        print("usage: main([] | ['--demo'])", file=sys.stderr)
        return 2
    home = loraplane_home()
    start = time.monotonic()
    built = False
    model = home / "models" / MODEL_DIR_NAME
    if not is_current(model, MODEL_RECIPE):
        print(f"[fixtures] building the tiny model in {model}", flush=True)
        built = True
    ensure_tiny_model(home)
    todo = [n for n in names if not is_current(home / "adapters" / n, RECIPE)]
    if todo:
        print(f"[fixtures] building {len(todo)} adapters: {' '.join(todo)}", flush=True)
        built = True
    for name in names:
        ensure_adapter(name, home)
    took = f"built in {time.monotonic() - start:.0f} s" if built else "already built"
    print(f"[fixtures] the tiny model and {len(names)} adapters in {home} ({took})")
    return 0


def adapter_name_for(path: Path) -> str:
    """The served name tests use for a fixture directory (its directory name)."""
    return os.path.basename(os.path.normpath(path))

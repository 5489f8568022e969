"""A tiny Llama-shaped model for tests: random weights, a locally trained tokenizer, bf16.

No model hub is reachable here (DESIGN.md §5), so the model vLLM serves in tests is built from a
transformers `LlamaConfig` with a fixed seed, and its byte-level BPE tokenizer is trained by
`tokenizers` on a small built-in corpus. It is built once into $LORAPLANE_HOME/models/tiny-llama/.

The shape is chosen for CPU vLLM 0.32: head_dim 32 is the smallest head size its CPU attention
backend supports (hidden 128 / 4 heads), and 2 KV heads keep grouped-query attention exercised.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .cache import build_once, loraplane_home

# Bump when anything below changes the files: the next ensure_tiny_model() rebuilds.
RECIPE_VERSION = "tiny-llama-v2"
MODEL_DIR_NAME = "tiny-llama"
SEED = 1234

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [BOS, EOS, PAD]
TOKENIZER_VOCAB_TARGET = 2048

# A plain template so /v1/chat/completions works; vLLM refuses chat without one.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinyShape:
    """The knobs that decide tensor shapes (an adapter for another shape must not load)."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512


DEFAULT_SHAPE = TinyShape()
# The base that `wrong-base` adapters are trained on: same vocabulary, twice the width.
WIDE_SHAPE = TinyShape(
    hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=4
)

_CORPUS_SENTENCES = [
    "The operator pushes each adapter into every running vLLM server of its base model.",
    "A platform team installs loraplane with Helm and users apply two kinds of object.",
    "Clients call the base model's Service with the OpenAI API and pick an adapter per request.",
    "Low-rank adaptation adds a small matrix product to the frozen weights of a linear layer.",
    "Kubernetes schedules pods onto nodes, and a controller converges desired and actual state.",
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "Rivers run to the sea, mountains rise into clouds, and forests grow in the valleys.",
    "She sells sea shells by the sea shore; the shells she sells are surely sea shells.",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 and 65536 appear in logs and metrics.",
    "def load_adapter(name, path):\n    return client.post('/v1/load_lora_adapter', json=body)\n",
    '{"lora_name": "rank8", "lora_path": "/adapters/rank8", "status": "ok"}',
    "Once upon a time a small model learned to count, to spell, and to answer questions.",
    "Questions and answers: what is the capital of France? Paris is the capital of France.",
    "Good morning! How are you today? I am fine, thank you, and I hope you are well too.",
    "Temperature zero means greedy decoding: the most likely token is chosen at every step.",
    "Memory, latency and throughput are measured for every benchmark in a single run.",
]
_WORD_TEXT = (
    "alpha beta gamma delta epsilon zeta theta lambda sigma omega red green blue yellow "
    "orange purple black white apple banana cherry grape lemon mango peach pear plum "
    "north south east west spring summer autumn winter monday tuesday wednesday thursday "
    "friday saturday sunday january february march april may june july august september "
    "october november december server client request response adapter model tensor weight "
    "matrix vector rank alpha scaling dropout bias module layer attention projection "
    "gate up down query key value output embedding vocabulary token sequence batch cache"
)
_WORDS = _WORD_TEXT.split()


def corpus() -> list[str]:
    """The fixed training text of the tokenizer (deterministic, a few thousand lines)."""
    lines = list(_CORPUS_SENTENCES)
    for i, word in enumerate(_WORDS):
        for j in range(1, 8):
            other = _WORDS[(i * 7 + j * 13) % len(_WORDS)]
            lines.append(f"{word.capitalize()} {other} {i * j} {word}s and {other}ing {word}-{j}.")
    return lines * 4


def train_tokenizer() -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` with Llama-style BOS handling."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_TARGET,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return tokenizer


def llama_config(vocab_size: int, shape: TinyShape, special_ids: dict[str, int]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        **asdict(shape),
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=special_ids[BOS],
        eos_token_id=special_ids[EOS],
        pad_token_id=special_ids[PAD],
        dtype="bfloat16",
    )


def random_llama(config: Any, seed: int = SEED) -> Any:
    """A LlamaForCausalLM with seeded random weights (float32; the caller picks the dtype)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def _build(out: Path, shape: TinyShape) -> None:
    import torch
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    raw = train_tokenizer()
    special_ids = {tok: raw.token_to_id(tok) for tok in SPECIAL_TOKENS}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=shape.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    # The model's vocabulary is exactly the tokenizer's, so every id it can emit decodes.
    model = random_llama(llama_config(raw.get_vocab_size(), shape, special_ids))
    model.to(torch.bfloat16).save_pretrained(out)
    # transformers 5 no longer writes this file; older loaders and tools still look for it.
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2) + "\n"
    )


def ensure_tiny_model(home: Path | None = None) -> Path:
    """The tiny model directory, $LORAPLANE_HOME/models/tiny-llama/, built on first use."""
    home = home or loraplane_home()
    target = home / "models" / MODEL_DIR_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    return build_once(
        target,
        RECIPE_VERSION,
        lambda out: _build(out, DEFAULT_SHAPE),
        extra_stamp={"shape": asdict(DEFAULT_SHAPE), "seed": SEED},
    )

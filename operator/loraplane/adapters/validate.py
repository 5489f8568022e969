"""Pre-flight checks of an adapter against the base model it will be loaded on (pure).

Each check mirrors a refusal measured on vLLM (DESIGN.md §4) and reports it before any load, with
the reason vLLM's error would have been classified under and a message saying what to change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loraplane.adapters.inspect import (
    PICKLE_FILES,
    Inspection,
    layer_index,
)
from loraplane.adapters.pickled import PickledAdapters
from loraplane.vllm.errors import Reason

__all__ = [
    "ALLOWED_MAX_LORA_RANKS",
    "LLAMA_LIKE_LORA_MODULES",
    "BaseModelFacts",
    "Finding",
    "ModuleShape",
    "errors",
    "llama_base_facts",
    "validate",
    "warnings",
]

# The values vLLM accepts for --max-lora-rank.
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's LoRA-capable modules of LlamaForCausalLM and its look-alikes: every linear layer (the
# packed qkv_proj and gate_up_proj by their PEFT names) and both embeddings.
LLAMA_LIKE_LORA_MODULES = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "embed_tokens",
        "lm_head",
    }
)
LLAMA_LIKE_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "internlm3", "exaone", "yi"}
)
# vLLM accepts modules_to_save only for classification heads.
ALLOWED_MODULES_TO_SAVE = frozenset({"classifier", "score"})


class ModuleShape(BaseModel):
    model_config = ConfigDict(frozen=True)

    in_features: int
    out_features: int


class BaseModelFacts(BaseModel):
    """What pre-flight needs to know about the base model an adapter will be loaded on.

    ``lora_target_modules`` None means unknown (the check is skipped); ``module_shapes`` is keyed
    by module suffix (q_proj, ...) and assumes every layer has the same shapes, as in Llama.
    ``deployment`` names the BaseModelDeployment in messages.
    """

    model_config = ConfigDict(frozen=True)

    max_lora_rank: int
    lora_target_modules: frozenset[str] | None = None
    module_shapes: dict[str, ModuleShape] | None = None
    num_hidden_layers: int | None = None
    model_name: str | None = None
    deployment: str | None = None


Severity = Literal["error", "warning"]


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    severity: Severity
    reason: Reason
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def warnings(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "warning"]


def _of(base: BaseModelFacts) -> str:
    return f" of BaseModelDeployment {base.deployment}" if base.deployment else ""


def _base(base: BaseModelFacts) -> str:
    """``the base model X (BaseModelDeployment d)``, with what is known."""
    text = f"the base model {base.model_name}" if base.model_name else "the base model"
    return f"{text} (BaseModelDeployment {base.deployment})" if base.deployment else text


def _next_allowed_rank(rank: int) -> int | None:
    return next((r for r in ALLOWED_MAX_LORA_RANKS if r >= rank), None)


def _fmt(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))


def validate(
    summary: Inspection,
    base: BaseModelFacts,
    *,
    pickled_adapters: PickledAdapters = "verify",
) -> list[Finding]:
    """Every problem pre-flight can see, errors first in a stable order; empty when all is well.

    ``pickled_adapters="refuse"``: weights that are a torch pickle (adapter_model.bin or .pt)
    are an error whatever they hold (the operator's setting ``pickledAdapters``).
    """
    findings: list[Finding] = []
    findings += _check_weights_format(summary, pickled_adapters)
    findings += _check_peft_type(summary)
    findings += _check_rank(summary, base)
    findings += _check_features(summary)
    findings += _check_modules(summary, base)
    findings += _check_pairs(summary)
    shape_findings = _check_shapes(summary, base)
    findings += shape_findings
    if not shape_findings:
        # A differing name matters only when the shapes fit; otherwise the error says it all.
        findings += _check_base_name(summary, base)
    return sorted(findings, key=lambda f: f.severity != "error")


def _check_weights_format(summary: Inspection, pickled: PickledAdapters) -> list[Finding]:
    if pickled != "refuse" or summary.weights_file not in PICKLE_FILES:
        return []
    return [
        Finding(
            severity="error",
            reason=Reason.PICKLED_WEIGHTS_REFUSED,
            message=(
                f"the adapter's weights are a torch pickle ({summary.weights_file}), and this "
                "cluster serves adapters in safetensors only (the operator's setting "
                "pickledAdapters is refuse); save the adapter with safetensors (peft's "
                "save_pretrained with safe_serialization=True, or safetensors.torch.save_file "
                "of the state dict) and publish that"
            ),
            details={"weightsFile": summary.weights_file},
        )
    ]


def _check_pairs(summary: Inspection) -> list[Finding]:
    """Every LoRA module needs both matrices of one rank: vLLM fails on a missing lora_B with a
    bare Python error (measured on 0.32: "unsupported operand type(s) for *=: 'NoneType' and
    'float'")."""
    problems: list[str] = []
    for name, m in sorted(summary.modules.items()):
        a, b = ("lora_embedding_A", "lora_embedding_B") if m.embedding else ("lora_A", "lora_B")
        if m.lora_a is not None and m.lora_b is None:
            problems.append(f"{name} has {a} but no {b}")
        elif m.lora_b is not None and m.lora_a is None:
            problems.append(f"{name} has {b} but no {a}")
        elif m.lora_a and m.lora_b and m.lora_a[0] != m.lora_b[-1]:
            problems.append(f"{name} has {a} of rank {m.lora_a[0]} but {b} of rank {m.lora_b[-1]}")
    if not problems:
        return []
    shown = "; ".join(problems[:5])
    if len(problems) > 5:
        shown += f"; and {len(problems) - 5} more"
    return [
        Finding(
            severity="error",
            reason=Reason.INCOMPLETE_LORA_WEIGHTS,
            message=(
                f"the adapter's LoRA weights are incomplete: {shown}; every LoRA module needs "
                "both matrices (lora_A and lora_B) of the same rank: save the adapter again "
                "with peft's save_pretrained"
            ),
            details={"modules": problems},
        )
    ]


def _check_peft_type(summary: Inspection) -> list[Finding]:
    if summary.peft_type is None or summary.peft_type.upper() == "LORA":
        return []
    return [
        Finding(
            severity="error",
            reason=Reason.NOT_LORA,
            message=(
                f"the adapter is a PEFT {summary.peft_type} adapter (peft_type in "
                "adapter_config.json); vLLM serves only LoRA adapters"
            ),
            details={"peft_type": summary.peft_type},
        )
    ]


def _check_rank(summary: Inspection, base: BaseModelFacts) -> list[Finding]:
    sources: list[tuple[int, str]] = [(summary.rank, f"rank {summary.rank} (r)")]
    sources += [
        (rank, f"rank {rank} (rank_pattern {pattern!r})")
        for pattern, rank in summary.rank_pattern.items()
    ]
    sources += [
        (m.rank, f"rank {m.rank} (tensors of {name})")
        for name, m in sorted(summary.modules.items())
        if m.rank is not None
    ]
    too_big = [(rank, label) for rank, label in sources if rank > base.max_lora_rank]
    if not too_big:
        return []
    worst, label = max(too_big, key=lambda item: item[0])
    suggestion = _next_allowed_rank(worst)
    raise_to = (
        f"raise spec.lora.maxLoraRank to {suggestion}"
        if suggestion is not None
        else f"no maxLoraRank vLLM accepts is as large as {worst}"
    )
    return [
        Finding(
            severity="error",
            reason=Reason.RANK_EXCEEDS_MAX,
            message=(
                f"{label} exceeds maxLoraRank {base.max_lora_rank}{_of(base)}; {raise_to} "
                f"or use an adapter of rank <= {base.max_lora_rank}"
            ),
            details={"rank": worst, "maxLoraRank": base.max_lora_rank},
        )
    ]


def _check_features(summary: Inspection) -> list[Finding]:
    findings: list[Finding] = []
    dora_tensors = any(
        k.startswith("lora_magnitude_vector") for m in summary.modules.values() for k in m.other
    )
    if summary.use_dora or dora_tensors:
        findings.append(
            Finding(
                severity="error",
                reason=Reason.DORA_NOT_SUPPORTED,
                message=(
                    "the adapter uses DoRA (use_dora: true), which vLLM cannot serve; retrain it "
                    "with use_dora=false or merge it into the base model"
                ),
            )
        )
    bias_tensors = sorted(
        name for name, m in summary.modules.items() if "bias" in m.other or "lora_B.bias" in m.other
    )
    if summary.bias != "none" or summary.lora_bias:
        setting = f"bias: {summary.bias!r}" if summary.bias != "none" else "lora_bias: true"
        findings.append(
            Finding(
                severity="error",
                reason=Reason.BIAS_NOT_SUPPORTED,
                message=(
                    f"the adapter trains bias terms ({setting}), which vLLM cannot serve; "
                    "retrain it with bias='none' and lora_bias=false"
                ),
                details={"bias": summary.bias, "lora_bias": summary.lora_bias},
            )
        )
    elif bias_tensors:
        findings.append(
            Finding(
                severity="error",
                reason=Reason.BIAS_NOT_SUPPORTED,
                message=(
                    f"the adapter holds bias tensors ({_fmt(bias_tensors)[:200]}), which vLLM "
                    "cannot serve; retrain it with bias='none'"
                ),
            )
        )
    saved = summary.modules_to_save or []
    refused = [m for m in saved if m not in ALLOWED_MODULES_TO_SAVE]
    if refused:
        findings.append(
            Finding(
                severity="error",
                reason=Reason.MODULES_TO_SAVE_NOT_SUPPORTED,
                message=(
                    f"the adapter saves full copies of {refused} (modules_to_save); vLLM accepts "
                    'modules_to_save only as none or ["classifier", "score"]: retrain without '
                    "modules_to_save or merge the adapter into the base model"
                ),
                details={"modules_to_save": saved},
            )
        )
    for key, value in sorted(summary.unsupported_features.items()):
        findings.append(
            Finding(
                severity="error",
                reason=Reason.UNSUPPORTED_LORA_FEATURE,
                message=(
                    f"the adapter uses {key}={value!r}, a PEFT feature vLLM cannot serve; "
                    "convert it to a plain LoRA adapter"
                ),
                details={key: value},
            )
        )
    return findings


def _check_modules(summary: Inspection, base: BaseModelFacts) -> list[Finding]:
    supported = base.lora_target_modules
    if supported is None:
        return []
    findings: list[Finding] = []
    allowed_full = ALLOWED_MODULES_TO_SAVE | set(summary.modules_to_save or [])
    # The tensors are what vLLM checks (PEFT skips configured modules the model lacks).
    unknown = sorted(s for s in summary.module_suffixes if s not in supported)
    full = sorted(
        name
        for name, m in summary.modules.items()
        if m.lora_a is None
        and m.lora_b is None
        and name.rsplit(".", 1)[-1] not in allowed_full
        and not set(m.other) <= {"bias", "lora_B.bias"}
        and not any(k.startswith("lora_magnitude_vector") for k in m.other)
    )
    # Whole weights of a module LoRA could target: "not a LoRA module" would read as nonsense.
    whole = [name for name in full if name.rsplit(".", 1)[-1] in supported]
    unknown += [name for name in full if name not in whole]
    if whole:
        findings.append(
            Finding(
                severity="error",
                reason=Reason.UNSUPPORTED_TARGET_MODULES,
                message=(
                    f"the adapter holds whole weights of {_fmt(whole)[:300]}, not LoRA matrices "
                    "(peft saves the embeddings whole when tokens were added to the vocabulary "
                    "for training); vLLM serves LoRA weights only: train without adding tokens, "
                    "or merge the adapter into the base model"
                ),
                details={"wholeWeights": whole},
            )
        )
    if unknown or summary.unparsed_tensors:
        names = unknown + summary.unparsed_tensors
        findings.append(
            Finding(
                severity="error",
                reason=Reason.UNSUPPORTED_TARGET_MODULES,
                message=(
                    f"the adapter has weights for {_fmt(names)[:300]}, which are not LoRA modules "
                    f"of {_base(base)} (vLLM can apply LoRA to {_fmt(supported)}); use an "
                    "adapter trained for this base model"
                ),
                details={"unsupported": names, "supported": sorted(supported)},
            )
        )
    if isinstance(summary.target_modules, list):
        configured = {t.rsplit(".", 1)[-1] for t in summary.target_modules}
        absent = sorted(configured - set(supported) - summary.module_suffixes)
        if absent:
            findings.append(
                Finding(
                    severity="warning",
                    reason=Reason.UNSUPPORTED_TARGET_MODULES,
                    message=(
                        f"target_modules lists {_fmt(absent)}, which the adapter has no weights "
                        f"for and which are not LoRA modules of {_base(base)}; they are ignored"
                    ),
                    details={"absent": absent},
                )
            )
    return findings


def _check_shapes(summary: Inspection, base: BaseModelFacts) -> list[Finding]:
    # One line per module kind (q_proj, ...), not per layer: every layer of a Llama-like model
    # has the same shapes, and a wrong base shows up in all of them.
    by_suffix: dict[str, str] = {}
    deepest: int | None = None
    shapes = base.module_shapes or {}
    for name, m in sorted(summary.modules.items()):
        suffix = name.rsplit(".", 1)[-1]
        expected = shapes.get(suffix)
        if expected is not None and suffix not in by_suffix:
            got = (m.in_features, m.out_features)
            want = (expected.in_features, expected.out_features)
            if any(g is not None and g != w for g, w in zip(got, want, strict=True)):
                by_suffix[suffix] = (
                    f"{suffix} is {got[0]}->{got[1]}, the base's is {want[0]}->{want[1]}"
                )
        layer = layer_index(name)
        if layer is not None and (deepest is None or layer > deepest):
            deepest = layer
    mismatches = [by_suffix[k] for k in sorted(by_suffix)]
    if (
        base.num_hidden_layers is not None
        and deepest is not None
        and deepest >= base.num_hidden_layers
    ):
        mismatches.append(
            f"it has weights for layer {deepest}, the base has {base.num_hidden_layers} layers"
        )
    if not mismatches:
        return []
    trained_for = (
        f" (it names {summary.base_model_name_or_path} as its base)"
        if summary.base_model_name_or_path
        else ""
    )
    return [
        Finding(
            severity="error",
            reason=Reason.BASE_MODEL_SHAPE_MISMATCH,
            message=(
                f"the adapter's tensor shapes do not fit {_base(base)}{trained_for}: "
                f"{'; '.join(mismatches)} (in->out features); "
                "use an adapter trained for this base model"
            ),
            details={"mismatches": mismatches},
        )
    ]


def _model_key(name: str) -> str:
    """Compare model names by their last path component, case-insensitively: an adapter trained
    on ``meta-llama/Llama-3.1-8B`` fits a base served from ``/models/llama-3.1-8b``."""
    return re.sub(r"[/\\]+$", "", name).rsplit("/", 1)[-1].lower()


def _check_base_name(summary: Inspection, base: BaseModelFacts) -> list[Finding]:
    trained = summary.base_model_name_or_path
    if not trained or not base.model_name:
        return []
    if _model_key(trained) == _model_key(base.model_name):
        return []
    return [
        Finding(
            severity="warning",
            reason=Reason.BASE_MODEL_NAME_DIFFERS,
            message=(
                f"the adapter was trained on {trained}, not on {_base(base)}; its tensor shapes "
                "fit, so it loads, but check that its outputs are what you expect"
            ),
            details={"adapterBaseModel": trained, "baseModel": base.model_name},
        )
    ]


def llama_base_facts(
    config: Mapping[str, Any] | Path | str,
    *,
    max_lora_rank: int,
    model_name: str | None = None,
    deployment: str | None = None,
) -> BaseModelFacts:
    """BaseModelFacts of a Llama-like model from its config.json (a mapping or a file/directory).

    Raises ValueError for architectures whose module names or shapes differ from Llama's.
    """
    data: Mapping[str, Any]
    if isinstance(config, Mapping):
        data = config
    else:
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        data = json.loads(path.read_text(encoding="utf-8"))
    # Multimodal wrappers keep the language model's settings in text_config.
    text = data.get("text_config")
    if isinstance(text, Mapping) and "hidden_size" in text:
        data = {**data, **text}
    model_type = str(data.get("model_type", ""))
    if model_type not in LLAMA_LIKE_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not Llama-like")
    try:
        hidden = int(data["hidden_size"])
        intermediate = int(data["intermediate_size"])
        heads = int(data["num_attention_heads"])
        kv_heads = int(data.get("num_key_value_heads") or heads)
        head_dim = int(data.get("head_dim") or hidden // heads)
        vocab = int(data["vocab_size"])
        layers = data.get("num_hidden_layers")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"config.json lacks a Llama-like setting: {e}") from e
    q_out = heads * head_dim
    kv_out = kv_heads * head_dim
    shapes = {
        "q_proj": ModuleShape(in_features=hidden, out_features=q_out),
        "k_proj": ModuleShape(in_features=hidden, out_features=kv_out),
        "v_proj": ModuleShape(in_features=hidden, out_features=kv_out),
        "o_proj": ModuleShape(in_features=q_out, out_features=hidden),
        "gate_proj": ModuleShape(in_features=hidden, out_features=intermediate),
        "up_proj": ModuleShape(in_features=hidden, out_features=intermediate),
        "down_proj": ModuleShape(in_features=intermediate, out_features=hidden),
        "embed_tokens": ModuleShape(in_features=vocab, out_features=hidden),
        "lm_head": ModuleShape(in_features=hidden, out_features=vocab),
    }
    name = model_name or _opt_name(data.get("_name_or_path"))
    return BaseModelFacts(
        max_lora_rank=max_lora_rank,
        lora_target_modules=LLAMA_LIKE_LORA_MODULES,
        module_shapes=shapes,
        num_hidden_layers=int(layers) if layers is not None else None,
        model_name=name,
        deployment=deployment,
    )


def _opt_name(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None

"""The classification table: vLLM's measured error answers (DESIGN.md §4) in every envelope and
status it has used, each mapped to one stable reason and to retry / do-not-retry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loraplane.vllm.errors import (
    AdapterNotLoaded,
    AdapterRejected,
    AlreadyLoaded,
    InvalidRequest,
    Reason,
    RuntimeLoRAUpdatingDisabled,
    TransientVLLMError,
    Unauthorized,
    VLLMServerError,
    classify,
    headline,
    normalize_message,
    parse_error_body,
)

ADAPTER = "/adapters/rank64/0f3a"
TMP = "/tmp/pytest-of-root/pytest-1/rank64"

# (reason, message as vLLM 0.32 words it with the path already sanitised) from DESIGN.md §4
# plus the vLLM 0.32 source (vllm/lora/peft_helper.py, lora_model.py, exceptions.py).
MEASURED: list[tuple[Reason, str]] = [
    (Reason.BIAS_NOT_SUPPORTED, "Adapter bias is not supported."),
    (Reason.BIAS_NOT_SUPPORTED, "vLLM does not support LoRA bias (lora_bias)."),
    (Reason.DORA_NOT_SUPPORTED, "vLLM does not yet support DoRA."),
    (
        Reason.MODULES_TO_SAVE_NOT_SUPPORTED,
        'vLLM only supports modules_to_save being either None or ["classifier", "score"] for '
        "classification models. Unsupported modules_to_save: ['lm_head']",
    ),
    (Reason.RANK_EXCEEDS_MAX, "LoRA rank 32 is greater than max_lora_rank 16."),
    (Reason.RANK_EXCEEDS_MAX, "LoRA rank 64 is greater than max_lora_rank 16."),
    (Reason.CORRUPT_WEIGHTS, "Error while deserializing header: incomplete metadata"),
    (
        Reason.CORRUPT_WEIGHTS,
        "Error while deserializing header: incomplete metadata, file not fully covered",
    ),
    (Reason.CORRUPT_WEIGHTS, "Error while deserializing header: invalid header length"),
    (Reason.CORRUPT_WEIGHTS, "Error while deserializing header: HeaderTooLarge"),
    (Reason.NO_TENSORS, "<path> doesn't contain tensors"),
    (
        Reason.UNSUPPORTED_TARGET_MODULES,
        "While loading <path>, expected target modules in {'q_proj', 'k_proj', 'v_proj', "
        "'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'embed_tokens', 'lm_head'} but received "
        "['model.layers.0.mlp.fc1']. Please verify that the loaded LoRA module is correct",
    ),
    (
        Reason.BASE_MODEL_SHAPE_MISMATCH,
        "The size of tensor a (128) must match the size of tensor b (256) at non-singleton "
        "dimension 1",
    ),
    (
        Reason.BASE_MODEL_SHAPE_MISMATCH,
        "The embedding LoRA size(1000) must be consistent with the base model's vocabulary "
        "size(1545).",
    ),
    (Reason.UNSUPPORTED_LORA_FEATURE, "vLLM does not support Activated LoRA (aLoRA)."),
    (Reason.UNSUPPORTED_LORA_FEATURE, "vLLM does not support layer_replication."),
    (Reason.UNSUPPORTED_LORA_FEATURE, "vLLM does not support QALoRA."),
    (
        Reason.UNSUPPORTED_LORA_FEATURE,
        "vLLM does not support init_lora_weights='pissa'. Inits such as PiSSA, OLoRA, CorDA and "
        "LoftQ modify the base model weights when PEFT loads the adapter.",
    ),
    (
        Reason.INVALID_ADAPTER_CONFIG,
        "Missing required configuration fields: {'r'}",
    ),
    (Reason.INVALID_ADAPTER_CONFIG, "LoRA rank `r` must be a positive integer, got 0."),
    (Reason.INVALID_ADAPTER_CONFIG, "Expecting value: line 1 column 1 (char 0)"),
    # Issue 24: a lora_A without its lora_B (vLLM 0.32, measured).
    (
        Reason.INCOMPLETE_LORA_WEIGHTS,
        "unsupported operand type(s) for *=: 'NoneType' and 'float'",
    ),
    # torch.load of a truncated adapter_model.bin (torch 2.13, measured).
    (
        Reason.CORRUPT_WEIGHTS,
        "PytorchStreamReader failed reading zip archive: failed finding central directory. This "
        "is an internal miniz error.",
    ),
]

# torch 2.13's words for an adapter_model.bin with a payload (torch.load(weights_only=True) in
# vLLM 0.32's LoRA loader, measured).
TORCH_UNSAFE_PICKLE = (
    "Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` "
    "argument in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` "
    "set to `False` will likely succeed, but it can result in arbitrary code execution. Do it "
    "only if you got the file from a trusted source.\n\n\nTrying to load unsupported GLOBAL "
    "posix.system whose module posix is blocked.\n\nCheck the documentation of torch.load to "
    "learn more about types accepted by default with weights_only "
    "https://pytorch.org/docs/stable/generated/torch.load.html."
)


def v032(message: str) -> dict[str, Any]:
    """vLLM 0.32 (measured): 500, the engine's RPC prefix and the multiproc worker's wrapper."""
    return v018(
        f"Worker failed with error '{message}', please check the stack trace above for the root "
        "cause"
    )


def v018(message: str) -> dict[str, Any]:
    """vLLM >= 0.18: 500 InternalServerError with the engine's RPC prefix."""
    return {
        "error": {
            "message": f"Call to add_lora method failed: {message}",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }


def v017(message: str) -> dict[str, Any]:
    """vLLM 0.11 - 0.17: 400 BadRequestError in the nested envelope."""
    return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}


def v010(message: str) -> dict[str, Any]:
    """vLLM 0.10.0: the flat envelope."""
    return {"object": "error", "message": message, "type": "BadRequestError", "param": None,
            "code": 400}  # fmt: skip


@pytest.mark.parametrize(("reason", "message"), MEASURED, ids=[m[:40] for _, m in MEASURED])
@pytest.mark.parametrize(
    ("status", "envelope"),
    [(500, v032), (500, v018), (400, v017), (400, v010)],
    ids=["0.32", "0.18", "0.17", "0.10"],
)
def test_measured_rejections_are_permanent_with_their_reason(
    reason: Reason, message: str, status: int, envelope: Any
) -> None:
    error = classify(status, json.dumps(envelope(message)).encode())
    assert isinstance(error, AdapterRejected)
    assert error.reason == reason
    assert error.permanent
    assert error.status == status
    assert "Call to add_lora" not in error.message
    # Our sentence first (what is wrong, what to do), vLLM's words after it as detail.
    assert error.detail == message
    assert error.message == f"{headline(reason, message)} (vLLM: {message})"
    assert not error.message.startswith(message)


@pytest.mark.parametrize(("reason", "message"), MEASURED, ids=[m[:40] for _, m in MEASURED])
def test_each_measured_refusal_has_its_own_headline(reason: Reason, message: str) -> None:
    """Not the catch-all sentence, and one that says what to do."""
    generic = headline(Reason.ADAPTER_REJECTED, "")
    ours = headline(reason, message)
    assert ours != generic
    assert ours.startswith(("the adapter", "vLLM found"))
    assert ":" in ours  # "<what is wrong>: <what to do>"


def test_rank_headline_names_both_ranks() -> None:
    error = classify(500, v032("LoRA rank 64 is greater than max_lora_rank 16."))
    assert error.message.startswith(
        "the adapter's LoRA rank 64 is above the base model's maxLoraRank 16: raise the "
        "BaseModelDeployment's spec.lora.maxLoraRank to 64 or more"
    )


def test_unknown_module_headline_names_the_modules() -> None:
    error = classify(
        500,
        v032(
            "While loading <path>, expected target modules in {'q_proj'} but received "
            "['model.layers.0.mlp.fc1']. Please verify that the loaded LoRA module is correct"
        ),
    )
    assert error.message.startswith(
        "the adapter has weights for ['model.layers.0.mlp.fc1'], which vLLM cannot apply LoRA to"
    )


@pytest.mark.parametrize(("status", "envelope"), [(500, v032), (400, v017)], ids=["0.32", "0.17"])
def test_unsafe_pickle_is_in_our_words_without_torchs_advice(status: int, envelope: Any) -> None:
    error = classify(status, envelope(TORCH_UNSAFE_PICKLE))
    assert isinstance(error, AdapterRejected) and error.permanent
    assert error.reason == Reason.UNSAFE_PICKLE
    assert error.message == (
        "the adapter's pickled weights file (adapter_model.bin or .pt) holds code or Python "
        "objects, not only tensors, and is not loaded: save the adapter with safetensors (peft's "
        "save_pretrained with safe_serialization=True) (vLLM: torch refused the global "
        "posix.system)"
    )
    # Never the advice to load it with weights_only=False (which runs the code).
    assert "weights_only" not in error.message and "False" not in error.message


def test_unsafe_pickle_in_older_torch_words() -> None:
    old = (
        "Weights only load failed. ... WeightsUnpickler error: Unsupported global: GLOBAL "
        "__main__.Payload was not an allowed global by default."
    )
    error = classify(500, v018(old))
    assert error.reason == Reason.UNSAFE_PICKLE
    assert error.message.endswith("(vLLM: torch refused the global __main__.Payload)")


def test_body_may_be_bytes_text_or_parsed() -> None:
    envelope = v032("vLLM does not yet support DoRA.")
    for body in (json.dumps(envelope).encode(), json.dumps(envelope), envelope):
        assert classify(500, body).reason == Reason.DORA_NOT_SUPPORTED


def test_paths_read_the_same_before_and_after_vllm_026() -> None:
    raw = classify(400, v017(f"{TMP} doesn't contain tensors"))
    sanitised = classify(500, v032("<path> doesn't contain tensors"))
    assert raw.reason == sanitised.reason == Reason.NO_TENSORS
    assert raw.message == sanitised.message
    assert raw.detail == sanitised.detail == "<path> doesn't contain tensors"
    assert raw.raw_message == f"{TMP} doesn't contain tensors"


def test_adapter_path_outside_vllms_sanitised_roots_is_normalized_too() -> None:
    # vLLM only rewrites /home, /tmp, ... paths; the operator's store lives under /adapters.
    error = classify(
        500, v032(f"While loading {ADAPTER}, expected target modules in {{'q_proj'}} but ...")
    )
    assert error.reason == Reason.UNSUPPORTED_TARGET_MODULES
    assert ADAPTER not in error.message
    assert error.detail.startswith("While loading <path>, expected")


def test_several_problems_in_one_message_keep_every_reason_first_one_wins() -> None:
    # vLLM joins feature errors, then the rank error, then the bias error with spaces.
    error = classify(
        500,
        v032(
            "vLLM does not yet support DoRA. LoRA rank 64 is greater than max_lora_rank 16. "
            "Adapter bias is not supported."
        ),
    )
    assert error.reason == Reason.DORA_NOT_SUPPORTED
    assert error.reasons == (
        Reason.DORA_NOT_SUPPORTED,
        Reason.RANK_EXCEEDS_MAX,
        Reason.BIAS_NOT_SUPPORTED,
    )


@pytest.mark.parametrize(
    "path", ["<path>", "/tmp/pytest-0/no-config", "/adapters/no-config/ab12"], ids=str
)
def test_missing_adapter_is_404_not_found_error(path: str) -> None:
    body = {
        "error": {
            "message": f"Loading lora no-config failed: No adapter found for {path}",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }
    error = classify(404, body)
    assert isinstance(error, AdapterRejected)
    assert error.reason == Reason.ADAPTER_NOT_FOUND
    assert error.permanent
    assert error.detail == "Loading lora no-config failed: No adapter found for <path>"
    assert error.message == (
        f"{headline(Reason.ADAPTER_NOT_FOUND, error.detail)} (vLLM: {error.detail})"
    )


def test_adapter_names_never_trigger_a_pattern() -> None:
    # An adapter named "dora" that is missing is AdapterNotFound, not DoRANotSupported.
    body = v017("Loading lora dora-bias failed: No adapter found for /tmp/dora")
    body["error"].update(type="NotFoundError", code=404)
    assert classify(404, body).reason == Reason.ADAPTER_NOT_FOUND


def test_second_load_is_already_loaded_not_permanent() -> None:
    message = (
        "The lora adapter 'rank8' has already been loaded. If you want to load the adapter in "
        "place, set 'load_inplace' to True."
    )
    for body in (
        {"error": {"message": message, "type": "InvalidUserInput", "code": 400}},
        {"object": "error", "message": message, "type": "InvalidUserInput", "code": 400},
    ):
        error = classify(400, body)
        assert isinstance(error, AlreadyLoaded)
        assert error.reason == Reason.ALREADY_LOADED
        assert not error.permanent


def test_name_of_the_base_model_is_refused_permanently() -> None:
    body = {
        "error": {
            "message": "The lora adapter 'tiny-llama' conflicts with a served base model.",
            "type": "InvalidUserInput",
            "code": 400,
        }
    }
    error = classify(400, body)
    assert error.reason == Reason.NAME_CONFLICTS_WITH_BASE_MODEL
    assert error.permanent


def test_unload_of_unknown_name_is_not_loaded() -> None:
    body = {
        "error": {
            "message": "The lora adapter 'ghost' cannot be found.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }
    error = classify(404, body)
    assert isinstance(error, AdapterNotLoaded)
    assert error.reason == Reason.NOT_LOADED
    assert not error.permanent


def test_missing_runtime_routes_say_how_to_enable_them() -> None:
    error = classify(404, b'{"detail":"Not Found"}')
    assert isinstance(error, RuntimeLoRAUpdatingDisabled)
    assert error.reason == Reason.RUNTIME_UPDATING_DISABLED
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in error.message
    assert not error.permanent


def test_unauthorized() -> None:
    error = classify(401, b'{"error":"Unauthorized"}')
    assert isinstance(error, Unauthorized)
    assert error.reason == Reason.UNAUTHORIZED
    assert not error.permanent
    assert "apiKeySecretRef" in error.message


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (502, b"<html>Bad Gateway</html>"),
        (503, b""),
        (504, b"upstream timed out"),
        (429, b'{"error":{"message":"too many","type":"RateLimitError","code":429}}'),
        (500, v032("EngineCore encountered an issue. See stack trace (above) for the root cause.")),
        (
            503,
            {"error": {"message": "Request failed; please retry", "type": "Unavailable"}},
        ),
    ],
    ids=["502", "503-empty", "504", "429", "engine-dead", "retryable"],
)
def test_transient_answers_are_retried(status: int, body: Any) -> None:
    error = classify(status, body)
    assert isinstance(error, TransientVLLMError)
    assert error.reason == Reason.TRANSIENT
    assert not error.permanent


def test_unknown_add_lora_failure_is_an_adapter_rejection() -> None:
    error = classify(500, v032("Something new in vLLM 0.40 about this adapter."))
    assert isinstance(error, AdapterRejected)
    assert error.reason == Reason.ADAPTER_REJECTED
    assert error.permanent
    assert error.detail == "Something new in vLLM 0.40 about this adapter."
    assert error.message == (
        "vLLM refused the adapter for a reason loraplane does not recognise: fix what vLLM says "
        "(its container's log has the details) in a new revision of the adapter, or in the "
        "BaseModelDeployment when the engine's settings are the cause (vLLM: Something new in "
        "vLLM 0.40 about this adapter.)"
    )


def test_empty_worker_error_is_an_adapter_rejection() -> None:
    # Measured on vLLM 0.32 for a safetensors file without tensors.
    error = classify(500, v032(""))
    assert isinstance(error, AdapterRejected)
    assert error.reason == Reason.ADAPTER_REJECTED
    assert error.permanent
    assert error.message.startswith("vLLM refused the adapter without an error message")


def test_unknown_server_error_is_retried() -> None:
    error = classify(500, {"error": {"message": "boom", "type": "InternalServerError",
                                     "code": 500}})  # fmt: skip
    assert isinstance(error, VLLMServerError)
    assert error.reason == Reason.SERVER_ERROR
    assert not error.permanent


def test_request_validation_error_is_our_bug_not_the_adapters() -> None:
    body = {"detail": [{"loc": ["body", "lora_path"], "msg": "Field required", "type": "missing"}]}
    error = classify(422, body)
    assert isinstance(error, InvalidRequest)
    assert not error.permanent
    assert "lora_path" in error.message


@pytest.mark.parametrize(
    ("body", "message", "type_", "code"),
    [
        ({"error": {"message": "m", "type": "T", "code": 400}}, "m", "T", 400),
        ({"object": "error", "message": "m", "type": "T", "code": "400"}, "m", "T", 400),
        ({"detail": "Not Found"}, "Not Found", None, None),
        ({"error": "Unauthorized"}, "Unauthorized", None, None),
        (b"plain text", "plain text", None, None),
        (b"", "", None, None),
        (None, "", None, None),
        (b"[1, 2]", "[1, 2]", None, None),
    ],
)
def test_parse_error_body_envelopes(body: Any, message: str, type_: Any, code: Any) -> None:
    parsed = parse_error_body(body)
    assert (parsed.message, parsed.type, parsed.code) == (message, type_, code)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/tmp/a/b doesn't contain tensors", "<path> doesn't contain tensors"),
        ("While loading /adapters/x/1f, expected", "While loading <path>, expected"),
        ("No adapter found for '/root/x'", "No adapter found for '<path>'"),
        ("rank 4/8", "rank 4/8"),
        ("Call to add_lora method failed: oops", "oops"),
    ],
)
def test_normalize_message(raw: str, normalized: str) -> None:
    assert normalize_message(raw) == normalized


def test_every_reason_is_camel_case_and_unique() -> None:
    values = [r.value for r in Reason]
    assert len(values) == len(set(values))
    assert all(v[0].isupper() and " " not in v and "_" not in v for v in values)

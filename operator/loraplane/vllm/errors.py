"""Typed errors of the vLLM runtime LoRA API, classified by error type and message.

vLLM reports the same adapter problem with different HTTP codes across versions (400 up to 0.17,
500 ``InternalServerError`` prefixed with "Call to add_lora method failed:" from 0.18), in three
envelopes (``{"error": {...}}``, the flat 0.10.0 one, FastAPI's ``{"detail": ...}``), and from 0.26
with paths replaced by ``<path>``. ``classify`` turns any of these into one error class with a
stable ``reason`` (the vocabulary of status conditions) and whether retrying can help.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

__all__ = [
    "PERMANENT_REASONS",
    "AdapterNameConflict",
    "AdapterNotLoaded",
    "AdapterRejected",
    "AlreadyLoaded",
    "ErrorBody",
    "InvalidRequest",
    "Reason",
    "RuntimeLoRAUpdatingDisabled",
    "TransientVLLMError",
    "Unauthorized",
    "VLLMError",
    "VLLMServerError",
    "classify",
    "error_class",
    "headline",
    "normalize_message",
    "parse_error_body",
]


class Reason(StrEnum):
    """Stable CamelCase reasons shared by vLLM errors, pre-flight findings and conditions."""

    # The adapter itself is bad (permanent: retrying cannot help, the user must change it).
    RANK_EXCEEDS_MAX = "RankExceedsMax"
    DORA_NOT_SUPPORTED = "DoRANotSupported"
    BIAS_NOT_SUPPORTED = "BiasNotSupported"
    MODULES_TO_SAVE_NOT_SUPPORTED = "ModulesToSaveNotSupported"
    UNSUPPORTED_TARGET_MODULES = "UnsupportedTargetModules"
    UNSUPPORTED_LORA_FEATURE = "UnsupportedLoRAFeature"
    BASE_MODEL_SHAPE_MISMATCH = "BaseModelShapeMismatch"
    CORRUPT_WEIGHTS = "CorruptWeights"
    NO_TENSORS = "NoTensors"
    INCOMPLETE_LORA_WEIGHTS = "IncompleteLoRAWeights"
    UNSAFE_PICKLE = "UnsafePickle"
    UNSUPPORTED_WEIGHTS_FORMAT = "UnsupportedWeightsFormat"
    PICKLED_WEIGHTS_REFUSED = "PickledWeightsRefused"
    ADAPTER_NOT_FOUND = "AdapterNotFound"
    INVALID_ADAPTER_CONFIG = "InvalidAdapterConfig"
    NOT_LORA = "NotLoRA"
    NAME_CONFLICTS_WITH_BASE_MODEL = "NameConflictsWithBaseModel"
    ADAPTER_REJECTED = "AdapterRejected"
    # The adapter's source: what it holds is not what the spec pins, or cannot be stored.
    DIGEST_MISMATCH = "DigestMismatch"
    ADAPTER_TOO_LARGE = "AdapterTooLarge"
    INVALID_ARCHIVE = "InvalidArchive"
    # Pre-flight only, a warning: the adapter may still load.
    BASE_MODEL_NAME_DIFFERS = "BaseModelNameDiffers"
    # The state of the server, not the adapter.
    ALREADY_LOADED = "AlreadyLoaded"
    ADAPTER_NAME_CONFLICT = "AdapterNameConflict"
    NOT_LOADED = "NotLoaded"
    # The server or the deployment is misconfigured: fixable without touching the adapter.
    RUNTIME_UPDATING_DISABLED = "RuntimeUpdatingDisabled"
    UNAUTHORIZED = "Unauthorized"
    INVALID_REQUEST = "InvalidRequest"
    # The adapter's source cannot be read now; retried with backoff (credentials live in a
    # Secret, which can be fixed without touching the adapter's spec).
    SOURCE_UNAUTHORIZED = "SourceUnauthorized"
    SOURCE_UNREACHABLE = "SourceUnreachable"
    # Retry with backoff.
    SERVER_ERROR = "ServerError"
    TRANSIENT = "Transient"


PERMANENT_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.RANK_EXCEEDS_MAX,
        Reason.DORA_NOT_SUPPORTED,
        Reason.BIAS_NOT_SUPPORTED,
        Reason.MODULES_TO_SAVE_NOT_SUPPORTED,
        Reason.UNSUPPORTED_TARGET_MODULES,
        Reason.UNSUPPORTED_LORA_FEATURE,
        Reason.BASE_MODEL_SHAPE_MISMATCH,
        Reason.CORRUPT_WEIGHTS,
        Reason.NO_TENSORS,
        Reason.INCOMPLETE_LORA_WEIGHTS,
        Reason.UNSAFE_PICKLE,
        Reason.UNSUPPORTED_WEIGHTS_FORMAT,
        Reason.PICKLED_WEIGHTS_REFUSED,
        Reason.ADAPTER_NOT_FOUND,
        Reason.INVALID_ADAPTER_CONFIG,
        Reason.NOT_LORA,
        Reason.NAME_CONFLICTS_WITH_BASE_MODEL,
        Reason.ADAPTER_REJECTED,
        Reason.DIGEST_MISMATCH,
        Reason.ADAPTER_TOO_LARGE,
        Reason.INVALID_ARCHIVE,
    }
)


class VLLMError(Exception):
    """An error answer (or no answer) from one vLLM server.

    ``reason``: stable CamelCase string for status conditions. ``permanent``: the adapter itself
    is bad, do not retry. ``reasons``: every reason found when vLLM joined several problems in one
    message (the first is ``reason``). ``message``: what status shows; for a refused adapter our
    own sentence (what is wrong, what to do) followed by "(vLLM: <detail>)". ``detail``: the
    server's message with paths normalized; ``raw_message``: as the server sent it.
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        reasons: tuple[Reason, ...] = (),
        raw_message: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.error_type = error_type
        self.reasons = reasons or (reason,)
        self.raw_message = raw_message if raw_message is not None else message
        self.detail = detail if detail is not None else message

    @property
    def permanent(self) -> bool:
        return self.reason in PERMANENT_REASONS

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reason={self.reason.value!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )


class AdapterRejected(VLLMError):
    """vLLM refused the adapter itself (permanent for this adapter on this base model)."""


class AlreadyLoaded(VLLMError):
    """The name is registered already; the client resolves it through /v1/models."""


class AdapterNameConflict(VLLMError):
    """The name is registered with another path than the one asked for."""

    def __init__(self, name: str, registered_path: str | None, requested_path: str) -> None:
        super().__init__(
            Reason.ADAPTER_NAME_CONFLICT,
            f"adapter name {name!r} is already registered with path {registered_path!r}, "
            f"not {requested_path!r}; unload it before loading the new path",
        )
        self.name = name
        self.registered_path = registered_path
        self.requested_path = requested_path


class AdapterNotLoaded(VLLMError):
    """Unload of a name the server does not know."""


class RuntimeLoRAUpdatingDisabled(VLLMError):
    """The load/unload routes are missing: the server runs without runtime LoRA updating."""


class Unauthorized(VLLMError):
    """The server has --api-key and the request carried none or a wrong one."""


class InvalidRequest(VLLMError):
    """The server rejected the request's shape (a client bug, not the adapter's fault)."""


class TransientVLLMError(VLLMError):
    """Connection refused, timeout, 502-504, engine dead or restarting: retry with backoff."""


class VLLMServerError(VLLMError):
    """An error the classifier does not recognise and that is not about the adapter."""


RUNTIME_UPDATING_HINT = (
    "the vLLM server has no runtime LoRA routes (/v1/load_lora_adapter answered 404 Not Found); "
    "start it with the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=true "
    "(and --enable-lora)"
)

# What an empty worker error becomes (vLLM 0.32 answers so for a safetensors file without
# tensors): our words already, so classify does not wrap it again.
NO_MESSAGE = (
    "vLLM refused the adapter without an error message (vLLM 0.32 does so, for one, for a "
    "safetensors file without tensors); see the vLLM container's log, and check the adapter's "
    "files with peft"
)

_ADD_LORA_PREFIX = re.compile(r"^\s*Call to add_lora method failed:\s*")
# The multiprocess executor wraps a worker's exception (vLLM 0.32, measured).
_WORKER_WRAPPER = re.compile(
    r"^Worker failed with error '(?P<inner>.*)', please check the stack trace above for the "
    r"root cause\.?$",
    re.S,
)
# An absolute path as a token of its own: after start, whitespace, a quote, a bracket or '='.
_PATH = re.compile(r"(?:(?<=^)|(?<=[\s'\"(\[{=,:]))/[\w.\-+@]+(?:/[\w.\-+@]*)*")


def normalize_message(message: str) -> str:
    """Replace absolute paths by ``<path>`` (as vLLM >= 0.26 does), drop vLLM's RPC prefix and
    its worker wrapper: what is left is the adapter's problem in vLLM's words.

    The message then reads the same on every vLLM version and in every pod, so a status condition
    does not flap between replicas that mounted the store at different paths.
    """
    text = _ADD_LORA_PREFIX.sub("", message.strip())
    wrapped = _WORKER_WRAPPER.match(text)
    if wrapped:
        text = wrapped.group("inner").strip() or NO_MESSAGE
    return _PATH.sub("<path>", text).strip()


class ErrorBody:
    """The parts of an error body that matter, whatever the envelope."""

    __slots__ = ("code", "message", "type")

    def __init__(self, message: str, type_: str | None, code: int | None) -> None:
        self.message = message
        self.type = type_
        self.code = code

    def __repr__(self) -> str:
        return f"ErrorBody(message={self.message!r}, type={self.type!r}, code={self.code!r})"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def parse_error_body(body: bytes | str | Mapping[str, Any] | None) -> ErrorBody:
    """Parse ``{"error":{message,type,code}}``, flat ``{message,type,code}`` (vLLM 0.10.0),
    FastAPI ``{"detail": ...}``, ``{"error": "Unauthorized"}`` and plain text."""
    data: Any = body
    if isinstance(body, bytes):
        data = body.decode("utf-8", errors="replace")
    if isinstance(data, str):
        text = data
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            return ErrorBody(text.strip(), None, None)
    if data is None:
        return ErrorBody("", None, None)
    if not isinstance(data, Mapping):
        return ErrorBody(str(data), None, None)
    error = data.get("error")
    if isinstance(error, Mapping):
        return ErrorBody(
            str(error.get("message", "")),
            _str_or_none(error.get("type")),
            _as_int(error.get("code")),
        )
    if isinstance(error, str) and "message" not in data:
        return ErrorBody(error, None, None)
    if "message" in data:
        return ErrorBody(
            str(data.get("message", "")), _str_or_none(data.get("type")), _as_int(data.get("code"))
        )
    if "detail" in data:
        detail = data["detail"]
        if isinstance(detail, str):
            return ErrorBody(detail, None, None)
        # FastAPI request validation: a list of {"loc", "msg", "type"}.
        return ErrorBody(json.dumps(detail, sort_keys=True), "RequestValidationError", None)
    return ErrorBody(json.dumps(dict(data), sort_keys=True), None, None)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# Message patterns, checked in order; vLLM joins several feature errors with spaces, so every
# matching pattern contributes a reason and the first one found in the message wins.
_ADAPTER_PATTERNS: tuple[tuple[Reason, re.Pattern[str]], ...] = (
    (Reason.ADAPTER_NOT_FOUND, re.compile(r"No adapter found for", re.I)),
    (Reason.ADAPTER_NOT_FOUND, re.compile(r"adapter_config\.json.*(No such file|not found)", re.I)),
    (
        Reason.RANK_EXCEEDS_MAX,
        re.compile(r"LoRA rank \d+ is greater than max_lora_rank|greater than max_lora_rank", re.I),
    ),
    (Reason.DORA_NOT_SUPPORTED, re.compile(r"not (?:yet )?support DoRA", re.I)),
    (
        Reason.BIAS_NOT_SUPPORTED,
        re.compile(r"Adapter bias is not supported|not support LoRA bias", re.I),
    ),
    (
        Reason.MODULES_TO_SAVE_NOT_SUPPORTED,
        re.compile(r"supports modules_to_save being|Unsupported modules_to_save", re.I),
    ),
    (
        Reason.UNSUPPORTED_LORA_FEATURE,
        re.compile(
            r"not support (?:Activated LoRA|layer_replication|block-diagonal LoRA|QALoRA|"
            r"init_lora_weights)|contains fused 3D MoE weights|full classification module|"
            r"weights for classification head|Cannot load full module|"
            r"Full module .* is missing weight",
            re.I,
        ),
    ),
    (Reason.NO_TENSORS, re.compile(r"doesn't contain tensors|does not contain tensors", re.I)),
    (
        # vLLM multiplies lora_B by the scaling; measured for a lora_A without its lora_B.
        Reason.INCOMPLETE_LORA_WEIGHTS,
        re.compile(r"unsupported operand type\(s\) for \*=: 'NoneType'", re.I),
    ),
    (
        # torch.load(weights_only=True) of a pickle that names other globals than a tensor's.
        Reason.UNSAFE_PICKLE,
        re.compile(r"Weights only load failed|unsupported GLOBAL|Unsupported global:", re.I),
    ),
    (
        Reason.UNSUPPORTED_TARGET_MODULES,
        re.compile(r"expected target modules in|is unsupported LoRA weight", re.I),
    ),
    (
        Reason.BASE_MODEL_SHAPE_MISMATCH,
        re.compile(
            r"size of tensor a \(\d+\) must match the size of tensor b|size mismatch|"
            r"shape mismatch|must be consistent with the base model's vocabulary size|"
            r"mat1 and mat2 shapes cannot be multiplied|could not broadcast|"
            r"The expanded size of the tensor",
            re.I,
        ),
    ),
    (
        Reason.CORRUPT_WEIGHTS,
        re.compile(
            r"Error while deserializing header|incomplete metadata|HeaderTooLarge|"
            r"HeaderTooSmall|InvalidHeader|MetadataIncompleteBuffer|SafetensorError|"
            r"invalid load key|PytorchStreamReader failed|failed finding central directory|"
            r"Ran out of input|unpickling",
            re.I,
        ),
    ),
    (
        Reason.INVALID_ADAPTER_CONFIG,
        re.compile(
            r"Missing required configuration fields|LoRA rank .r. must be a positive integer|"
            r"in .rank_pattern. must be a positive integer|Expecting value: line \d+|"
            r"Expecting property name|JSONDecodeError|unexpected keyword argument",
            re.I,
        ),
    ),
    (
        Reason.NAME_CONFLICTS_WITH_BASE_MODEL,
        re.compile(r"conflicts with a served base model", re.I),
    ),
)

_ALREADY_LOADED = re.compile(r"has already been loaded", re.I)
_NOT_LOADED = re.compile(r"cannot be found|not found", re.I)
_TRANSIENT_MESSAGES = re.compile(
    r"EngineCore encountered an issue|EngineDeadError|engine (is )?dead|"
    r"Engine loop has died|server is (shutting down|starting)|out of memory|"
    r"Service Unavailable|Request failed; please retry",
    re.I,
)
_TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})


def _adapter_reasons(message: str) -> tuple[Reason, ...]:
    found: list[tuple[int, Reason]] = []
    for reason, pattern in _ADAPTER_PATTERNS:
        match = pattern.search(message)
        if match and reason not in (r for _, r in found):
            found.append((match.start(), reason))
    found.sort(key=lambda item: item[0])
    return tuple(reason for _, reason in found)


# Our own first sentence for each permanent refusal vLLM words for itself: what is wrong and what
# to do. vLLM's (or torch's) text follows in parentheses, as detail.
_RETRAIN = "use an adapter trained for this base model"
_SAVE_AGAIN = "save the adapter again with peft's save_pretrained"
_HEADLINES: dict[Reason, str] = {
    Reason.RANK_EXCEEDS_MAX: (
        "the adapter's LoRA rank is above the base model's maxLoraRank: raise the "
        "BaseModelDeployment's spec.lora.maxLoraRank or use an adapter of a lower rank"
    ),
    Reason.DORA_NOT_SUPPORTED: (
        "the adapter uses DoRA, which vLLM cannot serve: retrain it with use_dora=false or merge "
        "it into the base model"
    ),
    Reason.BIAS_NOT_SUPPORTED: (
        "the adapter trains bias terms, which vLLM cannot serve: retrain it with bias='none' and "
        "lora_bias=false"
    ),
    Reason.MODULES_TO_SAVE_NOT_SUPPORTED: (
        "the adapter saves full copies of modules (modules_to_save), which vLLM serves only for "
        "classifier and score: retrain it without modules_to_save or merge it into the base model"
    ),
    Reason.UNSUPPORTED_TARGET_MODULES: (
        f"the adapter has weights for modules vLLM cannot apply LoRA to on this base model: "
        f"{_RETRAIN}"
    ),
    Reason.UNSUPPORTED_LORA_FEATURE: (
        "the adapter uses a PEFT feature vLLM cannot serve: convert it to a plain LoRA adapter"
    ),
    Reason.BASE_MODEL_SHAPE_MISMATCH: (
        f"the adapter's tensor shapes do not fit the base model, so it was trained for another "
        f"base model: {_RETRAIN}"
    ),
    Reason.CORRUPT_WEIGHTS: (
        "the adapter's weights file is damaged or truncated: upload the adapter's files again "
        "(a cut-off upload or download leaves such a file)"
    ),
    Reason.NO_TENSORS: f"the adapter has no weights vLLM can read: {_SAVE_AGAIN}",
    Reason.INCOMPLETE_LORA_WEIGHTS: (
        f"the adapter lacks one of the two LoRA matrices (lora_A, lora_B) of a module: "
        f"{_SAVE_AGAIN}"
    ),
    Reason.UNSAFE_PICKLE: (
        "the adapter's pickled weights file (adapter_model.bin or .pt) holds code or Python "
        "objects, not only tensors, and is not loaded: save the adapter with safetensors "
        "(peft's save_pretrained with safe_serialization=True)"
    ),
    Reason.ADAPTER_NOT_FOUND: (
        "vLLM found no adapter_config.json at the adapter's path: the adapter must be a "
        "directory holding adapter_config.json beside its weights, and the vLLM container must "
        "mount the adapter store"
    ),
    Reason.INVALID_ADAPTER_CONFIG: (
        f"the adapter's adapter_config.json is invalid (vLLM needs r, lora_alpha and "
        f"target_modules): {_SAVE_AGAIN}"
    ),
    Reason.NAME_CONFLICTS_WITH_BASE_MODEL: (
        "the adapter's served name is the base model's: choose another spec.servedName"
    ),
    Reason.ADAPTER_REJECTED: (
        "vLLM refused the adapter for a reason loraplane does not recognise: fix what vLLM says "
        "(its container's log has the details) in a new revision of the adapter, or in the "
        "BaseModelDeployment when the engine's settings are the cause"
    ),
}
_RANK = re.compile(r"LoRA rank (\d+) is greater than max_lora_rank (\d+)", re.I)
_RECEIVED = re.compile(r"but received (\[.*?\])", re.S)
_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", re.I)


def headline(reason: Reason, message: str) -> str:
    """Our own sentence for a refusal vLLM worded: what is wrong and what to do."""
    if reason == Reason.RANK_EXCEEDS_MAX and (m := _RANK.search(message)):
        rank, limit = m.group(1), m.group(2)
        return (
            f"the adapter's LoRA rank {rank} is above the base model's maxLoraRank {limit}: "
            f"raise the BaseModelDeployment's spec.lora.maxLoraRank to {rank} or more, or use "
            f"an adapter of rank {limit} or less"
        )
    if reason == Reason.UNSUPPORTED_TARGET_MODULES and (m := _RECEIVED.search(message)):
        return (
            f"the adapter has weights for {m.group(1)[:300]}, which vLLM cannot apply LoRA to on "
            f"this base model: {_RETRAIN}"
        )
    return _HEADLINES.get(reason, _HEADLINES[Reason.ADAPTER_REJECTED])


def _detail(reason: Reason, message: str) -> str:
    """vLLM's words as detail; torch's advice for unsafe pickles is left out (it says to load the
    file with weights_only=False, which would run the code it holds)."""
    if reason == Reason.UNSAFE_PICKLE:
        m = _GLOBAL.search(message)
        return f"torch refused the global {m.group(1)}" if m else "torch refused the pickle"
    return message


def _rejection(reason: Reason, message: str) -> str:
    if message == NO_MESSAGE:
        return message
    return f"{headline(reason, message)} (vLLM: {_detail(reason, message)})"


def classify(status: int, body: bytes | str | Mapping[str, Any] | None) -> VLLMError:
    """Classify an error answer of vLLM by error type and message (the HTTP code only breaks ties).

    The returned error is never raised here: the caller decides.
    """
    parsed = parse_error_body(body)
    raw = parsed.message
    message = normalize_message(raw) or f"HTTP {status} with an empty body"
    kwargs: dict[str, Any] = {
        "status": status,
        "error_type": parsed.type,
        "raw_message": raw,
        "detail": message,
    }

    if status == 401 or parsed.type == "Unauthorized" or raw == "Unauthorized":
        return Unauthorized(
            Reason.UNAUTHORIZED,
            f"vLLM refused the API key ({message}); check spec.engine.apiKeySecretRef",
            **kwargs,
        )
    if status == 404 and parsed.type is None and raw == "Not Found":
        return RuntimeLoRAUpdatingDisabled(
            Reason.RUNTIME_UPDATING_DISABLED, RUNTIME_UPDATING_HINT, **kwargs
        )
    if _ALREADY_LOADED.search(raw):
        return AlreadyLoaded(Reason.ALREADY_LOADED, message, **kwargs)

    # Match on the normalized text so that a path or a name never triggers a pattern.
    reasons = _adapter_reasons(message)
    if reasons:
        return AdapterRejected(
            reasons[0], _rejection(reasons[0], message), reasons=reasons, **kwargs
        )

    if status == 404 and (parsed.type == "NotFoundError" or _NOT_LOADED.search(raw)):
        # The only NotFoundError left after "No adapter found" is the unload of an unknown name.
        return AdapterNotLoaded(Reason.NOT_LOADED, message, **kwargs)
    if status in _TRANSIENT_STATUS or _TRANSIENT_MESSAGES.search(raw):
        return TransientVLLMError(Reason.TRANSIENT, message, **kwargs)
    if status == 422 or parsed.type == "RequestValidationError":
        return InvalidRequest(Reason.INVALID_REQUEST, message, **kwargs)
    if _ADD_LORA_PREFIX.match(raw) or (
        status == 400 and parsed.type in ("BadRequestError", "InvalidUserInput", None)
    ):
        # add_lora raised something we have no pattern for: vLLM validated the adapter and
        # refused it (up to 0.17 every such refusal was a 400), so retrying will not help.
        return AdapterRejected(
            Reason.ADAPTER_REJECTED, _rejection(Reason.ADAPTER_REJECTED, message), **kwargs
        )
    return VLLMServerError(Reason.SERVER_ERROR, message, **kwargs)


def error_class(error: VLLMError) -> str:
    """The coarse class of an error answer (rejected, client_error, server_error), for metrics."""
    if error.permanent:
        return "rejected"
    if error.status is not None and error.status < 500:
        return "client_error"
    return "server_error"

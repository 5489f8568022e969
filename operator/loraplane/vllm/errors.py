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
    message (the first is ``reason``). ``message``: the server's message with paths normalized.
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
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.error_type = error_type
        self.reasons = reasons or (reason,)
        self.raw_message = raw_message if raw_message is not None else message

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
        text = wrapped.group("inner").strip() or (
            "vLLM refused the adapter without an error message (vLLM 0.32 does so, for one, "
            "for a safetensors file without tensors); see the vLLM log"
        )
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
        return AdapterRejected(reasons[0], message, reasons=reasons, **kwargs)

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
        return AdapterRejected(Reason.ADAPTER_REJECTED, message, **kwargs)
    return VLLMServerError(Reason.SERVER_ERROR, message, **kwargs)


def error_class(error: VLLMError) -> str:
    """The coarse class of an error answer (rejected, client_error, server_error), for metrics."""
    if error.permanent:
        return "rejected"
    if error.status is not None and error.status < 500:
        return "client_error"
    return "server_error"

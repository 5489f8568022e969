"""fakevllm: a FAKE vLLM OpenAI server, for fleet-scale benchmarks only. It serves no model.

Run as ``python -m fakevllm <vLLM's arguments>``. It stands in for ``vllm serve`` where 100 real
CPU servers cannot run (one 2-core machine), so that the operator's real client code
(``loraplane.vllm.client`` and ``errors``) sees what it sees from a real server.

What it follows: the contract in DESIGN.md section 4, as measured on vLLM 0.32 CPU, and vLLM
0.32.0's source for the exact bodies:

- ``GET /health`` (200, empty), ``GET /version`` (``{"version":"0.32.0"}``), ``GET /v1/models``
  (the base card(s), then one card per registered adapter: parent = the first served name,
  root = the lora_path as given, fresh ``created`` and permission id per answer, like vLLM).
- ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` only when
  VLLM_ALLOW_RUNTIME_LORA_UPDATING is "1" or "true" (else 404 ``{"detail":"Not Found"}``);
  plain-text success bodies; ``{"error":{"message","type","param","code"}}`` errors with vLLM's
  types, codes and messages, sanitised as vLLM sanitises them (some paths -> ``<path>``). A load
  really opens ``<lora_path>/adapter_config.json`` and checks it as vLLM's PEFTHelper does
  (required fields, ranks against --max-lora-rank incl. ``rank_pattern``, DoRA, bias,
  modules_to_save, unsupported PEFT features); such refusals are 500 InternalServerError with the
  engine's "Call to add_lora method failed: Worker failed with error '...'" wrapping (0.32,
  measured); a missing path or config is 404 NotFoundError "Loading lora <name> failed: No
  adapter found for <path>"; a second load of a name is 400 InvalidUserInput "has already been
  loaded" unless ``load_inplace``.
- ``--api-key`` (or env VLLM_API_KEY when no --api-key) guards /v1, /v2, /inference and /cohere
  with 401 ``{"error":"Unauthorized"}``; /health, /version, /metrics are open.
- ``POST /v1/completions`` answers a tiny completion whose text says it comes from fakevllm (404
  NotFoundError for an unknown model). ``GET /metrics`` has only ``vllm:lora_requests_info``
  until a test scripts it (below).
- A load holds one lock while it "runs" for a latency drawn uniformly from 10-20 ms (what real CPU
  vLLM showed here; env FAKEVLLM_LOAD_SECONDS="min,max" overrides): vLLM's engine core runs one
  add_lora at a time. An unload takes about 1 ms (env FAKEVLLM_UNLOAD_SECONDS).
- Everything is in memory: the process exiting loses every runtime adapter, as with vLLM.

Fake-only: ``GET /fakevllm/stats`` -> ``{"requests": {"GET /v1/models": n, ...}, "adapters": n}``
counts requests per route so that a benchmark can check the calls per minute from the server side.
``POST /fakevllm/metrics`` scripts what ``/metrics`` reports, so that a router test can say what
each pod's scheduler signals are: a JSON object with any of ``num_requests_waiting``,
``num_requests_running``, ``kv_cache_usage_perc`` (numbers: ``vllm:<key>{engine="0",
model_name=<served name>}``), ``lora_requests_info`` (replaces the default line) and
``lora_residency_info`` (loraplane's gauge, ``loraplane:lora_residency_info``), each of the last
two ``{"running": [names], "waiting": [names], "max_lora": n}`` (``max_lora`` defaults to
--max-loras); ``null`` removes a key's series; keys not given keep their values; the answer is the
whole script. The two info gauges behave as vLLM's: the value is the time of the scrape for the
current label set, and every earlier label set stays listed with the time it was replaced, so a
reader must take the largest value. Every completion names the server that answered in headers
``x-fakevllm-pod`` (the host name: the pod's name on the process node) and
``x-fakevllm-address`` (the local address and port the request came in on).

What it does not do: no inference, no engine, no weights are read (an adapter with a config but
bad or no weights loads here and would fail on vLLM), no LRU or GPU/CPU residency (--max-loras and
--max-cpu-loras are only validated and shown in /metrics), no --lora-modules, no SageMaker
routes, no streaming, no chat. FastAPI's request-validation messages are approximated.

Standard library only, and not ``http.server`` (it imports http.client, email and ssl: about 8 MB
more per process): a small HTTP/1.1 server on ``socketserver.ThreadingTCPServer``, one daemon
thread per connection, keep-alive, Content-Length and chunked request bodies.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import signal
import socket
import socketserver
import sys
import threading
import time

# No dataclasses or typing at run time: with inspect they cost 2 MB per process.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    Handler = Callable[[dict[str, str], bytes], "Response"]

__all__ = ["VLLM_VERSION", "Config", "FakeVLLM", "main", "parse_args"]

VLLM_VERSION = "0.32.0"
# vLLM's MaxLoRARanks (vllm/config/lora.py).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Paths the auth middleware guards (vllm/entrypoints/serve/middleware/authenticate.py).
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
# Without --max-model-len vLLM takes the model's own limit; a fake has no model to read it from
# unless --model is a local directory with a config.json.
DEFAULT_MAX_MODEL_LEN = 2048
# uvicorn's default keep-alive timeout.
KEEP_ALIVE_SECONDS = 5.0
# Scriptable /metrics (POST /fakevllm/metrics): the gauges vLLM exports per engine, by script key.
SCRIPTED_GAUGES = {
    "num_requests_waiting": "Number of requests waiting to be processed.",
    "num_requests_running": "Number of requests in model execution batches.",
    "kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
}
# The timestamp "info" gauges: script key -> (metric, HELP).
SCRIPTED_INFO = {
    "lora_requests_info": ("vllm:lora_requests_info", "Running stats on lora requests."),
    "lora_residency_info": (
        "loraplane:lora_residency_info",
        "LoRA adapters resident in GPU slots (running) and the CPU cache (waiting).",
    ),
}


def _log(message: str) -> None:
    print(f"fakevllm: {message}", file=sys.stderr, flush=True)


def _same_path(path: str) -> str:
    return path


# --------------------------------------------------------------------------- arguments


class Config:
    """The server's settings, from vLLM's flags and the environment (see ``parse_args``)."""

    def __init__(self, model: str = DEFAULT_MODEL, host: str = "0.0.0.0") -> None:
        self.model = model
        self.served_names: list[str] = [model]
        self.host = host
        self.port = 8000
        self.enable_lora = False
        self.max_loras = 1
        self.max_cpu_loras: int | None = None
        self.max_lora_rank = 16
        self.api_keys: list[str] = []
        self.max_model_len: int | None = None
        self.runtime_updating = False
        self.load_seconds = (0.010, 0.020)
        self.unload_seconds = 0.001


class ArgsError(ValueError):
    pass


_VALUE_FLAGS = {
    "--model",
    "--host",
    "--port",
    "--max-loras",
    "--max-cpu-loras",
    "--max-lora-rank",
    "--max-model-len",
}
_LIST_FLAGS = {"--served-model-name", "--api-key"}
_SWITCHES = {"--enable-lora": True, "--no-enable-lora": False}


def _human_int(text: str) -> int:
    """vLLM's human-readable ints: 1k = 1000, 1K = 1024, 25.6k = 25600; -1 or auto = auto."""
    text = text.strip()
    if text.lower() == "auto":
        return -1
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", text)
    if not match:
        return int(text)
    number, suffix = match.groups()
    power = "kmgt".index(suffix.lower()) + 1
    if suffix.islower():
        return int(float(number) * 10 ** (3 * power))
    return int(number) << (10 * power)


def parse_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> Config:
    """vLLM's flags that matter here; any other flag, with or without a value, is ignored."""
    env = os.environ if environ is None else environ
    args = list(argv)
    if args[:1] == ["serve"]:
        args = args[1:]
    values: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    enable_lora = False
    if args and not args[0].startswith("-"):
        values["--model"] = args.pop(0)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            continue  # a value of an ignored flag, or a stray positional
        name, eq, inline = arg.partition("=")
        if name.startswith("--"):
            name = "--" + name[2:].replace("_", "-")
        if name in _SWITCHES:
            enable_lora = _SWITCHES[name] if not eq else inline.lower() in ("1", "true", "yes")
        elif name in _VALUE_FLAGS:
            if eq:
                values[name] = inline
            elif i < len(args):
                values[name] = args[i]
                i += 1
            else:
                raise ArgsError(f"argument {name}: expected one argument")
        elif name in _LIST_FLAGS:
            taken = [inline] if eq else []
            while not eq and i < len(args) and not args[i].startswith("-"):
                taken.append(args[i])
                i += 1
            if not taken:
                raise ArgsError(f"argument {name}: expected at least one argument")
            lists[name] = taken  # argparse keeps the last occurrence
        elif not eq and i < len(args) and not args[i].startswith("-"):
            i += 1  # an unknown flag's value

    def as_int(flag: str, default: int | None) -> int | None:
        if flag not in values:
            return default
        try:
            return _human_int(values[flag])
        except ValueError:
            raise ArgsError(f"argument {flag}: invalid int value: {values[flag]!r}") from None

    config = Config(values.get("--model", DEFAULT_MODEL), values.get("--host") or "0.0.0.0")
    config.enable_lora = enable_lora
    switch = env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower()
    config.runtime_updating = switch in ("1", "true")
    config.served_names = lists.get("--served-model-name") or [config.model]
    config.port = as_int("--port", 8000) or 0
    config.max_loras = as_int("--max-loras", 1) or 0
    config.max_cpu_loras = as_int("--max-cpu-loras", None)
    config.max_lora_rank = as_int("--max-lora-rank", 16) or 0
    config.max_model_len = as_int("--max-model-len", None)
    # vLLM: --api-key takes precedence over VLLM_API_KEY.
    config.api_keys = [k for k in (lists.get("--api-key") or [env.get("VLLM_API_KEY", "")]) if k]
    if config.max_lora_rank not in MAX_LORA_RANKS:
        choices = ", ".join(map(str, MAX_LORA_RANKS))
        raise ArgsError(
            f"argument --max-lora-rank: invalid choice: {config.max_lora_rank} "
            f"(choose from {choices})"
        )
    if config.max_loras < 1:
        raise ArgsError("max_loras must be >= 1")
    if config.max_cpu_loras is not None and config.max_cpu_loras < config.max_loras:
        raise ArgsError(
            f"max_cpu_loras ({config.max_cpu_loras}) must be >= max_loras ({config.max_loras})."
        )
    if config.max_model_len is None or config.max_model_len < 0:
        config.max_model_len = _model_max_len(config.model)
    config.load_seconds = _seconds_range(env.get("FAKEVLLM_LOAD_SECONDS"), (0.010, 0.020))
    config.unload_seconds = _seconds_range(env.get("FAKEVLLM_UNLOAD_SECONDS"), (0.001, 0.001))[0]
    return config


def _seconds_range(text: str | None, default: tuple[float, float]) -> tuple[float, float]:
    if not text:
        return default
    parts = [float(p) for p in text.split(",")]
    low, high = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    if low < 0 or high < low:
        raise ArgsError(f"bad seconds range {text!r}: want min,max with 0 <= min <= max")
    return low, high


def _model_max_len(model: str) -> int:
    try:
        with open(os.path.join(model, "config.json")) as f:
            value = json.load(f).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_MAX_MODEL_LEN
    return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_MODEL_LEN


# --------------------------------------------------------------------------- vLLM's messages


_SANITIZE = (
    (re.compile(r" at 0x[0-9a-fA-F]+>"), ">"),
    (re.compile(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?'), ""),
    (re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+"), "<path>"),
    (re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+"), "<path>"),
)


def sanitize(message: str) -> str:
    """What vLLM 0.32 does to every error message: some paths become ``<path>``, not all."""
    for pattern, replacement in _SANITIZE:
        message = pattern.sub(replacement, message)
    return message.strip()


class AdapterNotFound(Exception):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(f"Loading lora {name} failed: No adapter found for {path}")


def _random_hex() -> str:
    """A uuid4().hex without importing uuid (half a MB)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


_SUPPORTED_STR_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


def check_adapter_config(config: Any, max_lora_rank: int) -> None:
    """Raise what vLLM 0.32's PEFTHelper raises for this adapter_config.json (same messages)."""
    config["vllm_max_position_embeddings"] = None  # a non-dict fails here, as in vLLM
    missing = {"r", "lora_alpha", "target_modules"} - set(config)
    if missing:
        raise ValueError(f"Missing required configuration fields: {missing}")
    r = config["r"]
    if r <= 0:
        raise ValueError(f"LoRA rank `r` must be a positive integer, got {r}.")
    rank_pattern = config.get("rank_pattern") or {}
    for key, rank in rank_pattern.items():
        if not isinstance(rank, int) or rank <= 0:
            raise ValueError(
                f"LoRA rank for `{key}` in `rank_pattern` must be a positive integer, got {rank}."
            )
    problems: list[str] = []
    to_save = config.get("modules_to_save") or []
    unsupported = [m for m in to_save if m not in ("classifier", "score")]
    if unsupported:
        problems.append(
            "vLLM only supports modules_to_save being either None "
            'or ["classifier", "score"] for classification models. '
            f"Unsupported modules_to_save: {unsupported}"
        )
    if config.get("use_dora"):
        problems.append("vLLM does not yet support DoRA.")
    if config.get("lora_bias"):
        problems.append("vLLM does not support LoRA bias (lora_bias).")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _SUPPORTED_STR_INITS:
        problems.append(
            f"vLLM does not support init_lora_weights={init!r}."
            " Inits such as PiSSA, OLoRA, CorDA and LoftQ modify the base model"
            " weights when PEFT loads the adapter. Convert it to a regular LoRA"
            " adapter with PEFT's path_initial_model_for_weight_conversion, or"
            " set init_lora_weights to true if the served base model already"
            " contains the modified weights."
        )
    if config.get("alora_invocation_tokens"):
        problems.append("vLLM does not support Activated LoRA (aLoRA).")
    if config.get("layer_replication"):
        problems.append("vLLM does not support layer_replication.")
    if config.get("use_bdlora"):
        problems.append("vLLM does not support block-diagonal LoRA (BD-LoRA).")
    if config.get("use_qalora"):
        problems.append("vLLM does not support QALoRA.")
    top = max([r, *rank_pattern.values()])
    if top > max_lora_rank:
        problems.append(f"LoRA rank {top} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("bias", "none") != "none":
        problems.append("Adapter bias is not supported.")
    if problems:
        raise ValueError(" ".join(problems))


# --------------------------------------------------------------------------- the application


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers: list[tuple[str, str]] = []


def json_response(status: int, content: Any) -> Response:
    # Starlette's JSONResponse rendering: compact, UTF-8.
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(status, body.encode(), "application/json")


def error_response(message: str, type_: str, code: int, param: str | None = None) -> Response:
    error = {"message": sanitize(message), "type": type_, "param": param, "code": code}
    return json_response(code, {"error": error})


def text_response(text: str) -> Response:
    # vLLM returns Response(content=str): no Content-Type header at all.
    return Response(200, text.encode())


class _Invalid(Exception):
    """A FastAPI request-validation failure: 400 "Bad Request" in vLLM's envelope."""

    def __init__(self, errors: list[Any]) -> None:
        super().__init__("validation")
        self.errors = errors

    def response(self) -> Response:
        def summarize(value: Any) -> Any:
            if isinstance(value, str):
                return value if len(value) <= 200 else value[:200] + "...[truncated]"
            if isinstance(value, (list, tuple, set, frozenset, dict)):
                return f"<{type(value).__name__} of {len(value)} items>"
            return str(value)

        rendered = []
        param = None
        for err in self.errors:
            if isinstance(err, dict):
                err = dict(err)
                err["loc"] = ".".join(str(p) for p in err["loc"])
                param = param or err["loc"]
                if "input" in err:
                    err["input"] = summarize(err["input"])
            rendered.append(f"  {err}\n")
        label = "error" if len(self.errors) == 1 else "errors"
        message = f"{len(self.errors)} validation {label}:\n" + "".join(rendered)
        return error_response(message.rstrip(), "Bad Request", 400, param)


_TRUE = ("1", "on", "t", "true", "y", "yes")
_FALSE = ("0", "off", "f", "false", "n", "no")


def _parse_body(headers: dict[str, str], body: bytes, fields: dict[str, str]) -> dict[str, Any]:
    """The JSON body, checked as vLLM's pydantic models (lax mode) and validate_json_request do.

    ``fields``: name -> "str" (required), "bool" (default False), "int?" (default None).
    """
    media_type = headers.get("content-type", "").lower().split(";", 1)[0].strip()
    if media_type != "application/json":
        raise _Invalid(["Unsupported Media Type: Only 'application/json' is allowed"])
    if not body.strip():
        raise _Invalid([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        data = json.loads(body)
    except ValueError as e:
        pos = getattr(e, "pos", 0)
        error = {"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error"}
        raise _Invalid([{**error, "input": {}, "ctx": {"error": getattr(e, "msg", str(e))}}]) from e
    if not isinstance(data, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        raise _Invalid([{"type": "model_attributes_type", "loc": ("body",), "msg": msg}])
    errors: list[Any] = []
    out: dict[str, Any] = {}
    for name, kind in fields.items():
        loc = ("body", name)
        value = data.get(name)
        if name not in data:
            if kind == "str":
                errors.append(
                    {"type": "missing", "loc": loc, "msg": "Field required", "input": data}
                )
            out[name] = False if kind == "bool" else None
        elif kind == "str":
            if not isinstance(value, str):
                msg = "Input should be a valid string"
                errors.append({"type": "string_type", "loc": loc, "msg": msg, "input": value})
            out[name] = value
        elif kind == "bool":
            if isinstance(value, bool):
                out[name] = value
            elif isinstance(value, (int, float)) and value in (0, 1):
                out[name] = bool(value)
            elif isinstance(value, str) and value.lower() in _TRUE + _FALSE:
                out[name] = value.lower() in _TRUE
            else:
                kind_, msg = (
                    ("bool_parsing", "Input should be a valid boolean, unable to interpret input")
                    if isinstance(value, (str, int, float))
                    else ("bool_type", "Input should be a valid boolean")
                )
                errors.append({"type": kind_, "loc": loc, "msg": msg, "input": value})
        else:  # "int?"
            if value is None or (isinstance(value, int) and not isinstance(value, bool)):
                out[name] = value
            elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                out[name] = int(value)
            else:
                msg = "Input should be a valid integer"
                errors.append({"type": "int_type", "loc": loc, "msg": msg, "input": value})
    if errors:
        raise _Invalid(errors)
    return out


class Adapter:
    __slots__ = ("int_id", "name", "name_json", "path", "path_json")

    def __init__(self, name: str, path: str, int_id: int) -> None:
        self.name = name
        self.path = path
        self.int_id = int_id
        self.name_json = _json(name)
        self.path_json = _json(path)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _card(id_: str, root: str, parent: str, max_len: str, now: int) -> str:
    """One vLLM ModelCard, rendered as Starlette renders its model_dump() (same keys, same order,
    fresh permission id), from values that are JSON already: a template is five times faster than
    json.dumps of 1000 dicts."""
    return (
        f'{{"id":{id_},"object":"model","created":{now},"owned_by":"vllm","root":{root},'
        f'"parent":{parent},"max_model_len":{max_len},"permission":[{{"id":"modelperm-'
        f'{_random_hex()}","object":"model_permission","created":{now},'
        '"allow_create_engine":false,"allow_sampling":true,"allow_logprobs":true,'
        '"allow_search_indices":false,"allow_view":true,"allow_fine_tuning":false,'
        '"organization":"*","group":null,"is_blocking":false}]}'
    )


class FakeVLLM:
    """The routes and the in-memory state of one fake server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.adapters: dict[str, Adapter] = {}  # insertion order, as vLLM's dict
        self._next_id = 0
        self._state = threading.Lock()  # adapters, counters, name locks
        self._name_locks: dict[str, threading.Lock] = {}
        # vLLM's engine core runs one utility call (add_lora) at a time: loads are serialised.
        self._engine = threading.Lock()
        self.counts: dict[str, int] = {}
        self.local_counts: dict[str, int] = {}
        self.remote_counts: dict[str, int] = {}
        # POST /fakevllm/metrics: gauge key -> value; info key -> current label set; info key ->
        # {earlier label set: the time it was replaced}.
        self.gauges: dict[str, float] = {}
        self.info: dict[str, str | None] = {}
        self.info_history: dict[str, dict[str, float]] = {}
        self.pod = socket.gethostname()
        # Where a load finds `lora_path`: the process's own file system here; a caller that hosts
        # many fake pods in one process maps each pod's mounts (hack/fakepods).
        self.resolve_path: Callable[[str], str] = _same_path
        self.log: Callable[[str], None] = _log
        self.routes: dict[str, dict[str, Handler]] = {
            "/health": {"GET": self.health},
            "/version": {"GET": self.version},
            "/metrics": {"GET": self.metrics},
            "/v1/models": {"GET": self.models},
            "/v1/completions": {"POST": self.completions},
            "/fakevllm/stats": {"GET": self.stats},
            "/fakevllm/metrics": {"POST": self.script_metrics},
        }
        # Known routes are counted by name even when disabled; the rest share one key.
        self.counted = {*self.routes, "/v1/load_lora_adapter", "/v1/unload_lora_adapter"}
        if config.runtime_updating:
            self.routes["/v1/load_lora_adapter"] = {"POST": self.load}
            self.routes["/v1/unload_lora_adapter"] = {"POST": self.unload}

    # ----------------------------------------------------------------- dispatch

    def dispatch(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        local: bool = False,
        address: str = "",
    ) -> Response:
        key = f"{method} {path}" if path in self.counted else f"{method} (other)"
        # Callers inside the pod (the agent, on loopback) apart from the rest (the operator,
        # probes): a benchmark counts the operator's calls.
        peer = self.local_counts if local else self.remote_counts
        with self._state:
            self.counts[key] = self.counts.get(key, 0) + 1
            peer[key] = peer.get(key, 0) + 1
        if (
            self.config.api_keys
            and method != "OPTIONS"
            and path.startswith(GUARDED_PREFIXES)
            and not self._authorized(headers)
        ):
            return json_response(401, {"error": "Unauthorized"})
        methods = self.routes.get(path)
        if methods is None:
            return json_response(404, {"detail": "Not Found"})
        handler = methods.get(method)
        if handler is None:
            response = json_response(405, {"detail": "Method Not Allowed"})
            response.headers.append(("allow", ", ".join(methods)))
            return response
        try:
            response = handler(headers, body)
        except _Invalid as e:
            return e.response()
        if path == "/v1/completions":
            # Which server answered: a router test checks where its request landed.
            response.headers += [("x-fakevllm-pod", self.pod), ("x-fakevllm-address", address)]
        return response

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # A plain comparison: a fake on a benchmark network has no timing attack to fear.
        return scheme.lower() == "bearer" and token in self.config.api_keys

    # ----------------------------------------------------------------- routes

    def health(self, headers: dict[str, str], body: bytes) -> Response:
        return Response(200)

    def version(self, headers: dict[str, str], body: bytes) -> Response:
        return json_response(200, {"version": VLLM_VERSION})

    def models(self, headers: dict[str, str], body: bytes) -> Response:
        now = int(time.time())
        with self._state:
            adapters = list(self.adapters.values())
        config = self.config
        root, max_len = _json(config.model), _json(config.max_model_len)
        cards = [_card(_json(name), root, "null", max_len, now) for name in config.served_names]
        base = _json(config.served_names[0])
        cards += [_card(a.name_json, a.path_json, base, "null", now) for a in adapters]
        text = '{"object":"list","data":[' + ",".join(cards) + "]}"
        return Response(200, text.encode(), "application/json")

    def _name_lock(self, name: str) -> threading.Lock:
        with self._state:
            return self._name_locks.setdefault(name, threading.Lock())

    def load(self, headers: dict[str, str], body: bytes) -> Response:
        fields = {"lora_name": "str", "lora_path": "str", "load_inplace": "bool"}
        request = _parse_body(headers, body, fields | {"is_3d_lora_weight": "bool"})
        name, path = request["lora_name"], request["lora_path"]
        # vLLM holds a lock per name around the checks, the engine call and the registration.
        with self._name_lock(name):
            if not name or not path:
                return error_response(
                    "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400
                )
            if name in self.config.served_names:
                return error_response(
                    f"The lora adapter '{name}' conflicts with a served base model.",
                    "InvalidUserInput",
                    400,
                )
            previous = self.adapters.get(name)
            if previous is not None and not request["load_inplace"]:
                return error_response(
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True.",
                    "InvalidUserInput",
                    400,
                )
            try:
                self._add_lora(name, path)
            except AdapterNotFound as e:
                return error_response(str(e), "NotFoundError", 404)
            except Exception as e:
                return error_response(
                    "Call to add_lora method failed: Worker failed with error "
                    f"'{e}', please check the stack trace above for the root cause",
                    "InternalServerError",
                    500,
                )
            with self._state:
                if previous is None:
                    self._next_id += 1
                int_id = previous.int_id if previous is not None else self._next_id
                self.adapters[name] = Adapter(name, path, int_id)
        self.log(f"Loaded new LoRA adapter: name '{name}', path '{path}'")
        return text_response(f"Success: LoRA adapter '{name}' added successfully.")

    def _add_lora(self, name: str, path: str) -> None:
        """The engine's part of a load: one at a time, for the measured latency."""
        with self._engine:
            time.sleep(random.uniform(*self.config.load_seconds))
            if not self.config.enable_lora:
                raise RuntimeError("LoRA is not enabled. Use --enable-lora to enable LoRA.")
            # vLLM's get_adapter_absolute_path for a local path (no Hugging Face download here).
            local = self.resolve_path(path)
            if local.startswith("~"):
                local = os.path.expanduser(local)
            elif not os.path.isabs(local) and os.path.exists(local):
                local = os.path.abspath(local)
            try:
                with open(os.path.join(local, "adapter_config.json")) as f:
                    config = json.load(f)
            except FileNotFoundError:
                raise AdapterNotFound(name, path) from None
            check_adapter_config(config, self.config.max_lora_rank)

    def unload(self, headers: dict[str, str], body: bytes) -> Response:
        request = _parse_body(headers, body, {"lora_name": "str", "lora_int_id": "int?"})
        name = request["lora_name"]
        with self._name_lock(name):
            if not name:
                return error_response(
                    "'lora_name' needs to be provided to unload a LoRA adapter.",
                    "InvalidUserInput",
                    400,
                )
            if name not in self.adapters:
                return error_response(
                    f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404
                )
            time.sleep(self.config.unload_seconds)
            with self._state:
                del self.adapters[name]
        self.log(f"Removed LoRA adapter: name '{name}'")
        return text_response(f"Success: LoRA adapter '{name}' removed successfully.")

    def completions(self, headers: dict[str, str], body: bytes) -> Response:
        media_type = headers.get("content-type", "").lower().split(";", 1)[0].strip()
        if media_type != "application/json":
            raise _Invalid(["Unsupported Media Type: Only 'application/json' is allowed"])
        try:
            request = json.loads(body)
        except ValueError as e:
            error = {"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error"}
            raise _Invalid([error]) from e
        if not isinstance(request, dict):
            request = {}
        model = request.get("model")
        with self._state:
            known = not model or model in self.config.served_names or model in self.adapters
        if not known:
            aliases = ", ".join(self.config.served_names)
            return error_response(
                f"The model `{model}` does not exist. Valid aliases: {aliases}.",
                "NotFoundError",
                404,
                "model",
            )
        model = model or self.config.served_names[0]
        text = f" [fakevllm: a fake vLLM, no inference; model {model}]"
        prompt = request.get("prompt")
        prompt_tokens = len(prompt.split()) if isinstance(prompt, str) else 0
        completion_tokens = len(text.split())
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
        }
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
        }
        return json_response(
            200,
            {
                "id": f"cmpl-{_random_hex()}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "service_tier": None,
                "system_fingerprint": None,
                "usage": usage,
                "kv_transfer_params": None,
            },
        )

    def _info_labels(self, running: Sequence[str], waiting: Sequence[str], max_lora: int) -> str:
        return (
            f'max_lora="{max_lora}",waiting_lora_adapters="{",".join(waiting)}",'
            f'running_lora_adapters="{",".join(running)}"'
        )

    def metrics(self, headers: dict[str, str], body: bytes) -> Response:
        now = time.time()
        lines = []
        with self._state:
            gauges = dict(self.gauges)
            info = dict(self.info)
            history = {k: dict(v) for k, v in self.info_history.items()}
        model = self.config.served_names[0]
        for key, help_ in SCRIPTED_GAUGES.items():
            if key in gauges:
                name = f"vllm:{key}"
                lines += [
                    f"# HELP {name} {help_}",
                    f"# TYPE {name} gauge",
                    f'{name}{{engine="0",model_name="{model}"}} {_go_float(gauges[key])}',
                ]
        for key, (name, help_) in SCRIPTED_INFO.items():
            current = info.get(key)
            if key == "lora_requests_info" and key not in info and self.config.enable_lora:
                # A timestamp gauge; the adapter lists name in-flight requests (none here).
                current = self._info_labels([], [], self.config.max_loras)
            series = dict(history.get(key, {}))
            if current is not None:
                series[current] = now  # vLLM sets the live label set to the time at every step
            if series:
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
                lines += [f"{name}{{{labels}}} {_go_float(t)}" for labels, t in series.items()]
        body_ = ("\n".join(lines) + "\n") if lines else ""
        return Response(200, body_.encode(), "text/plain; version=1.0.0; charset=utf-8")

    def _script_info(self, value: Any) -> str:
        """The label set of an info gauge from its script; ValueError when malformed."""
        if not isinstance(value, dict) or set(value) - {"running", "waiting", "max_lora"}:
            raise ValueError(value)
        running, waiting = value.get("running", []), value.get("waiting", [])
        max_lora = value.get("max_lora", self.config.max_loras)
        for names in (running, waiting):
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(value)
        if isinstance(max_lora, bool) or not isinstance(max_lora, int):
            raise ValueError(value)
        return self._info_labels(running, waiting, max_lora)

    def script_metrics(self, headers: dict[str, str], body: bytes) -> Response:
        """POST /fakevllm/metrics: set what /metrics reports (see the module docstring)."""
        try:
            script = json.loads(body or b"{}")
        except ValueError:
            return json_response(400, {"detail": "the body must be a JSON object"})
        if not isinstance(script, dict):
            return json_response(400, {"detail": "the body must be a JSON object"})
        unknown = sorted(set(script) - set(SCRIPTED_GAUGES) - set(SCRIPTED_INFO))
        if unknown:
            known = sorted([*SCRIPTED_GAUGES, *SCRIPTED_INFO])
            return json_response(400, {"detail": f"unknown keys {unknown}; known: {known}"})
        gauges: dict[str, float | None] = {}
        info: dict[str, str | None] = {}
        for key, value in script.items():
            if key in SCRIPTED_GAUGES:
                if value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float))
                ):
                    return json_response(400, {"detail": f"{key} must be a number or null"})
                gauges[key] = None if value is None else float(value)
                continue
            try:
                info[key] = None if value is None else self._script_info(value)
            except ValueError:
                shape = '{"running": [names], "waiting": [names], "max_lora": int}'
                return json_response(400, {"detail": f"{key} must be null or {shape}"})
        now = time.time()
        with self._state:
            for key, gauge in gauges.items():
                if gauge is None:
                    self.gauges.pop(key, None)
                else:
                    self.gauges[key] = gauge
            for key, labels in info.items():
                before = self.info.get(key)
                if key not in self.info and key == "lora_requests_info" and self.config.enable_lora:
                    before = self._info_labels([], [], self.config.max_loras)
                past = self.info_history.setdefault(key, {})
                if before is not None and before != labels:
                    past[before] = now
                if labels is None:
                    past.clear()  # the metric is gone, as when a server stops exporting it
                else:
                    past.pop(labels, None)
                self.info[key] = labels
            answer = {
                **self.gauges,
                **{k: v for k, v in self.info.items() if v is not None},
            }
        return json_response(200, answer)

    def stats(self, headers: dict[str, str], body: bytes) -> Response:
        with self._state:
            counts = dict(sorted(self.counts.items()))
            local = dict(sorted(self.local_counts.items()))
            remote = dict(sorted(self.remote_counts.items()))
            adapters = len(self.adapters)
        body_ = {"requests": counts, "loopback": local, "remote": remote, "adapters": adapters}
        return json_response(200, body_)


def _go_float(value: float) -> str:
    """A float as prometheus_client writes it (1.7e+09 for a timestamp)."""
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


# --------------------------------------------------------------------------- HTTP/1.1

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Request Entity Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
MAX_BODY = 64 * 1024 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Connection(socketserver.StreamRequestHandler):
    """One client connection: requests one after another (keep-alive), each answered in full."""

    server: _Server
    timeout = KEEP_ALIVE_SECONDS

    def handle(self) -> None:
        try:
            while self._one():
                pass
        except (TimeoutError, ConnectionError, OSError):
            pass

    def _read_line(self) -> bytes:
        line = self.rfile.readline(65537)
        if len(line) > 65536:
            raise _BadRequest(431)
        return line

    def _one(self) -> bool:
        line = self._read_line()
        while line in (b"\r\n", b"\n"):
            line = self._read_line()
        if not line:
            return False
        try:
            method, target, version = line.decode("latin-1").split()
            headers: dict[str, str] = {}
            while True:
                header = self._read_line()
                if header in (b"\r\n", b"\n", b""):
                    break
                name, sep, value = header.decode("latin-1").partition(":")
                if not sep or len(headers) > 200:
                    raise _BadRequest(400)
                headers[name.strip().lower()] = value.strip()
            body = self._body(headers)
        except _BadRequest as e:
            self._send(Response(e.status, b""), keep_alive=False)
            return False
        except ValueError:
            self._send(Response(400, b""), keep_alive=False)
            return False
        connection = headers.get("connection", "").lower()
        keep_alive = (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        path = target.split("?", 1)[0].split("#", 1)[0]
        if "://" in path:  # an absolute-form target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        try:
            local = ipaddress.ip_address(self.client_address[0]).is_loopback
            host, port = self.connection.getsockname()[:2]
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            response = self.server.app.dispatch(method.upper(), path, headers, body, local, address)
        except Exception as e:  # a bug here must not look like a dropped connection
            _log(f"error handling {method} {path}: {type(e).__name__}: {e}")
            response = json_response(500, {"detail": "Internal Server Error"})
        self._send(response, keep_alive, head=method.upper() == "HEAD")
        return keep_alive

    def _body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self._read_line().split(b";", 1)[0].strip() or b"x", 16)
                if size == 0:
                    while self._read_line() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise _BadRequest(413)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(headers.get("content-length", "0") or "0")
        if length < 0:
            raise _BadRequest(400)
        if length > MAX_BODY:
            raise _BadRequest(413)
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise ConnectionResetError("body cut short")
        return body

    def _send(self, response: Response, keep_alive: bool, head: bool = False) -> None:
        reason = _REASONS.get(response.status, "Unknown")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}",
            "server: fakevllm",
            f"content-length: {len(response.body)}",
        ]
        if response.content_type:
            lines.append(f"content-type: {response.content_type}")
        lines += [f"{k}: {v}" for k, v in response.headers]
        if not keep_alive:
            lines.append("connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head_bytes if head else head_bytes + response.body)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True  # an open keep-alive connection never holds up exit
    allow_reuse_address = True  # a restart binds the same port at once
    request_queue_size = 128

    def __init__(self, app: FakeVLLM, address: tuple[str, int]) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Connection)


def serve(config: Config) -> None:
    app = FakeVLLM(config)
    try:
        server = _Server(app, (config.host, config.port))
    except OSError as e:
        raise SystemExit(f"fakevllm: cannot listen on {config.host}:{config.port}: {e}") from None

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    _log(
        f"FAKE vLLM {VLLM_VERSION} (benchmarks only, no inference) serving "
        f"{', '.join(config.served_names)} on http://{config.host}:{server.server_address[1]}; "
        f"runtime LoRA updating {'on' if config.runtime_updating else 'off'}, "
        f"max_lora_rank {config.max_lora_rank}, load {config.load_seconds[0]:g}-"
        f"{config.load_seconds[1]:g} s"
    )
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except (ArgsError, ValueError) as e:
        print(f"fakevllm: error: {e}", file=sys.stderr)
        return 2
    serve(config)
    return 0

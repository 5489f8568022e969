"""Start the CPU vLLM 0.32 on this host for the tiny model, wait until healthy, stop it cleanly.

Used by vLLM-contract tests and benchmarks that need a real server without the cluster. The
environment and arguments that make CPU vLLM start reliably on a small box are kept here as
CPU_VLLM_ENV and CPU_VLLM_ARGS so the process node and the examples reuse the same values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import loraplane_home
from .tinymodel import ensure_tiny_model

log = logging.getLogger(__name__)

# Environment CPU vLLM 0.32 needs on this machine, whatever the pod or test (merged over
# os.environ; the caller's env wins). The process node adds these when a vLLM pod lacks them.
CPU_VLLM_ENV: dict[str, str] = {
    # No hub is reachable: without this, tokenizer and config lookups retry against the network.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # GiB of KV cache (an int; 1 is the least). Unset or 0 means "a share of RAM": many GiB.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # No usage-stats reporting (there is no network anyway).
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
# VLLM_CPU_OMP_THREADS_BIND is left at vLLM's "auto": it pins the model worker to core 0 and
# reserves core 1. Several servers at once on this 2-core box then share core 0; giving each its
# own core ({"VLLM_CPU_OMP_THREADS_BIND": "0"} / "1") measured twice as fast, and "nobind" was
# far slower than either (see the fixtures report).

# The operator's pods set this themselves; start_vllm() sets it unless the caller overrides it
# (e.g. {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "false"} to see the routes missing).
RUNTIME_LORA_ENV: dict[str, str] = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}

# Server arguments for the tiny model (the model, host, port and LoRA flags come separately).
CPU_VLLM_ARGS: list[str] = [
    "--dtype", "bfloat16",
    "--max-model-len", "512",
    "--max-num-seqs", "8",
]  # fmt: skip

# LoRA flags matching the fixtures: rank64 and rank-pattern (32) must be refused at rank 16.
DEFAULT_LORA_ARGS: list[str] = [
    "--enable-lora",
    "--max-lora-rank", "16",
    "--max-loras", "2",
    "--max-cpu-loras", "4",
]  # fmt: skip


def venv_python() -> str:
    """The test venv's interpreter (where vllm-cpu lives), else the current one."""
    candidate = loraplane_home() / "venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class HttpResult:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The OpenAI error object (`{"error": {...}}`; the flat envelope of 0.10 too)."""
        try:
            data = self.json()
        except ValueError:
            return {}
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return dict(data["error"])
        return dict(data) if isinstance(data, dict) else {}


def http(method: str, url: str, payload: Any = None, timeout: float = 60.0) -> HttpResult:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResult(response.status, response.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, exc.read().decode(errors="replace"))


@dataclass
class VllmServer:
    """A running CPU vLLM; its own process group, so stop() takes every child with it."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    model: str
    log_path: Path
    start_seconds: float = 0.0
    argv: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pids(self) -> list[int]:
        """Every live process of the server's process group (API server, engine, workers)."""
        pgid = self.process.pid
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == pgid:
                    found.append(int(entry))
            except ProcessLookupError:
                continue
        return found

    def memory_bytes(self) -> dict[str, int]:
        """Summed RSS and PSS of the process group (PSS does not double-count shared pages)."""
        totals = {"rss": 0, "pss": 0}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    key, _, rest = line.partition(":")
                    if key in ("Rss", "Pss"):
                        totals[key.lower()] += int(rest.split()[0]) * 1024
        return totals

    def get(self, path: str, timeout: float = 60.0) -> HttpResult:
        return http("GET", self.base_url + path, timeout=timeout)

    def post(self, path: str, payload: Any, timeout: float = 120.0) -> HttpResult:
        return http("POST", self.base_url + path, payload, timeout=timeout)

    def load_adapter(self, name: str, path: Path | str) -> HttpResult:
        return self.post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    def unload_adapter(self, name: str) -> HttpResult:
        return self.post("/v1/unload_lora_adapter", {"lora_name": name})

    def models(self) -> list[dict[str, Any]]:
        return list(self.get("/v1/models").json()["data"])

    def complete(
        self, model: str | None = None, prompt: str = "The operator pushes", max_tokens: int = 8
    ) -> HttpResult:
        """A greedy completion; `model` None means the base model."""
        return self.post(
            "/v1/completions",
            {
                "model": model or self.model,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        )

    def healthy(self) -> bool:
        try:
            return self.get("/health", timeout=5).status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with code {self.process.returncode} before becoming healthy;"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"vLLM not healthy after {timeout:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.pids():
            self.process.poll()
            time.sleep(0.2)
        if self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=30)


def start_vllm(
    model_dir: Path | None = None,
    *,
    lora_args: Sequence[str] = DEFAULT_LORA_ARGS,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    startup_timeout: float = 300.0,
) -> VllmServer:
    """Start a CPU vLLM for `model_dir` (default: the tiny model) and wait for /health."""
    model = str(model_dir or ensure_tiny_model())
    port = port or free_port(host)
    if log_path is None:
        log_dir = loraplane_home() / "logs" / "tests"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"vllm-{port}.log"
    argv = [
        venv_python(),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        host,
        "--port",
        str(port),
        *CPU_VLLM_ARGS,
        *lora_args,
        *extra_args,
    ]
    full_env = {**os.environ, **CPU_VLLM_ENV, **RUNTIME_LORA_ENV, **(env or {})}
    started = time.monotonic()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = VllmServer(process, host, port, model, log_path, argv=argv)
    log.info("started vLLM pid %s on %s, log %s", process.pid, server.base_url, log_path)
    try:
        server.wait_healthy(startup_timeout)
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.monotonic() - started
    return server


@contextlib.contextmanager
def running_vllm(model_dir: Path | None = None, **kwargs: Any) -> Iterator[VllmServer]:
    """`with running_vllm() as server:` a healthy CPU vLLM, stopped (whole group) on exit."""
    server = start_vllm(model_dir, **kwargs)
    try:
        yield server
    finally:
        server.stop()

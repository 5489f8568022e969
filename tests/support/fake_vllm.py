"""One process of hack/fakevllm, the FAKE vLLM of the fleet benchmarks, for tests of the code
that talks to it (the operator's vLLM client, the agent's readiness check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.vllm_server import free_port

HACK = Path(__file__).resolve().parents[2] / "hack"
BASE = "tiny"
MODEL = "/models/tiny-llama"
FAST = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "FAKEVLLM_LOAD_SECONDS": "0.001,0.002"}


class Fake:
    """One fakevllm process on 127.0.0.1."""

    def __init__(self, args: list[str], env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            "--model",
            MODEL,
            "--served-model-name",
            BASE,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enable-lora",
            "--max-loras",
            "2",
            "--max-lora-rank",
            "16",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"} | env
        self.env = env | {"PYTHONPATH": f"{HACK}{os.pathsep}{env.get('PYTHONPATH', '')}"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Fake:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fakevllm", *self.args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fakevllm exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("fakevllm did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def get(self, path: str, key: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        return self.call("GET", path, None, key)

    def call(
        self, method: str, path: str, payload: Any, key: str | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


def adapter_dir(root: Path, name: str, r: int = 8, **extra: Any) -> Path:
    path = root / name
    path.mkdir(parents=True)
    config = {"r": r, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]} | extra
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path

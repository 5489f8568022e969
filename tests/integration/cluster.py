"""Test-side access to the local cluster: kubectl, waiting, and reading what a user would see."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 120.0, interval: float = 0.5
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except Exception as exc:  # a probe may fail while things settle; keep the last error
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


@dataclass
class Cluster:
    home: Path
    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.kubectl_bin), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def helm(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.helm_bin), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        scope = ["-n", namespace] if namespace else []
        proc = self.kubectl("get", kind, name, *scope, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def list(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = json.loads(self.kubectl(*args).stdout)["items"]
        return items

    def apply(self, manifest: dict[str, Any] | Sequence[dict[str, Any]], namespace: str) -> None:
        docs = [manifest] if isinstance(manifest, dict) else list(manifest)
        body = "\n---\n".join(json.dumps(d) for d in docs)
        self.kubectl("apply", "-n", namespace, "-f", "-", input=body)

    def try_create(
        self, manifest: dict[str, Any], namespace: str
    ) -> subprocess.CompletedProcess[str]:
        return self.kubectl(
            "create", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
        )

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.list("events", namespace)
            if (e.get("involvedObject") or {}).get("name") == name
        ]


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def pod_ready(pod: dict[str, Any]) -> bool:
    cond = condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True")


def http_json(url: str, payload: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    """GET (or POST `payload`) and decode JSON; raises urllib.error.HTTPError on 4xx/5xx."""
    import urllib.request

    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def post_text(url: str, payload: dict[str, Any], timeout: float = 60) -> str:
    """POST JSON and return the body as text (vLLM's load/unload answer in plain text)."""
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode(errors="replace")


def completion(pod_ip: str, model: str, prompt: str = "hello world", tokens: int = 8) -> str:
    """A greedy completion from one pod's vLLM; returns the text."""
    body = http_json(
        f"http://{pod_ip}:8000/v1/completions",
        {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0},
    )
    assert body["model"] == model
    text: str = body["choices"][0]["text"]
    return text


def served_adapters(pod_ip: str) -> dict[str, str]:
    """What a pod's vLLM lists: adapter name -> path (`root`)."""
    body = http_json(f"http://{pod_ip}:8000/v1/models", timeout=10)
    return {m["id"]: m["root"] for m in body["data"] if m.get("parent")}


def netns_pids(pod_uid: str) -> list[int]:
    """Processes in a pod's network namespace (the process node names it lp-<uid[:8]>)."""
    out = subprocess.run(
        ["ip", "netns", "pids", f"lp-{pod_uid.replace('-', '')[:8]}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(p) for p in out.split()]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def container_pid(pod: dict[str, Any], marker: str) -> int:
    """The first process of a pod whose command line contains `marker` (e.g. vllm.entrypoints)."""
    pids = [p for p in netns_pids(pod["metadata"]["uid"]) if marker in cmdline(p)]
    assert pids, f"no process with {marker!r} found in pod {pod['metadata']['name']}"
    return min(pids)


VLLM_PROCESS = "vllm.entrypoints"
AGENT_PROCESS = "loraplane-agent"

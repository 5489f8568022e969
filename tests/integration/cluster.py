"""Test-side access to the local cluster: kubectl, waiting, and reading what a user would see."""

from __future__ import annotations

import json
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

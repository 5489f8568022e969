"""Startup, liveness and readiness probes (httpGet, tcpSocket, exec), kubelet semantics."""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def _port(value: int | str, container: Obj) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"named port {value} not found in container ports")


def run_probe(
    probe: Obj, container: Obj, pod_ip: str, pid: int | None, env: dict[str, str]
) -> tuple[bool, str]:
    """Runs one probe attempt; returns (success, message)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            spec = probe["httpGet"]
            host, port = spec.get("host") or pod_ip, _port(spec["port"], container)
            conn: http.client.HTTPConnection
            if spec.get("scheme", "HTTP").upper() == "HTTPS":
                ctx = ssl._create_unverified_context()  # the kubelet does not verify either
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
            headers.setdefault("User-Agent", "kube-probe/1.36")
            try:
                conn.request("GET", spec.get("path") or "/", headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"
        if "tcpSocket" in probe or "grpc" in probe:
            # grpc probes are approximated by a TCP connect (no grpc health client here).
            spec = probe.get("tcpSocket") or probe["grpc"]
            host = spec.get("host") or pod_ip
            with socket.create_connection((host, _port(spec["port"], container)), timeout):
                return True, ""
        if "exec" in probe:
            if pid is None:
                return False, "container not running"
            argv = ["nsenter", "-t", str(pid), "-n", "-m", "-u", "--", *probe["exec"]["command"]]
            proc = subprocess.run(argv, env=env, capture_output=True, timeout=timeout, check=False)
            out = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
            return proc.returncode == 0, f"command exited with {proc.returncode}: {out[:200]}"
        return False, "probe has no handler"
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {timeout}s"
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return False, f"probe error: {exc}"


class ProbeLoop(threading.Thread):
    """Runs one probe until stopped; reports result transitions through on_result(bool, msg)."""

    def __init__(
        self,
        kind: str,
        probe: Obj,
        attempt: Callable[[Obj], tuple[bool, str]],
        on_result: Callable[[bool, str], bool],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name=f"probe-{kind}")
        self.kind, self.probe, self.attempt, self.on_result, self.stop = (
            kind,
            probe,
            attempt,
            on_result,
            stop,
        )

    def run(self) -> None:
        p = self.probe
        period = float(p.get("periodSeconds", 10))
        need_ok, need_fail = int(p.get("successThreshold", 1)), int(p.get("failureThreshold", 3))
        if self.stop.wait(float(p.get("initialDelaySeconds", 0))):
            return
        oks = fails = 0
        while not self.stop.is_set():
            ok, msg = self.attempt(p)
            oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
            if (ok and oks >= need_ok) or (not ok and fails >= need_fail):
                if not ok:
                    log.info("%s probe failed: %s", self.kind, msg)
                # on_result returns False when this loop has nothing left to do.
                if not self.on_result(ok, msg):
                    return
            if self.stop.wait(period):
                return

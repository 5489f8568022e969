"""Processes and HTTP for the kit: start a pod's commands, wait for them, stop every one of them.

Each server gets its own process group in the caller's session (never `setsid`: a command runner
that ends the caller's session then ends the servers too, and a server in a session of its own
would outlive the run and hold GPU memory). Every group started is remembered and stopped on exit,
on SIGTERM and SIGINT, and by `stop_all`, TERM first, then KILL.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pod imports loraplane, which the kit puts on sys.path at start
    from bench.gpu.pod import Command

_STARTED: list[subprocess.Popen[bytes]] = []
_LOCK = threading.Lock()


def start(
    command: Command, log: Path, base_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**(base_env if base_env is not None else os.environ), **command.env}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command.argv, env=env, stdout=out, stderr=subprocess.STDOUT, process_group=0
        )
    with _LOCK:
        _STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """TERM the process's group, KILL it after `grace` seconds; wait for the leader."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                break
            time.sleep(0.2)
        else:
            continue
        break
    with _LOCK:
        if proc in _STARTED:
            _STARTED.remove(proc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_all() -> None:
    with _LOCK:
        procs = list(_STARTED)
    threads = [threading.Thread(target=stop, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _on_signal(signum: int, _frame: Any) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


def request(method: str, url: str, body: Any = None, timeout: float = 600.0) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> float:
    """Seconds until GET url answers 200; raises when the process exits or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} answered; {tail(log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if request("GET", url, timeout=5)[0] == 200:
                return time.monotonic() - started
        time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s; {tail(log)}")


def tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "last lines of " + str(log) + ":\n" + "\n".join(text[-lines:])


def gpu_memory_mib() -> dict[int, int]:
    """Used GPU memory of each compute process (pid -> MiB), from nvidia-smi."""
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    used: dict[int, int] = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            used[int(parts[0])] = int(parts[1])
    return used


def group_memory_mib(proc: subprocess.Popen[bytes]) -> int:
    """GPU memory held by the processes of `proc`'s group."""
    total = 0
    for pid, mib in gpu_memory_mib().items():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == proc.pid:
                total += mib
    return total

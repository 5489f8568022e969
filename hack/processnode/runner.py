"""One container: its process (in a process group and a cgroup), restarts, probes and log file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import images
from .envs import ConfigError, expand, resolve_env
from .probes import ProbeLoop, run_probe
from .util import now
from .volumes import Mount, VolumeError

if TYPE_CHECKING:
    from .pod import PodWorker

log = logging.getLogger(__name__)

Obj = dict[str, Any]
CGROUP_ROOT = "/sys/fs/cgroup/unified/loraplane"
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BACKOFF_CAP_SECONDS = 10.0
# Where a container writes its termination message when it does not say (the API's default).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# What the kubelet keeps of a termination message file, and of the log with
# FallbackToLogsOnError (its last 80 lines, at most 2048 bytes).
MESSAGE_BYTES = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048
# A run this long resets the crash-loop back-off, like the kubelet's (longer) reset window.
BACKOFF_RESET_SECONDS = 60.0


@dataclass
class Prepared:
    argv: list[str]
    env: dict[str, str]
    spec: Obj


def exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


class ContainerRunner(threading.Thread):
    """Runs one container of a pod, restarting it per policy until stopped.

    kind is "app", "init" (runs to completion before the next) or "sidecar" (an init container
    with restartPolicy Always: started before the next init container, then kept running).
    """

    def __init__(self, worker: PodWorker, container: Obj, kind: str, restart_count: int) -> None:
        super().__init__(daemon=True, name=f"ctr-{worker.name}-{container['name']}")
        self.worker, self.container, self.kind = worker, container, kind
        self.cname = container["name"]
        policy = worker.pod["spec"].get("restartPolicy", "Always")
        if kind == "sidecar":
            policy = "Always"
        elif kind == "init" and policy == "Always":
            policy = "OnFailure"
        self.policy = policy
        self._lock = threading.Lock()
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.restart_count = restart_count
        self._first_run = True
        self.container_id = ""
        self.ready = False
        self.started = False
        self.finished = threading.Event()  # terminated and will not be restarted
        self.env: dict[str, str] = {}
        self._stopping = threading.Event()
        self._exited = threading.Event()
        self._run_stop = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroup: str | None = None
        self.message_file = f"{worker.pod_dir}/containers/{self.cname}.termination-log"
        self._log_start = 0  # where this run's output begins in the log file

    # --- status -----------------------------------------------------------------------

    def status(self) -> Obj:
        with self._lock:
            st: Obj = {
                "name": self.cname,
                "image": self.container.get("image", ""),
                "imageID": f"processnode://{self.container.get('image', '')}",
                "ready": self.ready,
                "started": self.started,
                "restartCount": self.restart_count,
                "state": self.state,
                "lastState": self.last_state,
            }
            if self.container_id:
                st["containerID"] = self.container_id
            return st

    @property
    def has_run(self) -> bool:
        return bool(self.container_id)

    @property
    def succeeded(self) -> bool:
        return self.finished.is_set() and self.state.get("terminated", {}).get("exitCode") == 0

    def _set(self, **fields: Any) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self, k, v)
        self.worker.wake()

    # --- lifecycle ----------------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                prepared = self._prepare()
            except images.ImageNotMapped as exc:
                self._set(state={"waiting": {"reason": "ImageNotMapped", "message": str(exc)}})
                self._stopping.wait(30)
                continue
            except (ConfigError, VolumeError) as exc:
                self._set(
                    state={"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                )
                self._stopping.wait(5)
                continue
            except Exception as exc:  # API hiccups and the like: report, retry
                log.exception("preparing container %s/%s", self.worker.name, self.cname)
                waiting = {"reason": "CreateContainerError", "message": str(exc)}
                self._set(state={"waiting": waiting})
                self._stopping.wait(5)
                continue
            started_at, t0 = now(), time.monotonic()
            try:
                self._start(prepared, started_at)
            except OSError as exc:
                self._set(state={"waiting": {"reason": "StartError", "message": str(exc)}})
                self._stopping.wait(5)
                continue
            assert self.proc is not None
            code = exit_code(self.proc.wait())
            self._exited.set()
            self._run_stop.set()
            self._kill_all(signal.SIGKILL)  # descendants die with the main process, as in a pod
            terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": started_at,
                "finishedAt": now(),
                "containerID": self.container_id,
            }
            message = self._termination_message(code)
            if message:
                terminated["message"] = message
            log.info("container %s/%s exited with %d", self.worker.name, self.cname, code)
            restart = self.policy == "Always" or (self.policy == "OnFailure" and code != 0)
            if self._stopping.is_set() or not restart:
                self._set(state={"terminated": terminated}, ready=False, started=False)
                if not self._stopping.is_set():
                    self.finished.set()
                    self.worker.wake()
                return
            failures = 1 if time.monotonic() - t0 > BACKOFF_RESET_SECONDS else failures + 1
            delay = min(BACKOFF_CAP_SECONDS, 2.0 ** (failures - 1))
            message = (
                f"back-off {delay:g}s restarting failed container={self.cname} "
                f"pod={self.worker.name}_{self.worker.namespace}({self.worker.uid})"
            )
            self._set(
                last_state={"terminated": terminated},
                state={"waiting": {"reason": "CrashLoopBackOff", "message": message}},
                ready=False,
                started=False,
            )
            self._stopping.wait(delay)

    def _termination_message(self, code: int) -> str:
        """What the container left in its termination message file; with
        FallbackToLogsOnError and a failure that left none, the end of its log."""
        try:
            with open(self.message_file, "rb") as f:
                message = f.read(MESSAGE_BYTES).decode(errors="replace")
        except OSError:
            message = ""
        policy = self.container.get("terminationMessagePolicy") or "File"
        if message or code == 0 or policy != "FallbackToLogsOnError":
            return message
        try:
            with open(f"{self.worker.log_dir}/{self.cname}.log", "rb") as f:
                f.seek(self._log_start)
                tail = f.read()
        except OSError:
            return ""
        lines = tail.decode(errors="replace").splitlines()[-FALLBACK_LINES:]
        return "\n".join(lines)[-FALLBACK_BYTES:]

    def _prepare(self) -> Prepared:
        w = self.worker
        c = self.container
        pod_env = resolve_env(w.kube, w.pod, c, w.pod_ip, w.host_ip, w.node.api_host)
        command = [expand(x, pod_env) for x in c.get("command") or []]
        args = [expand(x, pod_env) for x in c.get("args") or []]
        local = images.resolve(
            c.get("image", ""), command, args, w.node.venv, w.node.checkout, w.pod_ip
        )
        env = {
            "PATH": f"{w.node.venv}/bin:{SYSTEM_PATH}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
        }
        env.update(local.env_defaults)
        env.update(pod_env)
        for key, value in local.env_prepend.items():
            env[key] = f"{value}:{env[key]}" if env.get(key) else value
        assert w.volumes is not None
        mounts = w.volumes.mounts_for(c)
        # Like the kubelet: a fresh file per run, bound at terminationMessagePath.
        os.makedirs(os.path.dirname(self.message_file), exist_ok=True)
        open(self.message_file, "w").close()
        target = c.get("terminationMessagePath") or TERMINATION_MESSAGE_PATH
        mounts.append(Mount(self.message_file, target, False))
        mounts.sort(key=lambda m: m.target.count("/"))
        spec = {
            "argv": local.argv,
            "env": env,
            "workingDir": c.get("workingDir") or "/",
            "netns": w.sandbox.netns_path if w.sandbox else None,
            "hostname": w.pod["spec"].get("hostname") or w.name,
            "mounts": [
                {"source": m.source, "target": m.target, "readOnly": m.read_only} for m in mounts
            ],
            # What stands in for the image: it must stay visible under a volume mounted over one
            # of its parents (the chart mounts an emptyDir at /tmp; a checkout may live there).
            "keep": [w.node.venv, w.node.checkout],
        }
        return Prepared(local.argv, env, spec)

    def _start(self, prepared: Prepared, started_at: str) -> None:
        w = self.worker
        os.makedirs(w.log_dir, exist_ok=True)
        os.makedirs(f"{w.pod_dir}/containers", exist_ok=True)
        self.cgroup = _make_cgroup(f"{CGROUP_ROOT}/{w.uid}/{self.cname}")
        prepared.spec["cgroup"] = self.cgroup
        spec_path = f"{w.pod_dir}/containers/{self.cname}.json"
        with open(spec_path, "w") as f:
            json.dump(prepared.spec, f)
        os.chmod(spec_path, 0o600)
        restart_count = self.restart_count if self._first_run else self.restart_count + 1
        container_id = f"process://{uuid.uuid4().hex}"
        log_path = f"{w.log_dir}/{self.cname}.log"
        with open(log_path, "ab") as logf:
            if logf.tell() > 0:
                logf.write(
                    f"\n===== processnode: container {self.cname} started again at {started_at} "
                    f"(restartCount={restart_count}, containerID={container_id}) =====\n".encode()
                )
                logf.flush()
            self._log_start = logf.tell()
            self._exited.clear()
            self._run_stop = threading.Event()
            self.proc = subprocess.Popen(
                [sys.executable, "-I", LAUNCHER, spec_path],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: signals reach every descendant
                close_fds=True,
                env={"PATH": prepared.env["PATH"]},
            )
        self._first_run = False
        self.env = prepared.env
        has_startup = "startupProbe" in self.container
        has_readiness = "readinessProbe" in self.container
        self._set(
            state={"running": {"startedAt": started_at}},
            container_id=container_id,
            restart_count=restart_count,
            started=not has_startup,
            ready=not has_startup and not has_readiness,
        )
        log.info(
            "container %s/%s started: pid %d, %s",
            w.name,
            self.cname,
            self.proc.pid,
            " ".join(prepared.argv)[:300],
        )
        self._start_probes()

    # --- probes -------------------------------------------------------------------------

    def _attempt(self, probe: Obj) -> tuple[bool, str]:
        pid = self.proc.pid if self.proc and not self._exited.is_set() else None
        return run_probe(probe, self.container, self.worker.pod_ip, pid, self.env)

    def _start_probes(self) -> None:
        stop = self._run_stop
        c = self.container

        def after_start() -> None:
            if "livenessProbe" in c:
                ProbeLoop("liveness", c["livenessProbe"], self._attempt, on_liveness, stop).start()
            if "readinessProbe" in c:
                ProbeLoop(
                    "readiness", c["readinessProbe"], self._attempt, on_readiness, stop
                ).start()

        def on_startup(ok: bool, msg: str) -> bool:
            if ok:
                self._set(started=True, ready="readinessProbe" not in c)
                after_start()
            else:
                self._probe_kill(f"Startup probe failed: {msg}")
            return False

        def on_liveness(ok: bool, msg: str) -> bool:
            if not ok:
                self._probe_kill(f"Liveness probe failed: {msg}")
                return False
            return True

        def on_readiness(ok: bool, msg: str) -> bool:
            if ok != self.ready:
                self._set(ready=ok)
            return True

        if "startupProbe" in c:
            ProbeLoop("startup", c["startupProbe"], self._attempt, on_startup, stop).start()
        else:
            after_start()

    def _probe_kill(self, why: str) -> None:
        log.info("container %s/%s: %s; restarting", self.worker.name, self.cname, why)
        probe_grace = None
        for key in ("livenessProbe", "startupProbe"):
            probe_grace = probe_grace or self.container.get(key, {}).get(
                "terminationGracePeriodSeconds"
            )
        self._terminate(float(probe_grace or self.worker.grace_seconds()))

    # --- stopping -----------------------------------------------------------------------

    def stop(self, grace: float, run_pre_stop: bool = True) -> None:
        """Stops the container for good: preStop hook, SIGTERM, wait up to grace, SIGKILL."""
        self._stopping.set()
        deadline = time.monotonic() + grace
        if run_pre_stop and self.proc and not self._exited.is_set():
            self._pre_stop(grace)
        self._terminate(max(0.0, deadline - time.monotonic()))
        if self.ident is not None:
            self.join(timeout=5)
        _remove_cgroup(self.cgroup)

    def _pre_stop(self, grace: float) -> None:
        hook = (self.container.get("lifecycle") or {}).get("preStop")
        if not hook:
            return
        if "sleep" in hook:
            self._exited.wait(min(grace, float(hook["sleep"].get("seconds", 0))))
        elif "exec" in hook or "httpGet" in hook:
            ok, msg = self._attempt({**hook, "timeoutSeconds": grace})
            if not ok:
                log.info("preStop hook of %s/%s: %s", self.worker.name, self.cname, msg)

    def _terminate(self, grace: float) -> None:
        if not self.proc:
            return
        if self._exited.is_set():
            # Only strays can be left; the group id may already belong to someone else.
            self._kill_all(signal.SIGKILL, group=False)
            return
        self._kill_all(signal.SIGTERM)
        if not self._exited.wait(grace):
            log.info(
                "container %s/%s did not exit in %.0fs: SIGKILL",
                self.worker.name,
                self.cname,
                grace,
            )
        self._kill_all(signal.SIGKILL)
        self._exited.wait(5)

    def _kill_all(self, sig: int, group: bool = True) -> None:
        """Signals the process group and, via the cgroup, descendants that left the group."""
        if self.proc and group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
        if not self.cgroup:
            return
        if sig == signal.SIGKILL:
            try:
                with open(f"{self.cgroup}/cgroup.kill", "w") as f:
                    f.write("1")
                return
            except OSError:
                pass
        for pid in _cgroup_pids(self.cgroup):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _make_cgroup(path: str) -> str | None:
    try:
        os.makedirs(path, exist_ok=True)
        return path
    except OSError as exc:
        log.warning("no cgroup for containers (%s): relying on process groups only", exc)
        return None


def _cgroup_pids(path: str) -> list[int]:
    try:
        with open(f"{path}/cgroup.procs") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _remove_cgroup(path: str | None) -> None:
    if not path:
        return
    for _ in range(50):
        try:
            os.rmdir(path)
            break
        except FileNotFoundError:
            break
        except OSError:
            time.sleep(0.1)  # the last killed processes are still exiting
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))  # the pod's cgroup, once its last container is gone


def kill_pod_cgroups(uid: str) -> None:
    """Kills every process left in a pod's cgroups (by an earlier run of the node)."""
    pod_path = f"{CGROUP_ROOT}/{uid}"
    if not os.path.isdir(pod_path):
        return
    for ctr in os.listdir(pod_path):
        path = f"{pod_path}/{ctr}"
        if not os.path.isdir(path):
            continue
        if _cgroup_pids(path):
            log.info("killing leftover processes of cgroup %s", path)
        try:
            with open(f"{path}/cgroup.kill", "w") as f:
                f.write("1")
        except OSError:
            for pid in _cgroup_pids(path):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _remove_cgroup(path)
    with contextlib.suppress(OSError):
        os.rmdir(pod_path)

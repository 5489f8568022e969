"""PodWorker: one thread per pod, from sandbox to deletion, reporting status as it goes."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .kube import ApiError, Kube, pod_path
from .runner import ContainerRunner
from .sandbox import Sandbox
from .status import Observed, pod_status, waiting_statuses
from .util import now
from .volumes import PodVolumes, VolumeError, remove_pod_dir

if TYPE_CHECKING:
    from .kubelet import Kubelet

log = logging.getLogger(__name__)

Obj = dict[str, Any]
MAX_GRACE_SECONDS = 30.0
# How often an emptyDir's usage is measured against its sizeLimit: kubelet's
# --volume-stats-agg-period default. Every `du` walks the whole volume, and a fleet of pods with
# a thousand adapter directories each made that the node's largest cost at 10 s.
SIZE_CHECK_SECONDS = 60.0
VOLUME_REFRESH_SECONDS = 60.0


class PodWorker(threading.Thread):
    def __init__(self, node: Kubelet, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(daemon=True, name=f"pod-{meta['namespace']}/{meta['name']}")
        self.node = node
        self.kube: Kube = node.kube
        self.pod = pod
        self.name, self.namespace, self.uid = meta["name"], meta["namespace"], meta["uid"]
        self.host_ip = node.host_ip
        self.pod_dir = f"{node.home}/pods/{self.uid}"
        self.log_dir = f"{node.home}/logs/{self.namespace}/{self.name}"
        self.sandbox: Sandbox | None = None
        self.volumes: PodVolumes | None = None
        self.init_runners: list[ContainerRunner] = []
        self.runners: list[ContainerRunner] = []
        self.initialized = False
        self.setup_error = ""
        self.phase_override: tuple[str, str, str] | None = None
        self.start_time = (pod.get("status") or {}).get("startTime") or now()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.vanished = False
        self.node_stopping = False
        self.done = threading.Event()
        self._last_sent: Obj | None = None

    @property
    def pod_ip(self) -> str:
        return self.sandbox.ip if self.sandbox else ""

    # --- inputs from the kubelet ---------------------------------------------------------

    def update(self, pod: Obj) -> None:
        with self._lock:
            if _rv(pod) >= _rv(self.pod):
                self.pod = pod
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def vanish(self) -> None:
        self.vanished = True
        self.wake()

    def stop_for_node_shutdown(self) -> None:
        self.node_stopping = True
        self.wake()

    def _should_stop(self) -> bool:
        return (
            self.vanished
            or self.node_stopping
            or bool(self.pod["metadata"].get("deletionTimestamp"))
        )

    def grace_seconds(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return min(float(grace), MAX_GRACE_SECONDS)

    # --- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # keep the node alive; the next event for the pod starts it afresh
            log.exception("pod worker %s/%s crashed", self.namespace, self.name)
            self._stop_containers(2.0, pre_stop=False)
            self._cleanup()
        finally:
            self.done.set()
            self.node.worker_done(self)

    def _idle(self, seconds: float = 1.0) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _run(self) -> None:
        log.info("pod %s/%s (%s): starting", self.namespace, self.name, self.uid)
        if not self._setup():
            return self._finish()
        for c in self.pod["spec"].get("initContainers") or []:
            sidecar = c.get("restartPolicy") == "Always"
            runner = self._start_runner(c, "sidecar" if sidecar else "init", self.init_runners)
            while not self._should_stop():
                self._report()
                if runner.finished.is_set() and not runner.succeeded:
                    return self._run_terminal()
                if runner.succeeded or (sidecar and runner.started):
                    break
                self._idle()
            if self._should_stop():
                return self._finish()
        self.initialized = True
        for c in self.pod["spec"]["containers"]:
            self._start_runner(c, "app", self.runners)
        last_size_check = last_refresh = time.monotonic()
        while not self._should_stop():
            self._report()
            if all(r.finished.is_set() for r in self.runners):
                return self._run_terminal()
            t = time.monotonic()
            if t - last_size_check > SIZE_CHECK_SECONDS:
                last_size_check = t
                assert self.volumes is not None
                violation = self.volumes.size_violation()
                if violation:
                    log.warning("evicting pod %s/%s: %s", self.namespace, self.name, violation)
                    self.phase_override = ("Failed", "Evicted", violation)
                    return self._run_terminal()
            if t - last_refresh > VOLUME_REFRESH_SECONDS:
                last_refresh = t
                assert self.volumes is not None
                self.volumes.refresh()
            self._idle()
        self._finish()

    def _setup(self) -> bool:
        """Sandbox, then volumes; retried until they work or the pod goes away."""
        containers = self.pod["spec"]["containers"]
        os.makedirs(self.pod_dir, exist_ok=True)  # first: it records the pod for crash cleanup
        while not self._should_stop():
            try:
                if self.sandbox is None:
                    self.sandbox = self.node.network.setup(self.uid)
                    log.info(
                        "pod %s/%s: IP %s netns %s",
                        self.namespace,
                        self.name,
                        self.sandbox.ip,
                        self.sandbox.netns,
                    )
                self.volumes = PodVolumes(
                    self.kube, self.node.home, self.pod, self.pod_ip, self.host_ip
                )
                self.volumes.setup()
                self.setup_error = ""
                return True
            except (VolumeError, ApiError, OSError, RuntimeError) as exc:
                msg = f"{'MountVolume.SetUp failed' if self.sandbox else 'sandbox'}: {exc}"
                if msg != self.setup_error:
                    log.warning("pod %s/%s: %s", self.namespace, self.name, msg)
                self.setup_error = msg
                self._report(waiting_statuses(containers, "ContainerCreating", msg))
                self._idle(5)
        return False

    def _start_runner(self, c: Obj, kind: str, into: list[ContainerRunner]) -> ContainerRunner:
        prev = {
            s["name"]: s
            for s in (
                (self.pod.get("status") or {}).get(
                    "initContainerStatuses" if kind != "app" else "containerStatuses"
                )
                or []
            )
        }
        old = prev.get(c["name"]) or {}
        # After a node restart the old process is gone: its successor counts as a restart.
        restarts = old.get("restartCount", 0) + (1 if old.get("containerID") else 0)
        runner = ContainerRunner(self, c, kind, restarts)
        into.append(runner)
        runner.start()
        return runner

    # --- endings ----------------------------------------------------------------------------

    def _stop_containers(self, grace: float, pre_stop: bool = True) -> None:
        # Main containers first, then sidecars (init containers), like the kubelet.
        for group in (self.runners, self.init_runners):
            threads = [threading.Thread(target=r.stop, args=(grace, pre_stop)) for r in group]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    def _cleanup(self) -> None:
        if self.sandbox:
            self.node.network.teardown(self.sandbox)
        if self.volumes:
            self.volumes.teardown()
        else:
            remove_pod_dir(self.pod_dir)

    def _run_terminal(self) -> None:
        """The pod completed, failed or was evicted: stop what runs, free the sandbox, report,
        then wait for the API deletion (the ReplicaSet or the user removes terminal pods)."""
        self._stop_containers(self.grace_seconds())
        self._report()
        log.info("pod %s/%s is %s", self.namespace, self.name, (self._last_sent or {}).get("phase"))
        self._cleanup()
        self.sandbox = None
        while not self._should_stop():
            self._idle(30)
        if not self.vanished and not self.node_stopping:
            self._delete_from_api()

    def _finish(self) -> None:
        if self.node_stopping:
            grace = min(self.grace_seconds(), 10.0)
        elif self.vanished:
            grace = 2.0  # the API object is gone already: nobody waits on a graceful end
        else:
            grace = self.grace_seconds()
        log.info("pod %s/%s: stopping containers (grace %.0fs)", self.namespace, self.name, grace)
        self._stop_containers(grace, pre_stop=not self.vanished)
        self._cleanup()
        if not self.vanished and not self.node_stopping:
            self._delete_from_api()

    def _delete_from_api(self) -> None:
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
        try:
            self.kube.delete(pod_path(self.namespace, self.name), body)
            log.info("pod %s/%s deleted", self.namespace, self.name)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("deleting pod %s/%s: %s", self.namespace, self.name, exc)

    # --- status -----------------------------------------------------------------------------

    def _report(self, pending_statuses: list[Obj] | None = None) -> None:
        spec = self.pod["spec"]
        statuses = [r.status() for r in self.runners]
        if not self.runners:
            statuses = pending_statuses or waiting_statuses(
                spec["containers"], "PodInitializing" if self.sandbox else "ContainerCreating"
            )
        started_inits = {r.cname for r in self.init_runners}
        init_statuses = [r.status() for r in self.init_runners] + waiting_statuses(
            [c for c in spec.get("initContainers") or [] if c["name"] not in started_inits],
            "PodInitializing",
        )
        observed = Observed(
            pod=self.pod,
            host_ip=self.host_ip,
            start_time=self.start_time,
            pod_ip=self.pod_ip,
            sandbox_ready=self.sandbox is not None,
            initialized=self.initialized,
            init_statuses=init_statuses,
            statuses=statuses,
            phase_override=self.phase_override,
            init_failed=any(r.finished.is_set() and not r.succeeded for r in self.init_runners),
            all_finished=bool(self.runners) and all(r.finished.is_set() for r in self.runners),
            all_succeeded=all(r.succeeded for r in self.runners),
            any_started=any(r.has_run for r in self.runners),
        )
        status = pod_status(observed)
        comparable = {
            **status,
            "conditions": [
                {k: v for k, v in c.items() if k != "lastTransitionTime"}
                for c in status["conditions"]
            ],
        }
        if comparable == self._last_sent:
            return
        try:
            updated = self.kube.strategic_patch(
                pod_path(self.namespace, self.name, "status"), {"status": status}
            )
        except ApiError as exc:
            if exc.status == 404:
                self.vanish()
            else:
                log.warning("status of %s/%s: %s", self.namespace, self.name, exc)
            return
        self._last_sent = comparable
        if updated.get("metadata", {}).get("uid") == self.uid:
            self.update(updated)


def _rv(pod: Obj) -> int:
    try:
        return int(pod["metadata"].get("resourceVersion", 0))
    except ValueError:
        return 0

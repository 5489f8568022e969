"""Pod status as the kubelet computes it: phase, conditions, container statuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .util import now

Obj = dict[str, Any]


@dataclass
class Observed:
    """What the pod worker knows; the input of pod_status()."""

    pod: Obj
    host_ip: str
    start_time: str
    pod_ip: str = ""
    sandbox_ready: bool = False
    initialized: bool = False
    init_statuses: list[Obj] = field(default_factory=list)
    statuses: list[Obj] = field(default_factory=list)
    phase_override: tuple[str, str, str] | None = None  # (phase, reason, message)
    init_failed: bool = False
    all_finished: bool = False  # every app container terminated for good
    all_succeeded: bool = False
    any_started: bool = False


def _condition(
    type_: str, ok: bool, previous: dict[str, Obj], reason: str = "", message: str = ""
) -> Obj:
    status = "True" if ok else "False"
    prev = previous.get(type_)
    changed = not prev or prev.get("status") != status
    cond: Obj = {
        "type": type_,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": now() if changed else prev.get("lastTransitionTime"),  # type: ignore[union-attr]
    }
    # Explicit nulls: the strategic merge patch keeps a key we merely leave out.
    cond["reason"] = reason if not ok and reason else None
    cond["message"] = message if not ok and reason and message else None
    return cond


def pod_status(o: Observed) -> Obj:
    pod_status_now = o.pod.get("status") or {}
    previous = {c["type"]: c for c in pod_status_now.get("conditions") or []}
    spec = o.pod["spec"]

    reason = message = ""
    if o.phase_override:
        phase, reason, message = o.phase_override
    elif o.init_failed:
        phase = "Failed"
    elif not o.initialized:
        phase = "Pending"
    elif o.all_finished:
        phase = "Succeeded" if o.all_succeeded else "Failed"
    elif o.any_started:
        phase = "Running"
    else:
        phase = "Pending"
    terminal = phase in ("Succeeded", "Failed")

    unready = [s["name"] for s in o.statuses if not s["ready"]]
    incomplete = [
        s["name"]
        for s in o.init_statuses
        if not (s["state"].get("terminated", {}).get("exitCode") == 0 or s["started"])
    ]
    containers_ready = not unready and not terminal and o.initialized
    gates = [g["conditionType"] for g in spec.get("readinessGates") or []]
    missing = [g for g in gates if (previous.get(g) or {}).get("status") != "True"]

    if terminal:
        cr_reason = ready_reason = "PodCompleted"
        cr_msg = ready_msg = ""
    else:
        cr_reason = ready_reason = "ContainersNotReady"
        cr_msg = ready_msg = f"containers with unready status: [{' '.join(unready)}]"
        if containers_ready and missing:
            ready_reason = "ReadinessGatesNotReady"
            ready_msg = f'the status of pod readiness gate {" ".join(missing)} is not "True"'

    conditions = [
        _condition("PodReadyToStartContainers", o.sandbox_ready and not terminal, previous),
        _condition(
            "Initialized",
            o.initialized,
            previous,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(incomplete)}]",
        ),
        _condition("Ready", containers_ready and not missing, previous, ready_reason, ready_msg),
        _condition("ContainersReady", containers_ready, previous, cr_reason, cr_msg),
        _condition("PodScheduled", True, previous),
    ]
    status: Obj = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": o.host_ip,
        "hostIPs": [{"ip": o.host_ip}],
        "startTime": o.start_time,
        "containerStatuses": o.statuses,
    }
    if reason:
        status["reason"] = reason
        status["message"] = message
    if o.pod_ip:
        status["podIP"] = o.pod_ip
        status["podIPs"] = [{"ip": o.pod_ip}]
    if spec.get("initContainers"):
        status["initContainerStatuses"] = o.init_statuses
    return status


def waiting_statuses(containers: list[Obj], reason: str, message: str = "") -> list[Obj]:
    """Statuses for containers that have no runner yet (sandbox or volumes still pending)."""
    waiting: Obj = {"reason": reason}
    if message:
        waiting["message"] = message
    return [
        {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": waiting},
            "lastState": {},
        }
        for c in containers
    ]

"""What a pod really shows: the problems worth a Degraded condition, read from pod status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Waiting reasons that will not fix themselves without a change by someone.
_STUCK_WAITING = {
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ImageNotMapped",
    "RunContainerError",
}


@dataclass(frozen=True)
class PodProblem:
    pod: str
    reason: str
    message: str


def _last_exit(status: Mapping[str, Any]) -> str:
    term = (status.get("lastState") or {}).get("terminated") or {}
    if not term:
        return ""
    detail = f"last exit code {term.get('exitCode')}"
    if term.get("reason"):
        detail += f" ({term['reason']})"
    if term.get("message"):
        detail += f": {str(term['message']).strip()[-300:]}"
    return detail


def pod_problems(pod: Mapping[str, Any]) -> list[PodProblem]:
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    problems: list[PodProblem] = []
    if pod["metadata"].get("deletionTimestamp"):
        return problems
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            problems.append(PodProblem(name, "Unschedulable", cond.get("message") or ""))
    if status.get("reason") == "Evicted":
        problems.append(PodProblem(name, "Evicted", status.get("message") or ""))
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _STUCK_WAITING:
            parts = [f"container {cs['name']}: {waiting.get('message') or reason}"]
            last = _last_exit(cs)
            if last:
                parts.append(last)
            if cs.get("restartCount"):
                parts.append(f"{cs['restartCount']} restarts")
            problems.append(PodProblem(name, str(reason), "; ".join(parts)))
        term = (cs.get("lastState") or {}).get("terminated") or {}
        if term.get("reason") == "OOMKilled" and reason not in _STUCK_WAITING:
            problems.append(
                PodProblem(name, "OOMKilled", f"container {cs['name']} was killed: out of memory")
            )
    return problems

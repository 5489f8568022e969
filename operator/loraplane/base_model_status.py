"""BaseModelDeployment status, computed from what the Deployment and its pods really show."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loraplane.conditions import Cond
from loraplane.pod_health import pod_problems


@dataclass(frozen=True)
class Observed:
    desired: int
    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]]
    spec_error: tuple[str, str] | None = None  # (reason, message) of a spec the operator refused


def counts(observed: Observed) -> dict[str, int]:
    status = (observed.deployment or {}).get("status") or {}
    return {
        "replicas": int(status.get("replicas") or 0),
        "readyReplicas": int(status.get("readyReplicas") or 0),
        "updatedReplicas": int(status.get("updatedReplicas") or 0),
    }


def _rolled_out(observed: Observed) -> bool:
    dep = observed.deployment
    if dep is None:
        return False
    status = dep.get("status") or {}
    c = counts(observed)
    return (
        int(status.get("observedGeneration") or 0) >= int(dep["metadata"].get("generation") or 0)
        and c["updatedReplicas"] == observed.desired
        and c["replicas"] == observed.desired
        and c["readyReplicas"] == observed.desired
    )


def conditions(observed: Observed) -> list[Cond]:
    c = counts(observed)
    ready, desired = c["readyReplicas"], observed.desired
    problems = [p for pod in observed.pods for p in pod_problems(pod)]

    if desired == 0:
        available = Cond("Available", False, "ScaledToZero", "replicas is 0")
    elif ready > 0:
        available = Cond("Available", True, "ReplicasReady", f"{ready}/{desired} replicas ready")
    else:
        detail = f": {problems[0].message}" if problems else ""
        available = Cond(
            "Available", False, "NoReadyReplicas", f"0/{desired} replicas ready{detail}"
        )

    if observed.spec_error is not None:
        reason, message = observed.spec_error
        degraded = Cond("Degraded", True, reason, message)
        progressing = Cond(
            "Progressing", False, "SpecRejected", "the spec was refused; pods were left as they are"
        )
        return [available, progressing, degraded]

    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        degraded = Cond("Degraded", True, first.reason, f"pod {first.pod}: {first.message}{more}")
    else:
        degraded = Cond("Degraded", False, "AsExpected", "no problem seen on any pod")

    if _rolled_out(observed):
        progressing = Cond(
            "Progressing", False, "RolloutComplete", f"{desired} replicas updated and ready"
        )
    elif observed.deployment is None:
        progressing = Cond("Progressing", True, "Creating", "creating the Deployment")
    else:
        progressing = Cond(
            "Progressing",
            True,
            "RollingOut",
            f"{c['updatedReplicas']}/{desired} updated, {ready}/{desired} ready",
        )
    return [available, progressing, degraded]

"""BaseModelDeployment status, computed from what its Deployment and pods really show. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loraplane.agent.protocol import SOURCE_CHANGED, SOURCE_UNAVAILABLE
from loraplane.api import (
    AdapterCounts,
    BaseModelDeploymentStatus,
    Condition,
    MergeStatus,
    RouterStatus,
)
from loraplane.builders import naming, router
from loraplane.builders.service import service_endpoint
from loraplane.children import Outcome, RouterOutcome
from loraplane.fleet import Fleet
from loraplane.merge.book import MergedPodView
from loraplane.pod_health import PodProblem
from loraplane.status import Event
from loraplane.status import merge as merged
from loraplane.status.conditions import Cond, merge
from loraplane.vllm.errors import Reason


@dataclass(frozen=True)
class Observed:
    desired: int
    deployment: Mapping[str, Any] | None
    problems: Sequence[PodProblem]
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
    problems = observed.problems

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


def router_status(routed: RouterOutcome | None, owner: Mapping[str, Any]) -> RouterStatus | None:
    if routed is None:
        return None
    status = (routed.deployment or {}).get("status") or {}
    return RouterStatus(
        mode=routed.spec.mode,
        endpoint=router.endpoint(owner, routed.spec),
        ready=f"{int(status.get('readyReplicas') or 0)}/{routed.spec.replicas}",
    )


def routed_condition(routed: RouterOutcome | None) -> Cond | None:
    """Whether requests go through the router: absent without spec.router."""
    if routed is None:
        return None
    if routed.error is not None:
        return Cond("Routed", False, *routed.error)
    status = (routed.deployment or {}).get("status") or {}
    ready, desired = int(status.get("readyReplicas") or 0), routed.spec.replicas
    if routed.deployment is None:
        return Cond("Routed", False, "RouterCreating", "creating the router")
    if ready == 0:
        return Cond("Routed", False, "RouterNotReady", f"0/{desired} router pods ready")
    if routed.spec.mode == "InferencePool":
        message = (
            f"{ready}/{desired} Endpoint Picker pods ready; a Gateway routing to the "
            "InferencePool picks pods by adapter"
        )
    else:
        message = f"{ready}/{desired} router pods ready; requests go to the pod of their adapter"
    return Cond("Routed", True, "RouterReady", message)


@dataclass(frozen=True)
class Identity:
    """What the status says of the object itself, not of its pods."""

    generation: int
    selector: str
    endpoint: str
    served_name: str


def compute(
    observed: Observed,
    who: Identity,
    adapters: AdapterCounts,
    old: BaseModelDeploymentStatus,
    routed: Cond | None = None,
    router_now: RouterStatus | None = None,
    merge_part: tuple[Cond | None, MergeStatus | None] = (None, None),
) -> BaseModelDeploymentStatus:
    c = counts(observed)
    extra = [routed, merge_part[0]]
    conds = conditions(observed) + [x for x in extra if x is not None]
    return BaseModelDeploymentStatus(
        observed_generation=who.generation,
        replicas=c["replicas"],
        ready_replicas=c["readyReplicas"],
        updated_replicas=c["updatedReplicas"],
        ready=f"{c['readyReplicas']}/{observed.desired}",
        selector=who.selector,
        endpoint=who.endpoint,
        served_name=who.served_name,
        conditions=merge(old.conditions, conds, who.generation),
        adapters=adapters,
        router=router_now,
        merge=merge_part[1],
    )


def events(old: Sequence[Condition], new: Sequence[Condition]) -> list[Event]:
    """An Event for each condition that changed in a way a user should hear about."""
    before = {c.type: c for c in old}
    out: list[Event] = []
    for cond in new:
        prev = before.get(cond.type)
        if prev and (prev.status, prev.reason) == (cond.status, cond.reason):
            continue
        message = cond.message or ""
        if cond.type == "Degraded" and cond.status == "True":
            out.append(Event("Warning", str(cond.reason), message))
        elif cond.type == "Available" and cond.status == "True" and prev is not None:
            out.append(Event("Normal", "Available", message))
        elif cond.type == "Degraded" and prev is not None and prev.status == "True":
            out.append(Event("Normal", "Recovered", "no problem seen on any pod"))
        elif cond.type == "Routed" and cond.status == "True":
            out.append(Event("Normal", "Routed", message))
        elif cond.type == "Routed" and prev is not None and cond.reason != "RouterCreating":
            out.append(Event("Warning", str(cond.reason), message))
        elif cond.type == "Merged" and cond.status == "True":
            out.append(Event("Normal", "Merged", message))
        elif cond.type == "Merged" and cond.reason not in merged.PROGRESS:
            out.append(Event("Warning", str(cond.reason), message))
    return out


# Reasons a pod gives for an adapter it cannot have, that concern the base model's operator: a
# verified version that is neither in the source any more nor on another pod.
# Pod problems that are the adapter source's, not the pod's: the base model is Degraded by them.
SOURCE_REASONS = frozenset(
    {
        SOURCE_UNAVAILABLE,
        SOURCE_CHANGED,
        Reason.SOURCE_UNREACHABLE,
        Reason.SOURCE_UNAUTHORIZED,
        "SecretNotFound",
    }
)


def source_problems(fleet: Fleet, namespace: str, name: str) -> list[PodProblem]:
    return [
        PodProblem(pod.name, str(st.reason), f"adapter {adapter}: {st.last_error}")
        for pod in fleet.pods_of(namespace, name)
        for adapter, st in fleet.with_reason(pod.key)
        if st.reason in SOURCE_REASONS
    ]


def adapter_counts(fleet: Fleet, namespace: str, name: str) -> AdapterCounts:
    """Adapters placed on this base model, and those whose version every pod serves."""
    placed = fleet.placement(namespace, name).placed
    ready = sum(fleet.served_everywhere(namespace, name, a) for a in placed)
    return AdapterCounts(desired=len(placed), ready=ready)


def of(
    fleet: Fleet,
    body: Mapping[str, Any],
    outcome: Outcome,
    old: BaseModelDeploymentStatus,
    port: int,
    merged_pods: list[MergedPodView] | None = None,
) -> BaseModelDeploymentStatus:
    """The whole status of a base model after its children were converged."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    problems = [p for pod in fleet.all_pods_of(ns, name) for p in pod.problems]
    problems += source_problems(fleet, ns, name)
    observed = Observed(outcome.desired, outcome.deployment, problems, outcome.spec_error)
    who = Identity(
        generation=int(meta.get("generation") or 0),
        selector=naming.label_selector(naming.selector_labels(name)),
        endpoint=service_endpoint(body, port),
        served_name=outcome.served_name,
    )
    return compute(
        observed,
        who,
        adapter_counts(fleet, ns, name),
        old,
        routed_condition(outcome.router),
        router_status(outcome.router, body),
        (
            merged.condition(outcome.merge, merged_pods or [], outcome.desired),
            merged.status(outcome.merge, merged_pods or []),
        ),
    )

"""LoRAAdapter status, computed from the fleet's per-pod view. Pure."""

from __future__ import annotations

from loraplane.api import (
    AdapterSummary,
    LoRAAdapterStatus,
    PodAdapterStatus,
    ReplicaCounts,
)
from loraplane.fleet import AdapterView, Fleet, PodAdapterState, Version
from loraplane.status import Event
from loraplane.status.conditions import Cond, find, merge

# How many per-pod errors the message quotes.
MESSAGE_ERRORS = 3


def serves(st: PodAdapterState | None, version: Version | None) -> bool:
    return (
        st is not None
        and st.state == "Registered"
        and version is not None
        and st.path == version.path
    )


def _pods(
    fleet: Fleet, ad: AdapterView, version: Version | None, old: LoRAAdapterStatus, cap: int
) -> tuple[list[PodAdapterStatus], int, list[str]]:
    """Per-pod entries, pods that serve this version, and the pods' errors."""
    before = {p.name: p for p in old.pods or []}
    entries: list[PodAdapterStatus] = []
    registered = 0
    errors: list[str] = []
    for pod in fleet.pods_of(ad.namespace, ad.base_model):
        st = fleet.state(pod.key, ad.name)
        state = st.state if st else "Pending"
        if serves(st, version):
            registered += 1
        elif state == "Registered":
            state = "Loading"  # it serves an earlier version: not this one yet
        if st and st.last_error and state != "Evicted":
            errors.append(f"{pod.name}: {st.last_error}")
        prev = before.get(pod.name)
        since = prev.since if prev is not None and prev.state == state else None
        if since is None and st is not None:
            since = st.since
        entries.append(
            PodAdapterStatus(
                name=pod.name,
                state=state,
                since=since,
                last_error=st.last_error[:1024] if st and st.last_error else None,
            )
        )
    return entries[:cap], registered, errors


def _summary(version: Version | None) -> AdapterSummary | None:
    if version is None:
        return None
    return version.summary.model_copy(
        update={"path": version.path, "max_lora_rank": version.judged.max_lora_rank}
    )


def compute(fleet: Fleet, ad: AdapterView, old: LoRAAdapterStatus, cap: int) -> LoRAAdapterStatus:
    version = fleet.version(ad.key)
    failure = fleet.failure(ad.key)
    pods, registered, errors = _pods(fleet, ad, version, old, cap)
    desired = len(fleet.pods_of(ad.namespace, ad.base_model))
    phase, conds = _judge(fleet, ad, version, desired, registered, errors)
    if failure is not None:
        registered = 0
    return LoRAAdapterStatus(
        observed_generation=ad.generation,
        phase=phase,
        message=conds[1].message,
        conditions=merge(old.conditions, conds, ad.generation),
        adapter=_summary(version),
        replicas=ReplicaCounts(desired=desired, registered=registered),
        ready=f"{registered}/{desired}",
        pods=pods,
    )


def _judge(
    fleet: Fleet,
    ad: AdapterView,
    version: Version | None,
    desired: int,
    registered: int,
    errors: list[str],
) -> tuple[str, list[Cond]]:
    """(phase, [Validated, Ready])."""
    failure = fleet.failure(ad.key)
    if ad.spec_error is not None:
        validated = Cond("Validated", False, "InvalidSpec", ad.spec_error)
        return "Failed", [validated, Cond("Ready", False, "InvalidSpec", ad.spec_error)]
    if failure is not None:
        validated = Cond("Validated", False, failure.reason, failure.message)
        ready = Cond(
            "Ready",
            False,
            failure.reason,
            "this version was rejected and not loaded; a version registered before it keeps "
            "serving until its pod restarts",
        )
        return "Failed", [validated, ready]
    if version is not None:
        note = f"rank {version.summary.rank}, {version.summary.size_bytes} bytes"
        if version.warnings:
            note += "; warnings: " + "; ".join(version.warnings)
        validated = Cond("Validated", True, "Verified", note)
    else:
        validated = Cond("Validated", None, "Pending", "not fetched and verified yet")

    base = fleet.bases.get((ad.namespace, ad.base_model))
    placement = fleet.placement(ad.namespace, ad.base_model)
    quoted = "; ".join(errors[:MESSAGE_ERRORS])
    if base is None:
        phase, reason = "Pending", "BaseModelNotFound"
        message = f"BaseModelDeployment {ad.base_model} does not exist in {ad.namespace}"
    elif ad.name in placement.displaced:
        phase, reason = "Pending", "CapacityExceeded"
        message = (
            f"maxAdaptersPerReplica {base.cap} of {ad.base_model} is taken by adapters of higher "
            f"priority or age: {', '.join(placement.placed)}; it is placed again when room frees"
        )
    elif desired == 0:
        phase, reason = "Pending", "NoReplicas"
        message = f"{ad.base_model} has no running pods"
    elif version is None:
        phase, reason = "Loading", "Fetching"
        message = f"fetching and verifying the adapter; registered on {registered}/{desired}"
        if quoted:
            message += "; " + quoted
    elif registered == desired:
        phase, reason = "Ready", "Registered"
        message = f"registered on {registered}/{desired} replicas"
    elif errors and registered > 0:
        phase, reason = "Degraded", "PartiallyRegistered"
        message = f"registered on {registered}/{desired} replicas; {quoted}"
    else:
        phase, reason = "Loading", "Loading"
        message = f"registered on {registered}/{desired} replicas"
        if quoted:
            message += "; " + quoted
    return phase, [validated, Cond("Ready", phase == "Ready", reason, message)]


def event(old: LoRAAdapterStatus, new: LoRAAdapterStatus) -> Event | None:
    """The Event of a transition of phase (or into CapacityExceeded); None when there is none."""
    before, after = find(old.conditions, "Ready"), find(new.conditions, "Ready")
    reason = after.reason if after else None
    if (old.phase, before.reason if before else None) == (new.phase, reason):
        return None
    message = new.message or ""
    if new.phase == "Ready":
        return Event("Normal", "Ready", message)
    if new.phase == "Failed":
        return Event("Warning", str(reason), message)
    if reason == "CapacityExceeded":
        return Event("Warning", "CapacityExceeded", message)
    if new.phase == "Degraded" and old.phase != "Degraded":
        return Event("Warning", "Degraded", message)
    return None


def waiting_for_first_look(fleet: Fleet, ad: AdapterView) -> bool:
    """Right after a start, judge only once every serving pod's registrations are known."""
    return any(
        p.vllm_ready and not fleet.looked_at(p.key)
        for p in fleet.pods_of(ad.namespace, ad.base_model)
    )

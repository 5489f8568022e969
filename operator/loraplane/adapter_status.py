"""LoRAAdapter status, computed from the fleet's per-pod view. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraplane.conditions import Cond
from loraplane.fleet import AdapterView, Fleet


@dataclass(frozen=True)
class AdapterReport:
    phase: str
    message: str
    conditions: list[Cond]
    desired: int
    registered: int
    pods: list[dict[str, Any]]
    summary: dict[str, Any] | None


def report(fleet: Fleet, ad: AdapterView, pod_cap: int) -> AdapterReport:
    key = (ad.namespace, ad.name)
    failure = fleet.failure(key)
    version = fleet.version(key)
    summary = None
    if version is not None:
        summary = {**version.summary, "path": version.path}
    pods = sorted(fleet.pods_of(ad.namespace, ad.base_model), key=lambda p: p.name)
    entries: list[dict[str, Any]] = []
    registered = 0
    errors: list[str] = []
    for pod in pods:
        st = fleet.pod_states.get((pod.namespace, pod.name), {}).get(ad.name)
        state = st.state if st else "Pending"
        if state == "Registered":
            registered += 1
        if st and st.last_error and state != "Evicted":
            errors.append(f"{pod.name}: {st.last_error}")
        entry: dict[str, Any] = {"name": pod.name, "state": state}
        if st:
            entry["since"] = st.since
            if st.last_error:
                entry["lastError"] = st.last_error[:1024]
        entries.append(entry)
    desired = len(pods)

    if failure is not None:
        validated = Cond("Validated", False, failure.reason, failure.message)
        ready = Cond(
            "Ready",
            False,
            failure.reason,
            "this version was rejected and not loaded; a version registered before it keeps "
            "serving until its pod restarts",
        )
        return AdapterReport(
            "Failed", failure.message, [validated, ready], desired, 0, entries[:pod_cap], summary
        )

    if version is not None:
        note = f"rank {version.summary.get('rank')}, {version.summary.get('sizeBytes')} bytes"
        if version.warnings:
            note += "; warnings: " + "; ".join(version.warnings)
        validated = Cond("Validated", True, "Verified", note)
    else:
        validated = Cond("Validated", None, "Pending", "not fetched and verified yet")

    base = fleet.bases.get((ad.namespace, ad.base_model))
    placement = fleet.placement(ad.namespace, ad.base_model)
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
    elif registered == desired:
        phase, reason = "Ready", "Registered"
        message = f"registered on {registered}/{desired} replicas"
    elif errors and registered > 0:
        phase, reason = "Degraded", "PartiallyRegistered"
        message = f"registered on {registered}/{desired} replicas; " + "; ".join(errors[:3])
    else:
        phase, reason = "Loading", "Loading"
        message = f"registered on {registered}/{desired} replicas"
        if errors:
            message += "; " + "; ".join(errors[:3])
    ready = Cond("Ready", phase == "Ready", reason, message)
    return AdapterReport(
        phase, message, [validated, ready], desired, registered, entries[:pod_cap], summary
    )

"""The merged adapter's part of a base model's status (spec.model.merge): each pod's version,
the last failed merge, and the Merged condition. Pure."""

from __future__ import annotations

from loraplane.api import MergedPod, MergeFailure, MergeStatus
from loraplane.merge.book import MergedPodView
from loraplane.merge.plan import MergePlan, short
from loraplane.status.conditions import Cond

# Merged=False reasons that are progress, not trouble: no Warning Event.
PROGRESS = frozenset({"Merging", "AdapterPending"})


def status(plan: MergePlan | None, pods: list[MergedPodView]) -> MergeStatus | None:
    if plan is None:
        return None
    current = plan.inputs or plan.wanted
    failed = plan.failed
    return MergeStatus(
        adapter=current.adapter if current else None,
        served_name=current.served_name if current else None,
        digest=plan.inputs.digest if plan.inputs else None,
        pods=[
            MergedPod(
                name=p.name,
                digest=p.digest,
                state=p.state,
                message=f"{p.failure[0]}: {p.failure[1]}"[:1024] if p.failure else None,
            )
            for p in pods
            if not p.deleting
        ][:32],
        failed=(
            MergeFailure(
                digest=failed.digest,
                reason=failed.reason,
                message=failed.message[:1024],
                observed_generation=failed.generation,
            )
            if failed is not None
            else None
        ),
    )


def condition(plan: MergePlan | None, pods: list[MergedPodView], desired: int) -> Cond | None:
    """Merged: True when every pod serves the version the spec asks for."""
    if plan is None:
        return None
    inputs, wanted, failed = plan.inputs, plan.wanted, plan.failed
    keeps = f"; {short(inputs.digest)} keeps serving" if inputs else "; no version to serve"
    if wanted is not None and (inputs is None or inputs.digest != wanted.digest):
        why = f"{failed.reason}: {failed.message}" if failed else "its merge failed"
        return Cond(
            "Merged",
            False,
            "MergeFailed",
            f"version {short(wanted.digest)} of {wanted.adapter} did not merge ({why}){keeps}; "
            "a new version or a change of the spec tries again",
        )
    if wanted is None:
        reason, message = plan.why or ("AdapterPending", "no version to merge yet")
        return Cond("Merged", False, reason, message + keeps)
    serving = sum(1 for p in pods if p.state == "Serving" and p.digest == wanted.digest)
    if serving >= desired > 0 or desired == 0:
        return Cond(
            "Merged",
            True,
            "Merged",
            f"{wanted.adapter} {short(wanted.digest)} merged, served as {wanted.served_name} "
            f"on {serving}/{desired} pods",
        )
    return Cond(
        "Merged",
        False,
        "Merging",
        f"rolling out {wanted.adapter} {short(wanted.digest)}: {serving}/{desired} pods serve it",
    )

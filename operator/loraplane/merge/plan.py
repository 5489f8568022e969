"""Which merged version a base model's pods should serve now, and what to say about it. Pure.

The spec asks for a version (the named LoRAAdapter's pinned digest, or merge.source's digest).
The pods are rolled to it unless its merge failed at this generation; then, and while the
adapter is gone, refused or not verified yet, the version the pods serve (or the Deployment
pins) stays. With no version at all to serve, the Deployment is scaled to zero rather than left
to crash-loop on a merge that cannot succeed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loraplane.api import BaseModelDeploymentSpec, MergeSpec
from loraplane.fleet import Fleet
from loraplane.merge.book import Failed, Key, MergeBook
from loraplane.merge.inputs import MergeInputs, model_key

SHORT = len("sha256:") + 12


def short(digest: str | None) -> str:
    return (digest or "?")[:SHORT]


@dataclass(frozen=True)
class MergePlan:
    inputs: MergeInputs | None  # the version the pods are rolled to; None: none to serve
    wanted: MergeInputs | None  # the version the spec asks for; None: none yet (see why)
    why: tuple[str, str] | None  # (reason, message) when `wanted` is None
    failed: Failed | None  # the last failure at this generation


def wanted(
    fleet: Fleet, namespace: str, name: str, spec: BaseModelDeploymentSpec, merge: MergeSpec
) -> tuple[MergeInputs | None, tuple[str, str] | None]:
    """The version the spec asks for, or why there is none now."""
    if merge.source is not None:
        assert merge.digest is not None  # the schema requires it
        served = merge.served_name or spec.model.served_name or name
        digest = merge.digest if merge.digest.startswith("sha256:") else f"sha256:{merge.digest}"
        return MergeInputs(
            adapter=name, source=merge.source, digest=digest, served_name=served
        ), None
    assert merge.adapter is not None  # exactly one of adapter or source
    ad = fleet.adapters.get((namespace, merge.adapter))
    if ad is None or ad.deleting:
        return None, ("AdapterDeleted", f"LoRAAdapter {merge.adapter} does not exist")
    base = fleet.bases.get((namespace, ad.base_model))
    if ad.base_model == name or base is None or base.merged:
        return None, (
            "AdapterNotServed",
            f"LoRAAdapter {ad.name} must be bound to a BaseModelDeployment that serves it on the "
            f"fly ({ad.base_model} is {'this one' if ad.base_model == name else 'not one'}); "
            "its pinned version is what is merged",
        )
    if base.model != model_key(spec):
        return None, (
            "BaseModelMismatch",
            f"LoRAAdapter {ad.name} is bound to {ad.base_model}, which serves {base.model}, "
            f"not {model_key(spec)}: an adapter merges only into the model it was made for",
        )
    refused = fleet.failure(ad.key)
    if refused is not None:
        return None, ("AdapterRefused", f"LoRAAdapter {ad.name}: {refused.message}")
    version = fleet.version(ad.key)
    if version is None or ad.source is None or not version.summary.digest:
        return None, ("AdapterPending", f"LoRAAdapter {ad.name} has no verified version yet")
    inputs = MergeInputs(
        adapter=ad.name,
        source=ad.source,
        digest=version.summary.digest,
        served_name=ad.served_name,
    )
    return inputs, None


def plan(
    fleet: Fleet,
    book: MergeBook,
    base: Key,
    generation: int,
    spec: BaseModelDeploymentSpec,
    live: MergeInputs | None,
) -> MergePlan:
    assert spec.model.merge is not None
    book.judge(base, generation)
    asked, why = wanted(fleet, *base, spec, spec.model.merge)
    failed = book.last_failure(base, generation)
    if asked is not None and book.failure(base, asked.digest, generation) is None:
        return MergePlan(asked, asked, None, failed)
    kept = book.serving(base) or live
    if kept is not None and book.failure(base, kept.digest, generation) is not None:
        kept = None
    return MergePlan(kept, asked, why, failed)


def restore(book: MergeBook, base: Key, owner: Mapping[str, Any], generation: int) -> None:
    """A failure the status holds for this generation: the operator restarted since."""
    failed = ((owner.get("status") or {}).get("merge") or {}).get("failed")
    if failed and failed.get("observedGeneration") == generation:
        book.restore(
            base, Failed(failed["digest"], generation, failed["reason"], failed["message"])
        )

"""LoRAAdapter status, computed from the fleet's per-pod view. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from loraplane.api import (
    AdapterSummary,
    LoRAAdapterStatus,
    PodAdapterStatus,
    ReplicaCounts,
)
from loraplane.builders import naming
from loraplane.fleet import WAITS_FOR_ROLLOUT, AdapterView, Fleet, Key, Version, serves
from loraplane.status import Event
from loraplane.status.conditions import Cond, find, merge

# How many per-pod errors the message quotes.
MESSAGE_ERRORS = 3
# Characters of a digest quoted in messages and Events (status fields keep it whole).
SHORT_DIGEST = len("sha256:") + 12


def digest_of(path: str | None) -> str | None:
    """The version a store path holds: its directory is named by the files' sha256."""
    prefix = naming.ADAPTER_MOUNT_PATH.rstrip("/") + "/"
    if not path or not path.startswith(prefix):
        return None
    return "sha256:" + path.rstrip("/").rsplit("/", 1)[-1]


def short(digest: str | None) -> str:
    return (digest or "?")[:SHORT_DIGEST]


@dataclass
class PodTally:
    entries: list[PodAdapterStatus] = field(default_factory=list)
    registered: int = 0  # serve the pinned version
    outdated: int = 0  # still serve an earlier one
    errors: list[str] = field(default_factory=list)
    digests: dict[str, int] = field(default_factory=dict)  # served digest -> pods
    # why pods that do not serve it cannot fetch it (SourceUnauthorized, SecretNotFound, ...)
    reasons: set[str] = field(default_factory=set)
    waiting: int = 0  # pods left to the rollout: they run flags from before the spec changed


def _pods(
    fleet: Fleet,
    ad: AdapterView,
    version: Version | None,
    refused: str | None,
    old: LoRAAdapterStatus,
    cap: int,
) -> PodTally:
    """Per-pod entries and counts; `refused` is why the adapter is tried on no pod."""
    before = {p.name: p for p in old.pods or []}
    tally = PodTally()
    for pod in fleet.pods_of(ad.namespace, ad.base_model):
        # Another adapter holds the served name: the pod serves its files, whatever this
        # adapter had there before it lost the name.
        conflict = refused == "ServedNameConflict"
        st = None if conflict else fleet.state(pod.key, ad.name)
        error = st.last_error if st else None
        if conflict:
            state, error = "NotAttempted", _serves_instead(fleet, pod.key, ad.served_name)
        elif st is None:
            state, error = ("NotAttempted", refused) if refused else ("Pending", None)
        elif serves(st, version):
            state = "Registered"
            tally.registered += 1
        else:
            state = "Outdated" if st.state == "Registered" else st.state
        digest = digest_of(st.path) if st else None
        if digest is not None:
            tally.digests[digest] = tally.digests.get(digest, 0) + 1
            if state != "Registered":
                tally.outdated += 1
        if st and st.reason == WAITS_FOR_ROLLOUT:
            tally.waiting += 1
        elif st and st.last_error and state != "Evicted":
            tally.errors.append(f"{pod.name}: {st.last_error}")
            if st.reason and state != "Registered":
                tally.reasons.add(st.reason)
        prev = before.get(pod.name)
        since = prev.since if prev is not None and prev.state == state else None
        if since is None and st is not None:
            since = st.since
        unread = pod.key not in fleet.residency_read and pod.key not in fleet.residency
        tier: str | None
        if state not in ("Registered", "Outdated"):
            tier = None
        elif unread and prev is not None and prev.digest == digest:
            # Not read since the operator started (the first sync reads it last): the tier the
            # status holds is still the latest reading, and dropping it for a moment would
            # rewrite every status twice after a restart.
            tier = prev.tier
        else:
            tier = fleet.tier(pod.key, ad.served_name)
        tally.entries.append(
            PodAdapterStatus(
                name=pod.name,
                state=state,
                digest=digest,
                since=since,
                last_error=error[:1024] if error else None,
                tier=tier,
            )
        )
    tally.entries = tally.entries[:cap]
    return tally


def _serves_instead(fleet: Fleet, pod: Key, served: str) -> str:
    """What a pod serves under a served name this adapter does not hold."""
    path = fleet.registrations.get(pod, {}).get(served)
    if served not in fleet.registrations.get(pod, {}):
        return f"nothing is registered under {served!r} on this pod"
    entry = naming.store_entry(path)
    if entry is None:
        return f"this pod serves {path or 'files from outside the adapter store'} under {served!r}"
    return f"this pod serves LoRAAdapter {entry[0]!r} ({short(digest_of(path))}) under {served!r}"


def _summary(version: Version | None) -> AdapterSummary | None:
    if version is None:
        return None
    return version.summary.model_copy(
        update={"path": version.path, "max_lora_rank": version.judged.max_lora_rank}
    )


def _refusal(fleet: Fleet, ad: AdapterView) -> tuple[str, str] | None:
    """(reason, message) when the adapter is tried on no pod."""
    failure = fleet.failure(ad.key)
    if ad.spec_error is not None:
        return "InvalidSpec", ad.spec_error
    if failure is not None:
        return failure.reason, failure.message
    base = fleet.bases.get((ad.namespace, ad.base_model))
    if base is not None and base.merged:
        return "BaseModelMerged", (
            f"{ad.base_model} serves an adapter merged into its weights (spec.model.merge) and "
            "runs without LoRA: an adapter made for the base model must not run on merged "
            "weights; bind it to a BaseModelDeployment that serves adapters on the fly"
        )
    holder = fleet.served_name_holder(ad.key)
    if holder is not None:
        return "ServedNameConflict", (
            f"servedName {ad.served_name!r} is held by LoRAAdapter {holder.name!r}, "
            f"{fleet.claim_note(holder)}; this adapter is loaded nowhere until "
            f"{holder.name!r} goes or is renamed"
        )
    return None


def _kept_serving(tally: PodTally) -> str:
    """For a refused version: which earlier versions pods still serve, if any."""
    if not tally.outdated:
        return ""
    served = ", ".join(f"{short(d)} on {n} pod(s)" for d, n in sorted(tally.digests.items()))
    return f"; the version registered before keeps serving until its pods restart: {served}"


def compute(fleet: Fleet, ad: AdapterView, old: LoRAAdapterStatus, cap: int) -> LoRAAdapterStatus:
    version = fleet.version(ad.key)
    refusal = _refusal(fleet, ad)
    tally = _pods(fleet, ad, version, refusal[0] if refusal else None, old, cap)
    desired = len(fleet.pods_of(ad.namespace, ad.base_model))
    phase, conds = _judge(fleet, ad, version, refusal, desired, tally)
    registered = 0 if refusal else tally.registered
    split = fleet.split_of(ad.key)
    if split is not None:
        conds.append(Cond("Split", split.active, split.reason, split.message))
    return LoRAAdapterStatus(
        observed_generation=ad.generation,
        phase=phase,
        message=conds[1].message,
        conditions=merge(old.conditions, conds, ad.generation),
        adapter=None if refusal else _summary(version),
        replicas=ReplicaCounts(desired=desired, registered=registered, outdated=tally.outdated),
        ready=f"{registered}/{desired}",
        pods=tally.entries,
        traffic=list(split.shares) if split is not None else None,
    )


def _judge(
    fleet: Fleet,
    ad: AdapterView,
    version: Version | None,
    refusal: tuple[str, str] | None,
    desired: int,
    tally: PodTally,
) -> tuple[str, list[Cond]]:
    """(phase, [Validated, Ready, Progressing])."""
    if refusal is not None:
        reason, why = refusal
        return "Failed", [
            Cond("Validated", False, reason, why),
            Cond("Ready", False, reason, why + _kept_serving(tally)),
            Cond("Progressing", False, reason, "nothing rolls out until the spec changes"),
        ]
    if version is not None:
        note = f"rank {version.summary.rank}, {version.summary.size_bytes} bytes"
        if version.warnings:
            note += "; warnings: " + "; ".join(version.warnings)
        validated = Cond("Validated", True, "Verified", note)
    else:
        validated = Cond("Validated", None, "Pending", "not fetched and verified yet")

    registered, errors = tally.registered, tally.errors
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
        # One reason every failing pod shares (a wrong key, a missing Secret) names the state.
        reason = next(iter(tally.reasons)) if len(tally.reasons) == 1 else "Fetching"
        phase = "Loading"
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
        rolling = tally.outdated or tally.waiting
        phase, reason = "Loading", "RollingOut" if rolling else "Loading"
        message = f"registered on {registered}/{desired} replicas"
        if tally.waiting:
            message += (
                f"; {tally.waiting} pod(s) run a --max-lora-rank below the adapter's and are "
                "being replaced by the base model's rollout"
            )
        if quoted:
            message += "; " + quoted
    ready = Cond("Ready", phase == "Ready", reason, message)
    return phase, [validated, ready, _progressing(version, tally, desired)]


def _progressing(version: Version | None, tally: PodTally, desired: int) -> Cond:
    pinned = version.summary.digest if version else None
    if pinned is not None and tally.registered == desired:
        return Cond("Progressing", False, "RolloutComplete", f"every pod serves {short(pinned)}")
    served = ", ".join(
        f"{n} on {short(d)}{' (current)' if d == pinned else ''}"
        for d, n in sorted(tally.digests.items())
    )
    target = short(pinned) if pinned else "a version not verified yet"
    return Cond(
        "Progressing",
        True,
        "RollingOut",
        f"rolling out {target} to {desired} pod(s)"
        + (f"; pods serving: {served}" if served else ""),
    )


def events(old: LoRAAdapterStatus, new: LoRAAdapterStatus) -> list[Event]:
    """The Events of a transition (phase, version, served name); none when nothing moved."""
    out: list[Event] = []
    before, after = find(old.conditions, "Ready"), find(new.conditions, "Ready")
    old_reason, reason = (before.reason if before else None), (after.reason if after else None)
    was, now = (
        (old.adapter.digest if old.adapter else None),
        (new.adapter.digest if new.adapter else None),
    )
    if was and now and was != now:
        out.append(Event("Normal", "NewVersion", f"version {short(was)} -> {short(now)}"))
    if old_reason == "ServedNameConflict" and reason != "ServedNameConflict":
        out.append(Event("Normal", "ServedNameTaken", "the servedName is free: taking it over"))
    if (old.phase, old_reason) == (new.phase, reason):
        return out
    message = new.message or ""
    if new.phase == "Ready":
        out.append(Event("Normal", "Ready", message))
    elif new.phase == "Failed":
        out.append(Event("Warning", str(reason), message))
    elif reason == "CapacityExceeded":
        out.append(Event("Warning", "CapacityExceeded", message))
    elif new.phase == "Degraded" and old.phase != "Degraded":
        out.append(Event("Warning", "Degraded", message))
    out += _split_events(old, new)
    return out


def _split_events(old: LoRAAdapterStatus, new: LoRAAdapterStatus) -> list[Event]:
    """A canary that starts or stops splitting requests, or changes its weights."""
    before, after = find(old.conditions, "Split"), find(new.conditions, "Split")
    if after is None or (before and (before.status, before.reason, before.message)
                         == (after.status, after.reason, after.message)):  # fmt: skip
        return []
    if after.status == "True":
        return [Event("Normal", "Split", after.message or "")]
    if before is not None and before.status == "True":
        return [Event("Warning", str(after.reason), after.message or "")]
    return []


def transition(old: LoRAAdapterStatus, new: LoRAAdapterStatus) -> bool:
    """Whether `new` says more than progress within the state `old` says: another phase, spec
    generation, version, or verdict of a condition. Progress (how many pods so far, where the
    engine holds it) may wait a moment; a transition may not."""

    def verdicts(status: LoRAAdapterStatus) -> list[tuple[str, str, str | None]]:
        return sorted((c.type, c.status, c.reason) for c in status.conditions or [])

    def digest(status: LoRAAdapterStatus) -> str | None:
        return status.adapter.digest if status.adapter else None

    return (
        old.phase != new.phase
        or old.observed_generation != new.observed_generation
        or digest(old) != digest(new)
        or verdicts(old) != verdicts(new)
    )


def waiting_for_first_look(fleet: Fleet, ad: AdapterView) -> bool:
    """Right after a start, judge only once every serving pod's registrations are known."""
    return any(
        p.vllm_ready and not fleet.looked_at(p.key)
        for p in fleet.pods_of(ad.namespace, ad.base_model)
    )

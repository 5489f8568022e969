"""The operator's in-memory picture of base models, pods, adapters and children, and its rules.

The fleet is the only writer of this picture. Handlers hand it watch events (`observe_*`,
`forget_*`, `mark_deleting`); the per-pod sync hands it what it found on a pod (`record_*`,
`set_state`). Each mutation answers with the pods to kick, and wakes the status of what it
touched. Rebuilt from watch events after a restart (and a first LIST before any sync), then from
each pod's `/v1/models`, so nothing here has to survive the process.

A verdict on an adapter's files (a verified `Version`, a `Failure`) carries the `Judgement` it
was made against: the source and the base model's maxLoraRank. It counts only while those are
still what the objects say, so no edge has to invalidate it. The values it holds, and their
parsing from the API's objects, are in `fleet.views`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from loraplane import metrics
from loraplane.api import LoRAAdapterStatus
from loraplane.builders import naming
from loraplane.fleet.views import (
    GATE,
    NO_KICKS,
    WAITS_FOR_ROLLOUT,
    AdapterView,
    BaseView,
    Failure,
    Held,
    Judgement,
    Key,
    Kicks,
    PodAdapterState,
    PodChange,
    PodState,
    PodView,
    Version,
    adapter_view,
    base_view,
    fingerprint,
    is_newer,
    pod_view,
    registered_in,
    serves,
)
from loraplane.placement import Candidate, Placement, place
from loraplane.vllm.errors import Reason

if TYPE_CHECKING:  # canary judges from the fleet's views; the fleet only keeps its verdicts
    from loraplane.canary import Split

log = logging.getLogger(__name__)

__all__ = [
    "GATE",
    "NO_KICKS",
    "WAITS_FOR_ROLLOUT",
    "AdapterView",
    "BaseView",
    "Failure",
    "Fleet",
    "Judgement",
    "Key",
    "Kicks",
    "PodAdapterState",
    "PodChange",
    "PodState",
    "PodView",
    "Version",
    "adapter_view",
    "base_view",
    "fingerprint",
    "pod_view",
    "serves",
]


@dataclass
class Fleet:
    bases: dict[Key, BaseView] = field(default_factory=dict)
    pods: dict[Key, PodView] = field(default_factory=dict)
    adapters: dict[Key, AdapterView] = field(default_factory=dict)
    # pod key -> adapter name -> state on that pod
    pod_states: dict[Key, dict[str, PodAdapterState]] = field(default_factory=dict)
    # pod key -> served name -> path, as its sync last listed them: the pod has been looked at
    registrations: dict[Key, dict[str, str | None]] = field(default_factory=dict)
    # pod key -> digest of (required served names, versions kept) as its agent was last told:
    # a digest, not the thousands of names, for each of a hundred pods
    agent_told: dict[Key, str] = field(default_factory=dict)
    # pod key -> served name -> tier of what its engine holds (gpu or cpu; absent: disk), as its
    # sync last read it; no entry: the engine does not report residency
    residency: dict[Key, dict[str, str]] = field(default_factory=dict)
    # pod key -> monotonic time its residency was last read (whatever the answer)
    residency_read: dict[Key, float] = field(default_factory=dict)
    # uids of base models whose agent token Secret exists
    agent_secrets: set[str] = field(default_factory=set)
    # base key -> adapter name -> its canary split, as the base model's reconcile last judged it
    splits: dict[Key, dict[str, Split]] = field(default_factory=dict)
    # base key -> slot (naming.child_slot) -> the live child object, as the watches last showed it
    children: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _versions: dict[Key, Version] = field(default_factory=dict)
    _failures: dict[Key, Failure] = field(default_factory=dict)
    # registrations lost with a pod that went, not yet taken over by a newer pod
    _lost: dict[Held, int] = field(default_factory=dict)
    # pods that registered an adapter first after an older pod had it: maybe its replacement
    _newer: dict[Held, set[str]] = field(default_factory=dict)
    _adapter_changed: dict[Key, asyncio.Event] = field(default_factory=dict)
    _base_changed: dict[Key, asyncio.Event] = field(default_factory=dict)
    _base_progress: dict[Key, asyncio.Event] = field(default_factory=dict)
    # adapters whose status may have changed since the status writer last computed it, in the
    # order they changed; `stale_event` is set when one is added
    stale: dict[Key, None] = field(default_factory=dict)
    stale_event: asyncio.Event = field(default_factory=asyncio.Event)
    # adapters woken since the gauges were last read: the rest read as they were
    _unscraped: set[Key] = field(default_factory=set)
    # adapter -> the judgement its central pre-flight last passed (it runs once per judgement)
    _preflights: dict[Key, Judgement] = field(default_factory=dict)
    # indexes by base model (namespace, name), kept by the only writers of adapters and pods
    _adapters_by_base: dict[Key, dict[str, AdapterView]] = field(default_factory=dict)
    # base key -> served name -> names of the adapters that claim it
    _claimants: dict[Key, dict[str, set[str]]] = field(default_factory=dict)
    _pods_by_base: dict[Key, dict[str, PodView]] = field(default_factory=dict)
    # per base model, derived from its adapters (and failures): dropped when one of them changes
    _holders_of: dict[Key, dict[str, AdapterView]] = field(default_factory=dict)
    _placements: dict[Key, Placement] = field(default_factory=dict)
    # (namespace, base model, served name) -> the adapter that won a tie of same-second claims
    _tie_holders: dict[Held, str] = field(default_factory=dict)
    # base key -> adapter -> whether every pod of the base serves its version: dropped for an
    # adapter when one of its states or its version changes, whole when the base's pods or
    # adapters do. Counting a base of a thousand adapters on ten pods is otherwise 10,000 looks.
    _everywhere: dict[Key, dict[str, bool]] = field(default_factory=dict)
    # pod key -> adapters whose state there has a reason (rare; the base model reports some)
    _reasoned: dict[Key, set[str]] = field(default_factory=dict)
    # base key -> a count of the changes a pod's plan or its adapters' states can follow
    _epochs: dict[Key, int] = field(default_factory=dict)
    # pod key -> (its base's epoch when its last clean run began, the pod as it ran, what it
    # served after): a resync that finds all three again has nothing to do but list
    _settled: dict[Key, tuple[int, PodView, dict[str, str | None]]] = field(default_factory=dict)

    # -- queries -------------------------------------------------------------------------------

    def pods_of(self, namespace: str, base_model: str) -> list[PodView]:
        """The base model's pods that serve or will serve (not going away)."""
        return [p for p in self.all_pods_of(namespace, base_model) if not p.deleting]

    def all_pods_of(self, namespace: str, base_model: str) -> list[PodView]:
        pods = self._pods_by_base.get((namespace, base_model), {})
        return [pods[n] for n in sorted(pods)]

    def adapters_of(self, namespace: str, base_model: str) -> Iterator[AdapterView]:
        yield from list(self._adapters_by_base.get((namespace, base_model), {}).values())

    def _put_adapter(self, ad: AdapterView) -> None:
        old = self.adapters.get(ad.key)
        if old is not None and old.base_model != ad.base_model:
            self._drop_adapter(ad.key)
        elif old is not None:
            self._unclaim(old)
        self.adapters[ad.key] = ad
        base = (ad.namespace, ad.base_model)
        self._adapters_by_base.setdefault(base, {})[ad.name] = ad
        self._claimants.setdefault(base, {}).setdefault(ad.served_name, set()).add(ad.name)
        self._derived_changed(ad.namespace, ad.base_model)

    def _drop_adapter(self, key: Key) -> AdapterView | None:
        ad = self.adapters.pop(key, None)
        if ad is not None:
            self._adapters_by_base.get((ad.namespace, ad.base_model), {}).pop(ad.name, None)
            self._unclaim(ad)
            self._derived_changed(ad.namespace, ad.base_model)
        return ad

    def _unclaim(self, ad: AdapterView) -> None:
        names = self._claimants.get((ad.namespace, ad.base_model), {})
        claim = names.get(ad.served_name, set())
        claim.discard(ad.name)
        if not claim:
            names.pop(ad.served_name, None)

    def _put_pod(self, pod: PodView) -> None:
        old = self.pods.get(pod.key)
        if old is not None and old.base_model != pod.base_model:
            self._pods_by_base.get((old.namespace, old.base_model), {}).pop(old.name, None)
            self._everywhere.pop((old.namespace, old.base_model), None)
        if old is None or old.deleting != pod.deleting or old.base_model != pod.base_model:
            self._everywhere.pop((pod.namespace, pod.base_model), None)
        self.pods[pod.key] = pod
        self._pods_by_base.setdefault((pod.namespace, pod.base_model), {})[pod.name] = pod

    def _drop_pod(self, key: Key) -> PodView | None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            self._pods_by_base.get((pod.namespace, pod.base_model), {}).pop(pod.name, None)
            self._everywhere.pop((pod.namespace, pod.base_model), None)
        return pod

    def _derived_changed(self, namespace: str, base_model: str) -> None:
        self._holders_of.pop((namespace, base_model), None)
        self._placements.pop((namespace, base_model), None)
        self._everywhere.pop((namespace, base_model), None)
        self._bump(namespace, base_model)

    def _served_changed(self, key: Key, base_model: str) -> None:
        self._everywhere.get((key[0], base_model), {}).pop(key[1], None)
        self._bump(key[0], base_model)

    def _bump(self, namespace: str, base_model: str) -> None:
        key = (namespace, base_model)
        self._epochs[key] = self._epochs.get(key, 0) + 1

    def epoch(self, namespace: str, base_model: str) -> int:
        return self._epochs.get((namespace, base_model), 0)

    def settled(self, pod: PodView, registered: Mapping[str, str | None]) -> bool:
        """Nothing the pod's last clean run judged by has changed since it began, and its vLLM
        lists what that run left: this run has nothing to do. An adapter that follows its
        source is looked at every run."""
        last = self._settled.get(pod.key)
        if last is None or last[0] != self.epoch(pod.namespace, pod.base_model):
            return False
        if last[1] is not pod or last[2] != registered:
            return False
        placement = self.placement(pod.namespace, pod.base_model)
        adapters = self._adapters_by_base.get((pod.namespace, pod.base_model), {})
        return not any(a.follow for n in placement.placed if (a := adapters.get(n)))

    def ran_clean(self, pod: PodView, epoch: int, registered: Mapping[str, str | None]) -> None:
        """The pod's run that began at `epoch` finished with nothing left to retry."""
        self._settled[pod.key] = (epoch, pod, dict(registered))

    def judged_on(self, pod: PodView, judged: Judgement) -> Judgement:
        """What a refusal by this pod's vLLM was judged against: its own --max-lora-rank. A pod
        the rollout has not replaced yet judges by the old spec, so its refusal is no verdict
        on the new one."""
        if pod.max_lora_rank is None:
            return judged
        return replace(judged, max_lora_rank=pod.max_lora_rank)

    def judgement(self, key: Key) -> Judgement | None:
        """What a verdict on this adapter must be judged against now (None: not judgeable)."""
        ad = self.adapters.get(key)
        if ad is None or ad.fingerprint is None:
            return None
        base = self.bases.get((ad.namespace, ad.base_model))
        if base is None:
            return None
        return Judgement(ad.fingerprint, base.max_lora_rank)

    def version(self, key: Key) -> Version | None:
        v = self._versions.get(key)
        return v if v is not None and v.judged == self.judgement(key) else None

    def failure(self, key: Key) -> Failure | None:
        f = self._failures.get(key)
        if f is None or f.judged != self.judgement(key):
            return None
        if f.reason == Reason.ADAPTER_TOO_LARGE and f.size_limit != self._size_limit(key):
            return None
        return f

    def _size_limit(self, key: Key) -> int | None:
        ad = self.adapters.get(key)
        base = self.bases.get((ad.namespace, ad.base_model)) if ad is not None else None
        return base.store_size_limit if base is not None else None

    def _name_holders(self, namespace: str, base_model: str) -> dict[str, AdapterView]:
        """Served name -> the adapter holding it: the oldest claimant, then the first by name.

        A served name has one owner per base model: two adapters under one name would swap each
        other's weights at every sync, and clients would get either.
        """
        cached = self._holders_of.get((namespace, base_model))
        if cached is not None:
            return cached
        holders: dict[str, AdapterView] = {}
        self._holders_of[(namespace, base_model)] = holders
        for a in self.adapters_of(namespace, base_model):
            if a.deleting or a.spec_error is not None:
                continue
            held = holders.get(a.served_name)
            if held is None or a.claim < held.claim:
                holders[a.served_name] = a
        for served, held in list(holders.items()):
            tied = self._tied_claimants(held)
            if tied:
                holders[served] = self._break_tie(tied)
        return holders

    def _break_tie(self, tied: list[AdapterView]) -> AdapterView:
        """Of claimants created in the same second: the one whose files a pod registers or
        loads, else the one that held the name before (a replaced pod has nothing in place),
        else the first by name. Remembered, so the name never changes hands while both live."""
        key = (tied[0].namespace, tied[0].base_model, tied[0].served_name)
        before = self._tie_holders.get(key)
        holder = next(
            (a for a in tied if self._in_place(a)),
            next((a for a in tied if a.name == before), tied[0]),
        )
        self._tie_holders[key] = holder.name
        return holder

    def _tied_claimants(self, holder: AdapterView) -> list[AdapterView]:
        """Claimants of the holder's served name created in the same second (the API's
        timestamps have no finer grain), the holder first, then by name; empty: no tie."""
        base = (holder.namespace, holder.base_model)
        names = self._claimants.get(base, {}).get(holder.served_name, set())
        if len(names) < 2:
            return []
        adapters = self._adapters_by_base.get(base, {})
        tied = sorted(
            (
                a
                for n in names
                if (a := adapters.get(n)) is not None
                and not a.deleting
                and a.spec_error is None
                and a.created == holder.created
            ),
            key=lambda a: a.name,
        )
        return tied if len(tied) > 1 else []

    def _in_place(self, ad: AdapterView) -> bool:
        """Some pod of its base registers the adapter's files under its served name, or is
        loading them: a tie of claims goes to it, so no pod ever swaps the name's weights."""
        for pod in self.pods_of(ad.namespace, ad.base_model):
            path = self.registrations.get(pod.key, {}).get(ad.served_name)
            if (entry := naming.store_entry(path)) is not None and entry[0] == ad.name:
                return True
            st = self.state(pod.key, ad.name)
            if st is not None and st.state in ("Loading", "Registered"):
                return True
        return False

    def _contested(self, namespace: str, base_model: str, served: Iterable[str]) -> None:
        """Registrations or states under these served names moved: where two claimants tie,
        who holds the name may move with them."""
        claimants = self._claimants.get((namespace, base_model), {})
        if any(len(claimants.get(s, ())) > 1 for s in served):
            self._derived_changed(namespace, base_model)

    def claim_note(self, holder: AdapterView) -> str:
        """Why the holder holds its served name, for the other claimants' messages."""
        if not self._tied_claimants(holder):
            return "created earlier"
        if self._in_place(holder):
            return "created in the same second and registered first"
        return "created in the same second and first by name"

    def name_losers(self, namespace: str, base_model: str) -> list[str]:
        """Adapters of the base model that claim a served name another one holds."""
        holders = self._name_holders(namespace, base_model)
        return sorted(
            name
            for served, names in self._claimants.get((namespace, base_model), {}).items()
            if len(names) > 1
            for name in names
            if (held := holders.get(served)) is not None and held.name != name
        )

    def served_name_holder(self, key: Key) -> AdapterView | None:
        """The adapter that holds this adapter's served name, when it is another one."""
        ad = self.adapters.get(key)
        if ad is None:
            return None
        holder = self._name_holders(ad.namespace, ad.base_model).get(ad.served_name)
        return holder if holder is not None and holder.name != ad.name else None

    def placement(self, namespace: str, base_model: str) -> Placement:
        """Which adapters this base model's pods should serve (failed and deleting ones not)."""
        cached = self._placements.get((namespace, base_model))
        if cached is not None:
            return cached
        base = self.bases.get((namespace, base_model))
        holders = self._name_holders(namespace, base_model)
        candidates = [
            Candidate(a.name, a.priority, a.created)
            for a in holders.values()
            if self.failure(a.key) is None and not (base and base.merged)
        ]
        placement = self._placements[(namespace, base_model)] = place(
            candidates, base.cap if base else None
        )
        return placement

    def state(self, pod: Key, adapter: str) -> PodAdapterState | None:
        return self.pod_states.get(pod, {}).get(adapter)

    def served_everywhere(self, namespace: str, base_model: str, adapter: str) -> bool:
        """Every pod of the base model (and there is one) serves the adapter's version."""
        known = self._everywhere.setdefault((namespace, base_model), {})
        hit = known.get(adapter)
        if hit is None:
            version = self.version((namespace, adapter))
            pods = self.pods_of(namespace, base_model)
            hit = bool(pods) and all(serves(self.state(p.key, adapter), version) for p in pods)
            known[adapter] = hit
        return hit

    def with_reason(self, pod: Key) -> list[tuple[str, PodAdapterState]]:
        """The pod's adapter states that carry a reason, by adapter name."""
        states = self.pod_states.get(pod, {})
        return [(a, states[a]) for a in sorted(self._reasoned.get(pod, ())) if a in states]

    def looked_at(self, pod: Key) -> bool:
        """The pod's registrations are known (its sync listed them since the operator started)."""
        return pod in self.registrations

    # -- change notification -------------------------------------------------------------------

    def adapter_changed(self, key: Key) -> asyncio.Event:
        """Set when the adapter's status may have changed, for whoever waits on it to clear."""
        return self._adapter_changed.setdefault(key, asyncio.Event())

    def wake(self, key: Key) -> None:
        """The adapter's status may have changed: queue it for the status writer."""
        self.stale[key] = None
        self.stale_event.set()
        self._unscraped.add(key)
        event = self._adapter_changed.get(key)
        if event is not None:
            event.set()

    def preflight_passed(self, key: Key, judged: Judgement) -> bool:
        return self._preflights.get(key) == judged

    def record_preflight(self, key: Key, judged: Judgement) -> None:
        """The operator's own look at the adapter's files judged them against `judged`."""
        self._preflights[key] = judged

    def take_unscraped(self) -> set[Key]:
        """The adapters woken since the last call: those whose gauges may have moved."""
        taken, self._unscraped = self._unscraped, set()
        return taken

    def take_stale(self, busy: set[Key]) -> Key | None:
        """The adapter that changed first and is not `busy` (its status is being written)."""
        key = next((k for k in self.stale if k not in busy), None)
        if key is not None:
            del self.stale[key]
        return key

    def base_changed(self, key: Key) -> asyncio.Event:
        """Set when the base model's spec, children or pods changed: reconciled at once."""
        return self._base_changed.setdefault(key, asyncio.Event())

    def base_progress(self, key: Key) -> asyncio.Event:
        """Set when only its adapter counts can have moved (an adapter added, loaded, failed):
        a burst of a thousand is one reconcile per progress period, not one each."""
        return self._base_progress.setdefault(key, asyncio.Event())

    def touch(self, namespace: str, base_model: str) -> None:
        self.base_changed((namespace, base_model)).set()
        for ad in self.adapters_of(namespace, base_model):
            self.wake(ad.key)

    def _kicks(self, namespace: str, base_model: str) -> Kicks:
        self.touch(namespace, base_model)
        return self._pod_keys(namespace, base_model)

    def _pod_keys(self, namespace: str, base_model: str) -> Kicks:
        return frozenset(p.key for p in self.pods_of(namespace, base_model))

    def _adapter_kicks(self, ad: AdapterView, *served_names: str) -> Kicks:
        """An adapter changed: its base model's pods sync, and the statuses it can move wake.

        Those are its own, those of adapters under the same served names (which one holds a
        name), and with maxAdaptersPerReplica every one of its base (placement ranks them all):
        a burst of new adapters does not recompute a thousand others each.
        """
        ns, base_model = ad.namespace, ad.base_model
        base = self.bases.get((ns, base_model))
        if base is not None and base.cap is not None:
            return self._kicks(ns, base_model)
        self.base_progress((ns, base_model)).set()
        self.wake(ad.key)
        self._wake_served(ns, base_model, {ad.served_name, *served_names})
        return self._pod_keys(ns, base_model)

    def _wake_served(self, namespace: str, base_model: str, served: set[str]) -> None:
        claimants = self._claimants.get((namespace, base_model), {})
        for name in sorted({a for s in served for a in claimants.get(s, ())}):
            self.wake((namespace, name))

    # -- watch events --------------------------------------------------------------------------

    def observe_base(self, obj: Mapping[str, Any]) -> Kicks:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        new = base_view(obj)
        if new is None or self.bases.get(key) == new:
            self.base_changed(key).set()
            return NO_KICKS
        self.bases[key] = new
        self._derived_changed(*key)
        return self._kicks(*key)

    def set_splits(self, base: Key, splits: dict[str, Split]) -> None:
        """Keep the base model's canary splits; wake the adapters whose split changed."""
        old = self.splits.get(base, {})
        if splits:
            self.splits[base] = splits
        else:
            self.splits.pop(base, None)
        for name in old.keys() | splits.keys():
            if old.get(name) != splits.get(name):
                self.wake((base[0], name))

    def split_of(self, key: Key) -> Split | None:
        ad = self.adapters.get(key)
        if ad is None:
            return None
        return self.splits.get((ad.namespace, ad.base_model), {}).get(ad.name)

    def forget_base(self, key: Key) -> Kicks:
        self.splits.pop(key, None)
        self.bases.pop(key, None)
        self._derived_changed(*key)
        self.children.pop(key, None)
        self._base_changed.pop(key, None)
        self._base_progress.pop(key, None)
        metrics.forget_base(*key)
        return self._kicks(*key)

    def observe_adapter(self, obj: Mapping[str, Any]) -> Kicks:
        self._merged_look_again(obj["metadata"]["namespace"])
        new = adapter_view(obj)
        old = self.adapters.get(new.key)
        if old == new:
            return NO_KICKS
        self._put_adapter(new)
        if old is None:
            self._seed_version(new, obj)
            return self._adapter_kicks(new)
        if old.base_model != new.base_model:
            return self._adapter_kicks(new) | self._adapter_kicks(old)
        return self._adapter_kicks(new, old.served_name)

    def _seed_version(self, ad: AdapterView, obj: Mapping[str, Any]) -> None:
        """Trust the version status recorded for this very spec, so a restart reloads nothing.

        Status is written whole (a generation without a version clears `adapter`), and the
        summary names the maxLoraRank it was verified against: both must still hold.
        """
        if ad.fingerprint is None:
            return
        try:
            status = LoRAAdapterStatus.from_k8s(obj.get("status") or {})
        except ValidationError:
            return
        summary = status.adapter
        if (
            status.observed_generation != ad.generation
            or summary is None
            or summary.path is None
            or summary.max_lora_rank is None
        ):
            return
        judged = Judgement(ad.fingerprint, summary.max_lora_rank)
        self._versions[ad.key] = Version(judged, summary.path, summary)
        self._served_changed(ad.key, ad.base_model)

    def _merged_look_again(self, namespace: str) -> None:
        """An adapter's new version (its status) or deletion: merged base models of the
        namespace judge their merge again. They are few, and a reconcile that finds nothing
        changed writes nothing."""
        for key, base in self.bases.items():
            if key[0] == namespace and base.merged:
                self.base_changed(key).set()

    def mark_deleting(self, key: Key) -> Kicks:
        ad = self.adapters.get(key)
        if ad is None:
            return NO_KICKS
        if not ad.deleting:
            self._put_adapter(replace(ad, deleting=True))
        return self._adapter_kicks(ad)

    def forget_adapter(self, key: Key) -> Kicks:
        self._merged_look_again(key[0])
        ad = self._drop_adapter(key)
        self._adapter_changed.pop(key, None)
        self._versions.pop(key, None)
        self._failures.pop(key, None)
        self._preflights.pop(key, None)
        for pod, states in self.pod_states.items():
            if pod[0] == key[0]:
                states.pop(key[1], None)
                self._reasoned.get(pod, set()).discard(key[1])
        for held in [h for h in (*self._lost, *self._newer) if (h[0], h[2]) == key]:
            self._lost.pop(held, None)
            self._newer.pop(held, None)
        for held in [h for h, n in self._tie_holders.items() if (h[0], n) == key]:
            del self._tie_holders[held]
        metrics.forget_adapter(*key)
        if ad is None:
            return NO_KICKS
        kicks = self._adapter_kicks(ad)
        self.stale.pop(key, None)
        return kicks

    def observe_pod(self, obj: Mapping[str, Any]) -> PodChange:
        new = pod_view(obj)
        old = self.pods.get(new.key)
        self._put_pod(new)
        if (
            old is None
            or old.deleting != new.deleting
            or (old.vllm_ready != new.vllm_ready and not self.looked_at(new.key))
        ):
            # A pod more or less, or one its adapters' statuses wait for: each shows every pod.
            self.touch(new.namespace, new.base_model)
        elif old.runtime_changed(new) or old.problems != new.problems:
            # Only the base model reports these; what a restart does to each adapter's state
            # on the pod, the pod's sync records (and wakes those it moved).
            self.base_changed((new.namespace, new.base_model)).set()
        if old is None:
            return PodChange.NEW
        return PodChange.RUNTIME if old.runtime_changed(new) else PodChange.OTHER

    def forget_pod(self, key: Key) -> None:
        gone = self._drop_pod(key)
        self._settled.pop(key, None)
        states = self.pod_states.pop(key, {})
        self._reasoned.pop(key, None)
        self.registrations.pop(key, None)
        self.agent_told.pop(key, None)
        self.residency.pop(key, None)
        self.residency_read.pop(key, None)
        if gone is None:
            return
        for held, newer in self._newer.items():
            if held[:2] == (gone.namespace, gone.base_model):
                newer.discard(gone.name)
        for name, st in states.items():
            if st.state == "Registered":
                self._lost_with(gone, name)
        self.touch(gone.namespace, gone.base_model)

    def _lost_with(self, gone: PodView, adapter: str) -> None:
        """The adapter's registration went with its pod: a newer pod took it over, or will."""
        held = (gone.namespace, gone.base_model, adapter)
        metrics.ADAPTER_UNLOADS.labels(*held, "pod_gone").inc()
        newer = self._newer.get(held, set())
        if newer:
            newer.remove(min(newer))
            metrics.ADAPTER_REREGISTRATIONS.labels(*held, "new_pod").inc()
        else:
            self._lost[held] = self._lost.get(held, 0) + 1

    def observe_child(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        """A child of a base model as a watch (or our own write) shows it.

        Children are found by name (and the router's by their owner), not by labels: a label
        edited by hand must not hide the edit from the reconcile that puts it back.
        """
        meta = obj["metadata"]
        found = naming.child_slot(obj)
        if found is None:
            return
        base_model, slot = found
        key = (meta["namespace"], base_model)
        ours = (meta.get("labels") or {}).get(naming.LABEL_BASE_MODEL) == key[1]
        if key not in self.bases and not ours and key not in self.children:
            return
        slots = self.children.setdefault(key, {})
        if deleted:
            slots.pop(slot, None)
        elif is_newer(obj, slots.get(slot)):
            slots[slot] = dict(obj)
        else:
            return
        self.base_changed(key).set()

    def child(self, key: Key, slot: str) -> dict[str, Any] | None:
        """A live child by its slot (naming.child_slot): its kind, or router/<kind>."""
        return self.children.get(key, {}).get(slot)

    # -- what the per-pod sync found -----------------------------------------------------------

    def record_version(self, key: Key, judged: Judgement, version: Version) -> Kicks | None:
        """Keep a verified version; None when it is not what the adapter serves now.

        The first version verified for a judgement is pinned: every pod serves it, whatever the
        source does afterwards. Only an adapter that follows its source moves the pin to files
        that changed, which kicks every pod of its base model to roll it out.
        """
        ad = self.adapters.get(key)
        if ad is None or judged != self.judgement(key):
            return None  # the spec or the base moved on while this was fetched
        current = self.version(key)
        if current is not None and current.path != version.path and not ad.follow:
            return None
        if current is not None and current.path == version.path:
            return NO_KICKS
        self._versions[key] = version
        self._served_changed(key, ad.base_model)
        if current is None:
            self.wake(key)
            return NO_KICKS
        log.info("adapter %s/%s: new version %s (was %s)", *key, version.path, current.path)
        return self._adapter_kicks(ad)

    def record_failure(self, key: Key, judged: Judgement, reason: str, message: str) -> Kicks:
        """A verdict against the adapter's files: every pod of its base drops it from its plan."""
        ad = self.adapters.get(key)
        if ad is None or judged != self.judgement(key) or self.failure(key) is not None:
            return NO_KICKS
        self._failures[key] = Failure(judged, reason, message, self._size_limit(key))
        self._derived_changed(ad.namespace, ad.base_model)
        metrics.VALIDATION_FAILURES.labels(ad.namespace, ad.base_model, ad.name, reason).inc()
        log.warning("adapter %s/%s rejected: %s: %s", *key, reason, message)
        return self._adapter_kicks(ad)

    def set_state(
        self,
        pod: Key,
        adapter: str,
        state: PodState,
        last_error: str | None = None,
        path: str | None = None,
        reason: str | None = None,
        container: str | None = None,
    ) -> None:
        """The adapter's state on the pod; `container`: the vLLM container of a registration."""
        states = self.pod_states.setdefault(pod, {})
        current = states.get(adapter)
        held_in = registered_in(current, state, container)
        if current is None or current.state != state:
            states[adapter] = PodAdapterState(
                state, last_error=last_error, path=path, reason=reason, registered_in=held_in
            )
        elif (current.last_error, current.path, current.reason, current.registered_in) != (
            last_error,
            path,
            reason,
            held_in,
        ):
            current.last_error, current.path, current.reason = last_error, path, reason
            current.registered_in = held_in
        else:
            return  # a converged pod's resync: no status to recompute
        self._state_changed(pod, adapter, reason is not None)
        if (pod[0], adapter) in self.adapters:
            self.wake((pod[0], adapter))
        view = self.pods.get(pod)
        if view is not None:  # its counts and the sources it reports missing are in its status
            self.base_progress((view.namespace, view.base_model)).set()

    def clear_state(self, pod: Key, adapter: str) -> None:
        if self.pod_states.get(pod, {}).pop(adapter, None) is not None:
            self._state_changed(pod, adapter, False)

    def _state_changed(self, pod: Key, adapter: str, reasoned: bool) -> None:
        if reasoned:
            self._reasoned.setdefault(pod, set()).add(adapter)
        else:
            self._reasoned.get(pod, set()).discard(adapter)
        view = self.pods.get(pod)
        if view is not None:
            self._served_changed((pod[0], adapter), view.base_model)
            if (ad := self.adapters.get((pod[0], adapter))) is not None:
                self._contested(ad.namespace, ad.base_model, (ad.served_name,))

    def record_load(self, pod: PodView, ad: AdapterView, path: str, replaced: str | None) -> None:
        """The pod's vLLM loaded the adapter from `path`, in place of `replaced` if not None."""
        if replaced is None:
            self._count_reregistration(pod, ad)
        self.set_state(pod.key, ad.name, "Registered", path=path, container=pod.vllm_container_id)

    def _count_reregistration(self, pod: PodView, ad: AdapterView) -> None:
        """Whether registering the adapter on the pod replaces a lost registration, and why."""
        held = (ad.namespace, ad.base_model, ad.name)
        before = self.state(pod.key, ad.name)
        if before is not None and before.registered_in is not None:
            cause = (
                "container_restart" if before.registered_in != pod.vllm_container_id else "drift"
            )
        elif self._lost.get(held):
            self._lost[held] -= 1
            cause = "new_pod"
        else:
            if self._registered_before(pod, ad.name):
                self._newer.setdefault(held, set()).add(pod.name)
            return
        metrics.ADAPTER_REREGISTRATIONS.labels(*held, cause).inc()

    def _registered_before(self, pod: PodView, adapter: str) -> bool:
        """Another pod of the base model had the adapter registered when this pod was created."""
        return pod.created is not None and any(
            (st := self.state(other.key, adapter)) is not None
            and st.state == "Registered"
            and st.since < pod.created
            for other in self.pods_of(pod.namespace, pod.base_model)
            if other.name != pod.name
        )

    def record_registrations(self, pod: Key, registered: Mapping[str, str | None]) -> None:
        """What the pod's `/v1/models` listed; from now on the pod counts as looked at."""
        before = self.registrations.get(pod)
        if before == registered:
            return  # a converged pod's resync changes nothing: nothing to wake
        self.registrations[pod] = dict(registered)
        view = self.pods.get(pod)
        if view is None:
            return
        if before is None:  # the first look: statuses held back until now can be told
            self._contested(view.namespace, view.base_model, registered)
            self.touch(view.namespace, view.base_model)
            return
        self.base_progress((view.namespace, view.base_model)).set()
        moved = {n for n in before.keys() | registered.keys() if before.get(n) != registered.get(n)}
        self._contested(view.namespace, view.base_model, moved)
        self._wake_served(view.namespace, view.base_model, moved)

    def tier(self, pod: Key, served_name: str) -> str | None:
        """Where the pod's engine holds `served_name`: gpu, cpu, disk; None: not reported."""
        tiers = self.residency.get(pod)
        return None if tiers is None else tiers.get(served_name, "disk")

    def record_residency(self, pod: Key, tiers: Mapping[str, str] | None, at: float) -> None:
        """What the pod's engine holds now (None: it does not say), read at monotonic time
        `at`; wakes the adapters it moved."""
        self.residency_read[pod] = at
        before = self.residency.get(pod)
        if before == tiers:
            return
        if tiers is None:
            self.residency.pop(pod, None)
        else:
            self.residency[pod] = dict(tiers)
        view = self.pods.get(pod)
        if view is None:
            return
        moved = {
            n
            for n in set(before or {}) | set(tiers or {})
            if (before or {}).get(n) != (tiers or {}).get(n)
        }
        if before is None or tiers is None:
            moved = set(self.registrations.get(pod, {})) | moved
        holders = self._name_holders(view.namespace, view.base_model)
        for name in moved:
            if (ad := holders.get(name)) is not None:
                self.wake(ad.key)

    def lost_registrations(self, pod: Key) -> None:
        """The pod's vLLM is not ready: a restarted server has nothing registered.

        Its adapters' states turn Pending and keep the container that registered them, so their
        next load counts as a re-registration.
        """
        for name, st in list(self.pod_states.get(pod, {}).items()):
            if st.state == "Registered":
                self.set_state(pod, name, "Pending", "vLLM is not ready on this pod")
        self.record_registrations(pod, {})
        self.residency_read.pop(pod, None)  # a new engine: read it as soon as it serves

    def told_agent(self, pod: Key, told: str) -> None:
        self.agent_told[pod] = told

    def made_agent_secret(self, uid: str) -> None:
        self.agent_secrets.add(uid)

    def lost_agent_secret(self, base: BaseView) -> None:
        """A sync found the agent token Secret gone: the base model's reconcile makes it again."""
        self.agent_secrets.discard(base.uid)
        self.base_changed((base.namespace, base.name)).set()

    def gate_set(self, pod: Key, ready: bool) -> None:
        view = self.pods.get(pod)
        if view is not None:
            self._put_pod(replace(view, gate=ready))

    def holders(self, key: Key) -> list[PodView]:
        """Serving pods that may still have this adapter registered (or not looked at yet).

        By path, not by name: another adapter's registration under the same served name is not
        this adapter's to wait for.
        """
        ad = self.adapters.get(key)
        if ad is None:
            return []
        own = f"{naming.ADAPTER_MOUNT_PATH.rstrip('/')}/{ad.name}/"

        def holds(pod: Key) -> bool:
            if not self.looked_at(pod):
                return True
            registered = self.registrations[pod]
            path = registered.get(ad.served_name)
            return ad.served_name in registered and (path is None or path.startswith(own))

        return [
            p for p in self.pods_of(ad.namespace, ad.base_model) if p.vllm_ready and holds(p.key)
        ]

    async def wait_unregistered(self, key: Key, within: float) -> list[PodView]:
        """Wait until no running pod has the adapter registered; returns the pods left."""
        deadline = time.monotonic() + within
        while (left := self.holders(key)) and (remaining := deadline - time.monotonic()) > 0:
            event = self.adapter_changed(key)
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, 1.0))
        return left

"""The operator's in-memory picture of base models, their pods and adapters.

Rebuilt from watch events after a restart (kopf replays every object at start), then from
`/v1/models` on each pod, so nothing here has to survive the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from loraplane.builders import naming
from loraplane.conditions import now_rfc3339
from loraplane.placement import Candidate, Placement, place

Key = tuple[str, str]  # (namespace, name)


@dataclass
class BaseView:
    namespace: str
    name: str
    max_lora_rank: int
    cap: int | None
    api_key_ref: tuple[str, str] | None  # (secret name, key)


@dataclass
class PodView:
    namespace: str
    name: str
    base_model: str
    ip: str | None
    vllm_container_id: str | None
    vllm_ready: bool  # running and passing its readiness probe
    vllm_running: bool
    deleting: bool
    gate: bool | None  # our readiness gate condition as the API shows it


@dataclass
class AdapterView:
    namespace: str
    name: str
    base_model: str
    served_name: str
    source: dict[str, Any]
    priority: int
    created: str
    generation: int
    deleting: bool = False


@dataclass
class Version:
    generation: int
    path: str
    summary: dict[str, Any]
    warnings: list[str]


@dataclass
class Failure:
    generation: int
    reason: str
    message: str


@dataclass
class PodAdapterState:
    state: str  # Pending, Loading, Registered, Failed, Evicted
    since: str = field(default_factory=now_rfc3339)
    last_error: str | None = None


@dataclass
class Fleet:
    bases: dict[Key, BaseView] = field(default_factory=dict)
    pods: dict[Key, PodView] = field(default_factory=dict)
    adapters: dict[Key, AdapterView] = field(default_factory=dict)
    versions: dict[Key, Version] = field(default_factory=dict)
    failures: dict[Key, Failure] = field(default_factory=dict)
    # pod key -> adapter name -> state on that pod
    pod_states: dict[Key, dict[str, PodAdapterState]] = field(default_factory=dict)
    synced: set[Key] = field(default_factory=set)  # pods converged at least once since start
    # Set when an adapter's picture may have changed: its status is published at once.
    changes: dict[Key, asyncio.Event] = field(default_factory=dict)

    def change_event(self, key: Key) -> asyncio.Event:
        return self.changes.setdefault(key, asyncio.Event())

    def touch_base(self, namespace: str, base_model: str) -> None:
        for ad in self.adapters_of(namespace, base_model):
            self.change_event((ad.namespace, ad.name)).set()

    def pods_of(self, namespace: str, base_model: str) -> list[PodView]:
        return [
            p
            for p in self.pods.values()
            if p.namespace == namespace and p.base_model == base_model and not p.deleting
        ]

    def adapters_of(self, namespace: str, base_model: str) -> Iterator[AdapterView]:
        for a in self.adapters.values():
            if a.namespace == namespace and a.base_model == base_model:
                yield a

    def failure(self, key: Key) -> Failure | None:
        ad = self.adapters.get(key)
        f = self.failures.get(key)
        return f if ad is not None and f is not None and f.generation == ad.generation else None

    def version(self, key: Key) -> Version | None:
        ad = self.adapters.get(key)
        v = self.versions.get(key)
        return v if ad is not None and v is not None and v.generation == ad.generation else None

    def placement(self, namespace: str, base_model: str) -> Placement:
        """Which adapters this base model's pods should serve (failed and deleting ones not)."""
        base = self.bases.get((namespace, base_model))
        candidates = [
            Candidate(a.name, a.priority, a.created)
            for a in self.adapters_of(namespace, base_model)
            if not a.deleting and self.failure((namespace, a.name)) is None
        ]
        return place(candidates, base.cap if base else None)

    def set_state(self, pod: Key, adapter: str, state: str, last_error: str | None = None) -> None:
        states = self.pod_states.setdefault(pod, {})
        current = states.get(adapter)
        if current is None or current.state != state:
            states[adapter] = PodAdapterState(state, last_error=last_error)
        else:
            current.last_error = last_error

    def forget_pod(self, key: Key) -> None:
        self.pods.pop(key, None)
        self.pod_states.pop(key, None)
        self.synced.discard(key)

    def forget_adapter(self, key: Key) -> None:
        self.adapters.pop(key, None)
        self.changes.pop(key, None)
        self.versions.pop(key, None)
        self.failures.pop(key, None)
        for states in self.pod_states.values():
            states.pop(key[1], None)


GATE = naming.ADAPTERS_READY_GATE


def pod_view(pod: Mapping[str, Any], base_label: str, vllm_container: str) -> PodView:
    meta = pod["metadata"]
    status = pod.get("status") or {}
    vllm: Mapping[str, Any] = next(
        (c for c in status.get("containerStatuses") or [] if c.get("name") == vllm_container), {}
    )
    gate = next((c for c in status.get("conditions") or [] if c.get("type") == GATE), None)
    return PodView(
        namespace=meta["namespace"],
        name=meta["name"],
        base_model=(meta.get("labels") or {}).get(base_label, ""),
        ip=status.get("podIP"),
        vllm_container_id=vllm.get("containerID"),
        vllm_ready=bool(vllm.get("ready")) and "running" in (vllm.get("state") or {}),
        vllm_running="running" in (vllm.get("state") or {}),
        deleting=bool(meta.get("deletionTimestamp"))
        or status.get("phase") in ("Succeeded", "Failed"),
        gate=None if gate is None else gate.get("status") == "True",
    )


def adapter_view(obj: Mapping[str, Any]) -> AdapterView:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    return AdapterView(
        namespace=meta["namespace"],
        name=meta["name"],
        base_model=spec.get("baseModel", ""),
        served_name=spec.get("servedName") or meta["name"],
        source=dict(spec.get("source") or {}),
        priority=int(spec.get("priority") or 0),
        created=meta.get("creationTimestamp") or "",
        generation=int(meta.get("generation") or 0),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def base_view(obj: Mapping[str, Any]) -> BaseView:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    lora = spec.get("lora") or {}
    ref = (spec.get("engine") or {}).get("apiKeySecretRef")
    return BaseView(
        namespace=meta["namespace"],
        name=meta["name"],
        max_lora_rank=int(lora.get("maxLoraRank") or 16),
        cap=lora.get("maxAdaptersPerReplica"),
        api_key_ref=(ref["name"], ref.get("key") or "key") if ref else None,
    )


def recorded_version(obj: Mapping[str, Any]) -> Version | None:
    """The version an adapter's status recorded for its current generation, if any.

    After an operator restart this is trusted, so a pod that already serves it is left alone
    instead of being fetched and loaded again.
    """
    status = obj.get("status") or {}
    summary = status.get("adapter") or {}
    generation = int(obj["metadata"].get("generation") or 0)
    if status.get("observedGeneration") == generation and summary.get("path"):
        return Version(generation, summary["path"], dict(summary), [])
    return None

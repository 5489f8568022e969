"""The fleet's plain values: what it holds of each base model, pod and adapter, and the verdicts
it keeps, parsed from the API's objects. Pure; the `Fleet` that holds them is their one writer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from functools import cached_property
from typing import Any, Literal

from loraplane.api import (
    AdapterSource,
    AdapterSummary,
    BaseModelDeploymentSpec,
    LoRAAdapter,
    SecretKeyRef,
)
from loraplane.api.common import quantity_bytes
from loraplane.builders import naming
from loraplane.merge.inputs import model_key
from loraplane.pod_health import PodProblem, pod_problems
from loraplane.status.conditions import now

Key = tuple[str, str]  # (namespace, name)
Held = tuple[str, str, str]  # (namespace, base model, adapter)
Kicks = frozenset[Key]  # pods whose sync should run now
NO_KICKS: Kicks = frozenset()

GATE = naming.ADAPTERS_READY_GATE
# An adapter's state on one pod, as the pod's sync last found or made it.
PodState = Literal["Pending", "Loading", "Registered", "Failed", "Evicted"]
# A pod state's reason: the pod runs flags from before the spec changed, and waits to be replaced.
WAITS_FOR_ROLLOUT = "WaitsForRollout"


@dataclass(frozen=True)
class Judgement:
    """What a verdict on an adapter's files depends on."""

    source: str  # fingerprint of spec.source
    max_lora_rank: int


@dataclass(frozen=True)
class BaseView:
    namespace: str
    name: str
    uid: str
    max_lora_rank: int
    cap: int | None
    api_key_ref: SecretKeyRef | None
    store_size_limit: int | None = None  # bytes; None: a PersistentVolumeClaim of its own size
    merged: bool = False  # spec.model.merge: its pods serve a merged model, no adapters
    model: str = ""  # what it serves (merge.inputs.model_key): merges need the same model


@dataclass(frozen=True)
class AdapterView:
    namespace: str
    name: str
    base_model: str
    served_name: str
    source: AdapterSource | None  # None: the spec did not parse (spec_error says why)
    priority: int
    created: str
    generation: int
    deleting: bool = False
    spec_error: str | None = None
    refresh: str | None = None
    follow: bool = False  # updatePolicy Follow: changed source files become a new version
    uid: str = ""
    canary: tuple[str, int] | None = None  # spec.canary: (the other adapter, percent to it)

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @cached_property
    def fingerprint(self) -> str | None:
        """Of its source (None: no parsable source); asked for on every status, so kept."""
        return None if self.source is None else fingerprint(self.source, self.refresh)

    @property
    def claim(self) -> tuple[str, str]:
        """Who holds a contested served name: the oldest claimant, then the first by name."""
        return (self.created, self.name)


@dataclass(frozen=True)
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
    problems: tuple[PodProblem, ...] = ()
    created: datetime | None = None
    # --max-lora-rank as the pod's vLLM runs it: during a rollout, an old pod's differs from
    # the spec's (None: not in its arguments)
    max_lora_rank: int | None = None

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    def runtime_changed(self, other: PodView) -> bool:
        """A change the pod's sync must look at (a restart, readiness, a new address)."""
        fields = ("ip", "vllm_container_id", "vllm_ready", "vllm_running", "deleting")
        return any(getattr(self, f) != getattr(other, f) for f in fields)


@dataclass(frozen=True)
class Version:
    judged: Judgement
    path: str
    summary: AdapterSummary
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failure:
    judged: Judgement
    reason: str
    message: str
    # For a too-large adapter, the store size limit it exceeded: a larger store may take it.
    size_limit: int | None = None


@dataclass(slots=True)  # one per adapter per pod: 100,000 in a large fleet
class PodAdapterState:
    state: PodState
    since: datetime = field(default_factory=now)
    last_error: str | None = None
    path: str | None = None  # what vLLM serves under the adapter's name on this pod
    reason: str | None = None  # of last_error, when it is one the base model reports
    # The vLLM container ID that registered the adapter here, kept while the registration is
    # lost (to tell a restart from drift); None: never registered here, or unloaded on purpose.
    registered_in: str | None = None


def serves(st: PodAdapterState | None, version: Version | None) -> bool:
    """The pod serves this version of the adapter."""
    return (
        st is not None
        and st.state == "Registered"
        and version is not None
        and st.path == version.path
    )


def registered_in(
    current: PodAdapterState | None, state: PodState, container: str | None
) -> str | None:
    if state == "Registered":
        return container
    if state == "Evicted":
        return None  # unloaded on purpose: its return is no re-registration
    return current.registered_in if current is not None else None


class PodChange(Enum):
    NEW = "new"
    RUNTIME = "runtime"  # something the sync must look at
    OTHER = "other"


def fingerprint(source: AdapterSource, refresh: str | None) -> str:
    raw = json.dumps([source.to_k8s(), refresh], sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def is_newer(obj: Mapping[str, Any], cached: Mapping[str, Any] | None) -> bool:
    """Our write's answer and the watch can arrive in either order: keep the later version."""
    if cached is None:
        return True
    try:
        return int(obj["metadata"]["resourceVersion"]) > int(cached["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):  # resourceVersion is opaque in theory
        return obj != cached


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta = pod["metadata"]
    status = pod.get("status") or {}
    vllm: Mapping[str, Any] = next(
        (
            c
            for c in status.get("containerStatuses") or []
            if c.get("name") == naming.VLLM_CONTAINER
        ),
        {},
    )
    gate = next((c for c in status.get("conditions") or [] if c.get("type") == GATE), None)
    running = "running" in (vllm.get("state") or {})
    return PodView(
        namespace=meta["namespace"],
        name=meta["name"],
        base_model=(meta.get("labels") or {}).get(naming.LABEL_BASE_MODEL, ""),
        ip=status.get("podIP"),
        vllm_container_id=vllm.get("containerID"),
        vllm_ready=bool(vllm.get("ready")) and running,
        vllm_running=running,
        deleting=bool(meta.get("deletionTimestamp"))
        or status.get("phase") in ("Succeeded", "Failed"),
        gate=None if gate is None else gate.get("status") == "True",
        problems=tuple(pod_problems(pod)),
        created=_timestamp(meta.get("creationTimestamp")),
        max_lora_rank=_max_lora_rank(pod),
    )


def _max_lora_rank(pod: Mapping[str, Any]) -> int | None:
    """The vLLM container's --max-lora-rank, as the builder renders it (flag, then value)."""
    containers = (pod.get("spec") or {}).get("containers") or []
    vllm: Mapping[str, Any] = next(
        (c for c in containers if c.get("name") == naming.VLLM_CONTAINER), {}
    )
    args = [str(a) for a in vllm.get("args") or []]
    for flag, value in itertools.pairwise(args):
        if flag == "--max-lora-rank" and value.isdigit():
            return int(value)
    return None


def _timestamp(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def adapter_view(obj: Mapping[str, Any]) -> AdapterView:
    meta = obj["metadata"]
    common = {
        "namespace": meta["namespace"],
        "name": meta["name"],
        "created": meta.get("creationTimestamp") or "",
        "generation": int(meta.get("generation") or 0),
        "deleting": bool(meta.get("deletionTimestamp")),
        "uid": meta.get("uid") or "",
    }
    try:
        parsed = LoRAAdapter.from_k8s({"metadata": meta, "spec": obj.get("spec") or {}})
    except ValueError as exc:  # pydantic's ValidationError among them
        # The CRD's schema should have refused it; say so in status instead of crashing.
        spec = obj.get("spec") or {}
        return AdapterView(
            base_model=str(spec.get("baseModel") or ""),
            served_name=str(spec.get("servedName") or meta["name"]),
            source=None,
            priority=0,
            spec_error=str(exc),
            **common,
        )
    return AdapterView(
        base_model=parsed.spec.base_model,
        served_name=parsed.served_name,
        source=parsed.spec.source,
        priority=parsed.spec.priority,
        refresh=parsed.spec.refresh,
        follow=parsed.spec.update_policy == "Follow",
        canary=(
            (parsed.spec.canary.adapter, parsed.spec.canary.weight) if parsed.spec.canary else None
        ),
        **common,
    )


def base_view(obj: Mapping[str, Any]) -> BaseView | None:
    """None when the spec does not parse: the base model's reconcile reports that."""
    meta = obj["metadata"]
    try:
        spec = BaseModelDeploymentSpec.from_k8s(obj.get("spec") or {})
    except ValueError:  # pydantic's ValidationError among them
        return None
    return BaseView(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid") or "",
        max_lora_rank=spec.lora.max_lora_rank,
        cap=spec.lora.max_adapters_per_replica,
        api_key_ref=spec.engine.api_key_secret_ref,
        store_size_limit=(
            quantity_bytes(spec.adapter_store.empty_dir.size_limit)
            if spec.adapter_store.empty_dir is not None
            else None
        ),
        merged=spec.model.merge is not None,
        model=model_key(spec),
    )

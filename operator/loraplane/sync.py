"""Per-pod convergence: the adapters a pod should serve vs what its vLLM lists, then load/unload.

The only module that talks to vLLM servers and agents. One run costs one `GET /v1/models` when
nothing changed. It is level-based: whatever happened before (a vLLM restart, a lost load, an
operator restart), the run brings the pod to the desired set and records in the fleet what it
found and did. The parts (`plan`, `ensure_loaded`, `unload`, `publish`) stand alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loraplane import kube, metrics, trace
from loraplane.adapters.inspect import AdapterInspectionError
from loraplane.adapters.sources import SourceUnavailable, inspect_huggingface
from loraplane.adapters.sources.credentials import (
    HuggingFaceCredentials,
    MissingSecret,
    SourceCredentials,
    read_credentials,
)
from loraplane.adapters.validate import BaseModelFacts, errors, validate
from loraplane.agent.client import (
    AdapterRejectedByAgent,
    AgentClient,
    AgentError,
    VersionUnavailable,
)
from loraplane.agent.protocol import Fetched, FetchRequest
from loraplane.builders import naming
from loraplane.fleet import (
    GATE,
    WAITS_FOR_ROLLOUT,
    AdapterView,
    BaseView,
    Fleet,
    Judgement,
    Key,
    PodAdapterState,
    PodView,
    Version,
)
from loraplane.placement import Placement
from loraplane.status.conditions import now_rfc3339
from loraplane.vllm.client import VLLMClient
from loraplane.vllm.errors import VLLMError
from loraplane.workers import ServerStarting

if TYPE_CHECKING:
    from loraplane.runtime import Runtime

log = logging.getLogger(__name__)

Registered = Mapping[str, str | None]  # served name -> path, as /v1/models lists them


class PodNotReachable(Exception):
    """The pod's servers did not answer: a transient state, retried by the worker."""


@dataclass(frozen=True)
class Unload:
    served_name: str
    adapter: str  # the LoRAAdapter's name, or the served name of a registration nobody owns
    reason: str  # deleted, capacity, renamed, failed, orphan


@dataclass(frozen=True)
class Plan:
    wanted: tuple[AdapterView, ...]
    unloads: tuple[Unload, ...]
    displaced: tuple[str, ...]


def store_versions(paths: Iterable[str | None]) -> dict[str, str]:
    """{adapter dir: version dir} of every path under the adapter store."""
    return dict(entry for path in paths if (entry := naming.store_entry(path)) is not None)


def plan(fleet: Fleet, base: BaseView, registered: Registered) -> Plan:
    """What one pod of `base` should serve, and which of its registrations go. Pure."""
    placement = fleet.placement(base.namespace, base.name)
    wanted = tuple(fleet.adapters[(base.namespace, n)] for n in placement.placed)
    keep = {a.served_name for a in wanted}
    unloads: list[Unload] = []
    for served in sorted(set(registered) - keep):
        # Whose files these are, by path: a served name may be claimed by several adapters.
        name = next(iter(store_versions([registered[served]])), None)
        if name is None:
            continue  # registered by someone else (e.g. --lora-modules): not ours to remove
        reason = unload_reason(fleet, base.namespace, placement, name, served)
        if reason is not None:
            unloads.append(Unload(served, name, reason))
    return Plan(wanted, tuple(unloads), placement.displaced)


def unload_reason(
    fleet: Fleet, namespace: str, placement: Placement, name: str, served: str
) -> str | None:
    """Why adapter `name`'s registration under `served` goes; None: it stays."""
    owner = fleet.adapters.get((namespace, name))
    if owner is None:
        return "orphan"
    if owner.deleting:
        return "deleted"
    if owner.name in placement.displaced:
        return "capacity"
    if owner.served_name != served:
        return "renamed"
    if fleet.failure(owner.key) is not None:
        return None  # its new version was rejected: the one registered before keeps serving
    return "failed"


async def vllm_client(rt: Runtime, pod: PodView, base: BaseView) -> VLLMClient:
    cfg = rt.settings
    api_key = None
    if base.api_key_ref is not None:
        api_key = await rt.secrets.value(pod.namespace, base.api_key_ref.name, base.api_key_ref.key)
    return VLLMClient(
        f"http://{pod.ip}:{cfg.vllm_port}",
        api_key,
        rt.session,
        timeout=cfg.request_timeout_seconds,
        load_timeout=cfg.load_timeout_seconds,
    )


async def agent_client(rt: Runtime, pod: PodView, base: BaseView) -> AgentClient:
    token = await rt.secrets.value(
        pod.namespace, naming.agent_secret_name(base.name), naming.AGENT_TOKEN_KEY
    )
    if not token:
        rt.fleet.lost_agent_secret(base)
        raise PodNotReachable(f"the agent token Secret of {base.name} is missing")
    url = f"http://{pod.ip}:{rt.settings.agent_port}"
    return AgentClient(url, token, rt.session, timeout=rt.settings.agent_timeout_seconds)


def peers(rt: Runtime, pod: PodView, ad: AdapterView, version: Version) -> list[str]:
    """Agents of the other pods that serve the pinned version, so hold it in their store."""
    port = rt.settings.agent_port
    return [
        f"http://{p.ip}:{port}"
        for p in rt.fleet.pods_of(pod.namespace, pod.base_model)
        if p.name != pod.name
        and p.ip
        and (st := rt.fleet.state(p.key, ad.name)) is not None
        and st.path == version.path
    ]


async def fetch_request(
    rt: Runtime,
    pod: PodView,
    ad: AdapterView,
    judged: Judgement,
    pinned: Version | None,
    credentials: SourceCredentials | None,
) -> FetchRequest:
    assert ad.source is not None  # placement leaves out adapters whose spec did not parse
    base = rt.fleet.bases.get((ad.namespace, ad.base_model))
    return FetchRequest(
        name=ad.name,
        source=ad.source,
        credentials=credentials,
        size_limit_bytes=base.store_size_limit if base is not None else None,
        max_lora_rank=judged.max_lora_rank,
        base_model=ad.base_model,
        expected_digest=pinned.summary.digest if pinned else None,
        peers=peers(rt, pod, ad, pinned) if pinned else [],
        follow=ad.follow,
        pickled_adapters=rt.settings.pickled_adapters,
    )


@dataclass(frozen=True)
class PodContext:
    """One run's view of one pod: who it is and how to reach its servers."""

    pod: PodView
    base: BaseView
    vllm: VLLMClient
    agent: AgentClient
    registered: Registered  # what the run's `GET /v1/models` listed
    # what the run's own loads and unloads changed: served name -> path (None: unloaded)
    changed: dict[str, str | None] = field(default_factory=dict)

    def now(self) -> dict[str, str | None]:
        """What the pod serves after the run: vLLM answered each load and unload, so no second
        listing is needed; the next run's lists it anyway."""
        out = {**self.registered, **self.changed}
        return {n: p for n, p in out.items() if n not in self.changed or p is not None}


async def ensure_loaded(rt: Runtime, pc: PodContext, ad: AdapterView) -> bool:
    """Bring one adapter's current version onto the pod. True when a registration changed."""
    fleet = rt.fleet
    current = pc.registered.get(ad.served_name)
    judged = fleet.judgement(ad.key)
    if judged is None or kept(rt, pc, ad):
        return False
    pinned = fleet.version(ad.key)
    if pinned is not None and outranked(rt, pc, ad, pinned):
        return False
    serving = pinned is not None and current == pinned.path
    if not serving:
        fleet.set_state(pc.pod.key, ad.name, "Loading", path=current)
    async with rt.loads:
        with metrics.WORK_IN_FLIGHT.labels("adapter_load").track_inprogress():
            fetched = await fetch(rt, pc, ad, judged, pinned, serving)
            if fetched is None:
                return False
            version = Version(judged, fetched.path, fetched.summary, tuple(fetched.warnings))
            kicks = fleet.record_version(ad.key, judged, version)
            if kicks is None:
                # The spec moved on, or another pod pinned other files first: look again now.
                rt.kick([pc.pod.key])
                return False
            rt.kick(kicks - {pc.pod.key})
            if current == fetched.path:
                registered(rt, pc, ad, current)
                return False
            if outranked(rt, pc, ad, version):
                return False
            return await load(rt, pc, ad, judged, fetched.path)


def outranked(rt: Runtime, pc: PodContext, ad: AdapterView, version: Version) -> bool:
    """The pod's vLLM still runs a --max-lora-rank below the adapter's, from before the spec
    raised it: its refusal would be no verdict, so it is not asked; the rollout replaces it."""
    flag, rank = pc.pod.max_lora_rank, version.summary.rank  # the largest of any module
    if flag is None or rank is None or flag >= rank:
        return False
    message = (
        f"this pod's vLLM runs --max-lora-rank {flag}, below the adapter's rank {rank}, from "
        f"before maxLoraRank became {version.judged.max_lora_rank}; it is loaded on the pod "
        "that the rollout puts in its place"
    )
    current = pc.registered.get(ad.served_name)
    rt.fleet.set_state(pc.pod.key, ad.name, "Loading", message, current, WAITS_FOR_ROLLOUT)
    return True


def kept(rt: Runtime, pc: PodContext, ad: AdapterView) -> bool:
    """The pod serves the adapter's pinned version and no newer one is looked for: recorded,
    with nothing to fetch or load."""
    pinned = rt.fleet.version(ad.key)
    path = pc.registered.get(ad.served_name)
    if ad.follow or pinned is None or path != pinned.path:
        return False
    registered(rt, pc, ad, path)
    return True


def registered(rt: Runtime, pc: PodContext, ad: AdapterView, path: str | None) -> None:
    rt.fleet.set_state(
        pc.pod.key, ad.name, "Registered", path=path, container=pc.pod.vllm_container_id
    )


async def fetch(
    rt: Runtime,
    pc: PodContext,
    ad: AdapterView,
    judged: Judgement,
    pinned: Version | None,
    serving: bool,
) -> Fetched | None:
    """The agent's verified copy of the pinned (or, following, the newest) version.

    None when the agent rejected the files. Serving already, a following adapter's fetch only
    looks for new files: its failures are not failed loads.
    """
    fleet, pkey = rt.fleet, pc.pod.key
    labels = (ad.namespace, pc.base.name, ad.name)
    current = pc.registered.get(ad.served_name)
    assert ad.source is not None  # placement leaves out adapters whose spec did not parse
    try:
        credentials = await read_credentials(rt.secrets.value, ad.namespace, ad.source)
    except MissingSecret as exc:
        state = "Registered" if serving else "Loading"
        fleet.set_state(pkey, ad.name, state, f"SecretNotFound: {exc}", current, "SecretNotFound")
        raise
    if pinned is None and not await preflight(rt, pc, ad, judged, credentials):
        return None
    request = await fetch_request(rt, pc.pod, ad, judged, pinned, credentials)
    started = time.monotonic()
    try:
        with trace.span("fetch", pod=pc.pod.name, adapter=ad.name):
            fetched = await pc.agent.fetch(request)
    except AdapterRejectedByAgent as exc:
        metrics.ADAPTER_LOADS.labels(*labels, "rejected").inc()
        rt.kick(fleet.record_failure(ad.key, judged, exc.reason, exc.message))
        fleet.set_state(pkey, ad.name, "Failed", exc.message, path=current)
        return None
    except VersionUnavailable as exc:
        if not serving:
            metrics.ADAPTER_LOADS.labels(*labels, "error").inc()
        state = "Registered" if serving else "Loading"
        error = f"{exc.reason}: {exc.message}"
        container = pc.pod.vllm_container_id
        fleet.set_state(pkey, ad.name, state, error, current, exc.reason, container)
        raise
    except AgentError as exc:
        if not serving:
            metrics.ADAPTER_LOADS.labels(*labels, "error").inc()
        fleet.set_state(pkey, ad.name, "Loading", f"agent: {exc}", path=current)
        raise
    if not serving or fetched.path != current:
        metrics.FETCH_SECONDS.labels(*labels).observe(time.monotonic() - started)
    return fetched


async def preflight(
    rt: Runtime,
    pc: PodContext,
    ad: AdapterView,
    judged: Judgement,
    credentials: SourceCredentials | None,
) -> bool:
    """The operator's own look at a huggingface adapter (its config and safetensors header)
    before any pod downloads it; False when that already refuses it. Once per judgement; a hub
    that cannot be reached leaves the verdict to the agents."""
    assert ad.source is not None
    hf = ad.source.huggingface
    if hf is None or rt.preflights.get(ad.key) == judged:
        return True
    token = credentials if isinstance(credentials, HuggingFaceCredentials) else None
    try:
        summary = await asyncio.to_thread(
            inspect_huggingface, hf, token, rt.settings.source_context()
        )
    except SourceUnavailable as exc:
        log.info("pre-flight of %s/%s skipped: %s", ad.namespace, ad.name, exc.message)
        return True
    except AdapterInspectionError as exc:
        reason, message = str(exc.reason), exc.message
    else:
        facts = BaseModelFacts(max_lora_rank=judged.max_lora_rank, deployment=ad.base_model)
        bad = errors(validate(summary, facts, pickled_adapters=rt.settings.pickled_adapters))
        rt.preflights[ad.key] = judged
        if not bad:
            return True
        reason, message = str(bad[0].reason), "; ".join(f.message for f in bad)
    labels = (ad.namespace, pc.base.name, ad.name)
    metrics.ADAPTER_LOADS.labels(*labels, "rejected").inc()
    rt.kick(rt.fleet.record_failure(ad.key, judged, reason, message))
    rt.fleet.set_state(
        pc.pod.key, ad.name, "Failed", message, path=pc.registered.get(ad.served_name)
    )
    return False


async def load(rt: Runtime, pc: PodContext, ad: AdapterView, judged: Judgement, path: str) -> bool:
    """Register `path` under the adapter's served name: True when vLLM did; False when it
    refused the files; raises what is worth a retry."""
    fleet, pkey = rt.fleet, pc.pod.key
    labels = (ad.namespace, pc.base.name, ad.name)
    current = pc.registered.get(ad.served_name)
    started = time.monotonic()
    try:
        # A new version under a registered name is swapped in place: vLLM loads the new
        # weights first, then replaces the old ones, so no request sees a missing adapter.
        with trace.span("load", pod=pc.pod.name, adapter=ad.name):
            await pc.vllm.load_adapter(ad.served_name, path, inplace=current is not None)
    except VLLMError as exc:
        if exc.permanent:
            metrics.ADAPTER_LOADS.labels(*labels, "rejected").inc()
            verdict = fleet.judged_on(pc.pod, judged)
            rt.kick(fleet.record_failure(ad.key, verdict, str(exc.reason), exc.message))
            fleet.set_state(pkey, ad.name, "Failed", exc.message, path=current)
            return False
        metrics.ADAPTER_LOADS.labels(*labels, "error").inc()
        fleet.set_state(pkey, ad.name, "Loading", f"{exc.reason}: {exc.message}", current)
        raise
    pc.changed[ad.served_name] = path
    metrics.VLLM_LOAD_SECONDS.labels(*labels).observe(time.monotonic() - started)
    metrics.ADAPTER_LOADS.labels(*labels, "success").inc()
    if current is not None:
        replaced(rt, pc, ad, current)
    fleet.record_load(pc.pod, ad, path, replaced=current)
    return True


def replaced(rt: Runtime, pc: PodContext, ad: AdapterView, path: str) -> None:
    """Count the registration an in-place load replaced as its owner's unload."""
    owner = next(iter(store_versions([path])), None)
    if owner is None:
        return  # not from our store (e.g. --lora-modules): not ours to count
    ns = pc.pod.namespace
    placement = rt.fleet.placement(ns, pc.base.name)
    reason = (
        "new_version"
        if owner == ad.name
        else unload_reason(rt.fleet, ns, placement, owner, ad.served_name)
    )
    if reason is not None:
        label = owner if reason != "orphan" else ""
        metrics.ADAPTER_UNLOADS.labels(pc.pod.namespace, pc.base.name, label, reason).inc()


async def unload(rt: Runtime, pc: PodContext, step: Unload) -> None:
    await pc.vllm.unload_adapter(step.served_name)
    pc.changed[step.served_name] = None
    # An orphan's adapter is gone: a series in its name would outlive it.
    label = "" if step.reason == "orphan" else step.adapter
    labels = (pc.pod.namespace, pc.base.name, label)
    metrics.ADAPTER_UNLOADS.labels(*labels, step.reason).inc()
    if step.reason == "capacity":
        metrics.ADAPTER_EVICTIONS.labels(*labels, "server", "capacity").inc()
        rt.fleet.set_state(pc.pod.key, step.adapter, "Evicted", "CapacityExceeded")
    else:
        rt.fleet.clear_state(pc.pod.key, step.adapter)


async def publish(
    rt: Runtime, pc: PodContext, wanted: Iterable[AdapterView], now: Registered
) -> None:
    """Tell the agent what the pod must serve and which files to keep; open or close the gate."""
    fleet = rt.fleet
    wanted = list(wanted)
    serving = sorted(
        a.served_name
        for a in wanted
        if (st := fleet.state(pc.pod.key, a.name)) is not None and st.state == "Registered"
    )
    # Files may go only when no registered name points at them: vLLM re-reads an evicted
    # adapter from its path, and dies when the files are gone (DESIGN.md §4).
    keep = store_versions(now.values())
    told = hashlib.sha256(json.dumps([serving, sorted(keep.items())]).encode()).hexdigest()
    if fleet.agent_told.get(pc.pod.key) != told:
        with trace.span("tell_agent", pod=pc.pod.name, required=len(serving)):
            await pc.agent.set_required(serving)
            await pc.agent.prune(keep)
        fleet.told_agent(pc.pod.key, told)
    settled = all(settled_on(fleet.state(pc.pod.key, a.name)) for a in wanted)
    await set_gate(rt, pc.pod, settled, f"{len(serving)}/{len(wanted)} adapters registered")


async def read_residency(rt: Runtime, pc: PodContext, changed: bool) -> None:
    """Where the engine holds each adapter now, for the status: after the pod's registrations
    `changed`, else at most every residency interval, so a converged pod's resync within it
    costs nothing more than its `GET /v1/models`."""
    read = rt.fleet.residency_read.get(pc.pod.key)
    started = time.monotonic()
    if not changed and read is not None and started - read < rt.settings.residency_interval_seconds:
        return
    try:
        with trace.span("residency", pod=pc.pod.name):
            residency = await pc.agent.residency()
    except AgentError as exc:
        log.debug("%s: no residency from its agent: %s", pc.pod.name, exc)
        residency = None
    tiers = residency.tiers if residency is not None and residency.available else None
    rt.fleet.record_residency(pc.pod.key, tiers, started)


def settled_on(st: PodAdapterState | None) -> bool:
    """Whether an adapter lets its pod take traffic: registered, refused, or waiting on its
    source (a wrong key, a missing Secret, a server down: retried, but nothing this pod can
    change, and the pod's other adapters must keep serving meanwhile)."""
    if st is None:
        return False
    return st.state in ("Registered", "Failed") or (st.state == "Loading" and st.reason is not None)


async def set_gate(rt: Runtime, pod: PodView, ready: bool, message: str) -> None:
    if pod.gate is ready:
        return
    condition = {
        "type": GATE,
        "status": "True" if ready else "False",
        "reason": "AdaptersRegistered" if ready else "AdaptersLoading",
        "message": message,
        "lastTransitionTime": now_rfc3339(),
    }
    body = {"status": {"conditions": [condition]}}
    with trace.span("gate", pod=pod.name, ready=int(ready)):
        await kube.patch_status(rt.api, "v1", "Pod", pod.namespace, pod.name, body)
    rt.fleet.gate_set(pod.key, ready)


async def _not_ready(rt: Runtime, pod: PodView) -> None:
    """A restarted vLLM lost every runtime registration: say so in status rather than keep
    reporting what was true before, and keep the pod out of the Service until it is back."""
    rt.fleet.lost_registrations(pod.key)
    await set_gate(rt, pod, False, "vLLM is not ready; adapters are registered once it is")


async def sync_pod(rt: Runtime, key: Key) -> bool:
    """Converge one pod; False once the pod is gone. Raises on transient trouble (retried)."""
    fleet = rt.fleet
    pod = fleet.pods.get(key)
    if pod is None:
        return False
    base = fleet.bases.get((pod.namespace, pod.base_model))
    if base is None or pod.deleting or not pod.ip:
        return True
    if not pod.vllm_ready:
        await _not_ready(rt, pod)
        if not pod.vllm_running:
            return True
    vllm = await vllm_client(rt, pod, base)
    if not pod.vllm_ready and not await vllm.health():
        # Ask the server itself rather than wait a probe period: its adapters go back the
        # moment it answers.
        raise ServerStarting(pod.name)
    with metrics.pod_sync(pod.namespace, base.name), trace.span("sync", pod=pod.name):
        await converge(rt, pod, base, vllm)
    return True


async def converge(rt: Runtime, pod: PodView, base: BaseView, vllm: VLLMClient) -> None:
    """List what the pod's vLLM serves, then load and unload until it serves its plan."""
    fleet, key = rt.fleet, pod.key
    try:
        with trace.span("list", pod=pod.name):
            registered = (await vllm.list_models()).adapter_paths
    except VLLMError as exc:
        raise PodNotReachable(f"{pod.name}: {exc.message}") from exc
    # Known before any agent call: a pod whose agent is down still has its status told.
    fleet.record_registrations(key, registered)
    agent = await agent_client(rt, pod, base)
    pc = PodContext(pod, base, vllm, agent, registered)
    steps = plan(fleet, base, registered)

    # Settled adapters first, without a task each: a converged pod's pass over a thousand
    # of them would otherwise cost a thousand tasks.
    todo = iter([a for a in steps.wanted if not kept(rt, pc, a)])
    errors: list[BaseException] = []

    async def worker() -> None:
        # A few workers taking adapters in plan order, not a task per adapter waiting on a
        # semaphore: a cold fleet of 100 pods x 1,000 adapters held 100,000 tasks at once.
        for ad in todo:
            try:
                await ensure_loaded(rt, pc, ad)
            except (VLLMError, AgentError, MissingSecret) as exc:
                errors.append(exc)

    await asyncio.gather(*(worker() for _ in range(rt.settings.load_concurrency_per_pod)))
    for step in steps.unloads:
        await unload(rt, pc, step)
    for name in steps.displaced:
        if fleet.state(key, name) is None:
            fleet.set_state(key, name, "Evicted", "CapacityExceeded")
    for name in fleet.name_losers(pod.namespace, base.name):
        # Another adapter holds its served name: whatever this one had here is not served.
        fleet.clear_state(key, name)
    now = pc.now()
    fleet.record_registrations(key, now)
    await publish(rt, pc, steps.wanted, now)
    await read_residency(rt, pc, changed=bool(pc.changed))
    if errors:
        raise PodNotReachable(f"{pod.name}: {len(errors)} adapter(s) failed to load: {errors[0]}")

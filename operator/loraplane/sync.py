"""Per-pod convergence: the adapters a pod should serve vs what its vLLM lists, then load/unload.

The only module that talks to vLLM servers and agents. One run costs one `GET /v1/models` when
nothing changed. It is level-based: whatever happened before (a vLLM restart, a lost load, an
operator restart), the run brings the pod to the desired set and records in the fleet what it
found and did. The parts (`plan`, `register`, `unload`, `publish`) stand alone. Registrations
go through the pod's agent, one apply for all of a pod's adapters: it fetches, verifies and
loads into its own vLLM on loopback, so the operator's share of a registration is its record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
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
from loraplane.agent import protocol
from loraplane.agent.client import AgentClient, AgentError, AgentUnauthorized
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
    PodState,
    PodView,
    Version,
)
from loraplane.placement import Placement
from loraplane.status.conditions import now_rfc3339
from loraplane.vllm.client import ENDPOINTS, LOAD_PATH, VLLMClient
from loraplane.vllm.errors import VLLMError
from loraplane.workers import ServerStarting

if TYPE_CHECKING:
    from loraplane.runtime import Runtime

log = logging.getLogger(__name__)

Registered = Mapping[str, str | None]  # served name -> path, as /v1/models lists them


class PodNotReachable(Exception):
    """The pod's servers did not answer: a transient state, retried by the worker."""


class AdaptersNotLoaded(Exception):
    """Some adapters met trouble worth a retry (the others went on): the worker runs again."""


class SourceNotReadable(Exception):
    """The agent could read neither the source nor a peer's copy of the pinned version."""


class LoadNotDone(Exception):
    """vLLM failed a load for a reason that is not the adapter's (retried)."""


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


def forget_agent_token(rt: Runtime, pod: PodView, base: BaseView) -> None:
    """The pod's agent refused the token as cached: the next run reads the Secret again."""
    secret = naming.agent_secret_name(base.name)
    rt.secrets.forget(pod.namespace, secret, naming.AGENT_TOKEN_KEY)


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


def apply_item(
    rt: Runtime,
    pc: PodContext,
    ad: AdapterView,
    judged: Judgement,
    pinned: Version | None,
    credentials: SourceCredentials | None,
) -> protocol.ApplyItem:
    assert ad.source is not None  # placement leaves out adapters whose spec did not parse
    return protocol.ApplyItem(
        name=ad.name,
        source=ad.source,
        credentials=credentials,
        size_limit_bytes=pc.base.store_size_limit,
        max_lora_rank=judged.max_lora_rank,
        base_model=ad.base_model,
        expected_digest=pinned.summary.digest if pinned else None,
        peers=peers(rt, pc.pod, ad, pinned) if pinned else [],
        follow=ad.follow,
        pickled_adapters=rt.settings.pickled_adapters,
        served_name=ad.served_name,
        load=pinned is not None,
        registered_path=pc.registered.get(ad.served_name),
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
    # trouble worth a retry of the whole run, met on some adapters while the others went on
    errors: list[Exception] = field(default_factory=list)

    def now(self) -> dict[str, str | None]:
        """What the pod serves after the run: vLLM answered each load and unload, so no second
        listing is needed; the next run's lists it anyway."""
        out = {**self.registered, **self.changed}
        return {n: p for n, p in out.items() if n not in self.changed or p is not None}


@dataclass(frozen=True)
class Asked:
    """One adapter of an apply, with what its answer is judged against."""

    ad: AdapterView
    judged: Judgement
    pinned: Version | None
    serving: bool  # the pod serves the pinned version already (a following adapter's look)
    fetched: bool = False  # fetched by an earlier round of this run: its time was counted


# Empty lines the agent sends within agent_timeout_seconds while it works: a few, so one late
# by scheduling is no hang.
HEARTBEATS = 4
# Rounds of one run: the first fetches what is not pinned yet, the second loads what it pinned;
# a third only when a following adapter's source moved in between. More waits for the next run.
ROUNDS = 3


async def register(rt: Runtime, pc: PodContext, adapters: Iterable[AdapterView]) -> None:
    """Bring each adapter's current version onto the pod through its agent, a batch at a time:
    one apply per round for each batch. Trouble worth a retry lands in `pc.errors`, the others
    go on."""
    wanted, size = list(adapters), rt.settings.agent_apply_batch
    for start in range(0, len(wanted), size):
        await register_batch(rt, pc, wanted[start : start + size])


async def register_batch(rt: Runtime, pc: PodContext, adapters: list[AdapterView]) -> None:
    todo, fetched = adapters, False
    for _ in range(ROUNDS):
        asked: dict[str, Asked] = {}
        items: list[protocol.ApplyItem] = []
        for ad in todo:
            if (ask := await asking(rt, pc, ad)) is not None:
                asked[ad.name], item = replace(ask[0], fetched=fetched), ask[1]
                items.append(item)
        if not items:
            return
        todo, fetched = await apply(rt, pc, asked, items), True


async def asking(
    rt: Runtime, pc: PodContext, ad: AdapterView
) -> tuple[Asked, protocol.ApplyItem] | None:
    """What to ask the agent for this adapter; None: nothing (settled, or refused already)."""
    fleet = rt.fleet
    judged = fleet.judgement(ad.key)
    if judged is None or kept(rt, pc, ad):
        return None
    pinned = fleet.version(ad.key)
    if pinned is not None and outranked(rt, pc, ad, pinned):
        return None
    current = pc.registered.get(ad.served_name)
    serving = pinned is not None and current == pinned.path
    if not serving:
        fleet.set_state(pc.pod.key, ad.name, "Loading", path=current)
    assert ad.source is not None  # placement leaves out adapters whose spec did not parse
    try:
        credentials = await read_credentials(rt.secrets.value, ad.namespace, ad.source)
    except MissingSecret as exc:
        state: PodState = "Registered" if serving else "Loading"
        error = f"SecretNotFound: {exc}"
        fleet.set_state(pc.pod.key, ad.name, state, error, current, "SecretNotFound")
        pc.errors.append(exc)
        return None
    if pinned is None and not await preflight(rt, pc, ad, judged, credentials):
        return None
    item = apply_item(rt, pc, ad, judged, pinned, credentials)
    return Asked(ad, judged, pinned, serving), item


async def apply(
    rt: Runtime, pc: PodContext, asked: dict[str, Asked], items: list[protocol.ApplyItem]
) -> list[AdapterView]:
    """One apply; returns the adapters it pinned a version of, to load in the next round."""
    cfg = rt.settings
    request = protocol.ApplyRequest(
        adapters=items,
        concurrency=cfg.load_concurrency_per_pod,
        load_timeout_seconds=cfg.load_timeout_seconds,
        # Lines (or the agent's empty ones) at least this often, or it hangs: given up on
        # after agent_timeout_seconds, as a fetch was.
        heartbeat_seconds=cfg.agent_timeout_seconds / HEARTBEATS,
    )
    again: list[AdapterView] = []
    try:
        with (
            metrics.WORK_IN_FLIGHT.labels("agent_apply").track_inprogress(),
            trace.span("apply", pod=pc.pod.name, adapters=len(items)),
        ):
            async for result in pc.agent.apply(request, cfg.agent_timeout_seconds):
                ask = asked.pop(result.name, None)
                if ask is not None and answered(rt, pc, ask, result):
                    again.append(ask.ad)
    except AgentError as exc:
        if isinstance(exc, AgentUnauthorized):
            forget_agent_token(rt, pc.pod, pc.base)
        for ask in asked.values():  # those it did not answer before it failed
            unanswered(rt, pc, ask, f"agent: {exc}")
        pc.errors.append(exc)
    return again


def unanswered(rt: Runtime, pc: PodContext, ask: Asked, error: str) -> None:
    ad = ask.ad
    if not ask.serving:
        metrics.ADAPTER_LOADS.labels(ad.namespace, pc.base.name, ad.name, "error").inc()
    current = pc.registered.get(ad.served_name)
    rt.fleet.set_state(pc.pod.key, ad.name, "Loading", error, path=current)


def answered(rt: Runtime, pc: PodContext, ask: Asked, result: protocol.Applied) -> bool:
    """Record what the agent did with one adapter; True: its version is pinned now and the
    agent only fetched it, so the next round loads it."""
    fleet, pkey, ad = rt.fleet, pc.pod.key, ask.ad
    labels = (ad.namespace, pc.base.name, ad.name)
    current = pc.registered.get(ad.served_name)
    if result.rejected is not None:
        metrics.ADAPTER_LOADS.labels(*labels, "rejected").inc()
        reason, message = result.rejected.reason, result.rejected.message
        rt.kick(fleet.record_failure(ad.key, ask.judged, reason, message))
        fleet.set_state(pkey, ad.name, "Failed", message, path=current)
        return False
    if result.unavailable is not None:
        if not ask.serving:
            metrics.ADAPTER_LOADS.labels(*labels, "error").inc()
        reason, message = result.unavailable.reason, result.unavailable.message
        state: PodState = "Registered" if ask.serving else "Loading"
        container = pc.pod.vllm_container_id
        fleet.set_state(pkey, ad.name, state, f"{reason}: {message}", current, reason, container)
        pc.errors.append(SourceNotReadable(f"{ad.name}: {reason}: {message}"))
        return False
    if result.fetched is None:
        unanswered(rt, pc, ask, f"agent: {result.error or 'no answer'}")
        pc.errors.append(AgentError(f"{ad.name}: {result.error}"))
        return False
    fetched = result.fetched
    # Timed once per version a pod takes in: not again in the round that loads what it pinned.
    took = result.fetch_seconds
    if took is not None and not ask.fetched and (not ask.serving or fetched.path != current):
        metrics.FETCH_SECONDS.labels(*labels).observe(took)
    version = Version(ask.judged, fetched.path, fetched.summary, tuple(fetched.warnings))
    kicks = fleet.record_version(ad.key, ask.judged, version)
    if kicks is None:
        # The spec moved on, or another pod pinned other files first: look again now.
        rt.kick([pkey])
        return False
    rt.kick(kicks - {pkey})
    if current == fetched.path:
        registered(rt, pc, ad, current)
        return False
    if outranked(rt, pc, ad, version):
        return False
    if result.loaded:
        loaded(rt, pc, ad, fetched.path, result.load_seconds)
    elif result.load_failure is not None:
        load_failed(rt, pc, ask, result.load_failure)
    else:
        return True
    return False


def loaded(rt: Runtime, pc: PodContext, ad: AdapterView, path: str, seconds: float | None) -> None:
    """The agent registered `path` under the adapter's served name (in place of what was
    there: vLLM loads the new weights first, so no request sees a missing adapter)."""
    labels = (ad.namespace, pc.base.name, ad.name)
    current = pc.registered.get(ad.served_name)
    pc.changed[ad.served_name] = path
    metrics.VLLM_API_CALLS.labels(ENDPOINTS[LOAD_PATH]).inc()
    if seconds is not None:
        metrics.VLLM_LOAD_SECONDS.labels(*labels).observe(seconds)
    metrics.ADAPTER_LOADS.labels(*labels, "success").inc()
    if current is not None:
        replaced(rt, pc, ad, current)
    rt.fleet.record_load(pc.pod, ad, path, replaced=current)


def load_failed(rt: Runtime, pc: PodContext, ask: Asked, failure: protocol.LoadFailure) -> None:
    """vLLM refused the files (a verdict, on every pod alike) or failed to load them (retried)."""
    fleet, ad = rt.fleet, ask.ad
    labels = (ad.namespace, pc.base.name, ad.name)
    current = pc.registered.get(ad.served_name)
    metrics.VLLM_API_CALLS.labels(ENDPOINTS[LOAD_PATH]).inc()
    metrics.VLLM_API_ERRORS.labels(ENDPOINTS[LOAD_PATH], failure.error_class).inc()
    if failure.permanent:
        metrics.ADAPTER_LOADS.labels(*labels, "rejected").inc()
        verdict = fleet.judged_on(pc.pod, ask.judged)
        rt.kick(fleet.record_failure(ad.key, verdict, failure.reason, failure.message))
        fleet.set_state(pc.pod.key, ad.name, "Failed", failure.message, path=current)
        return
    metrics.ADAPTER_LOADS.labels(*labels, "error").inc()
    error = f"{failure.reason}: {failure.message}"
    fleet.set_state(pc.pod.key, ad.name, "Loading", error, current)
    pc.errors.append(LoadNotDone(f"{ad.name}: {error}"))


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
    if hf is None or rt.fleet.preflight_passed(ad.key, judged):
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
        rt.fleet.record_preflight(ad.key, judged)
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
        try:
            await converge(rt, pod, base, vllm)
        except AgentUnauthorized:
            forget_agent_token(rt, pod, base)
            raise
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
    if fleet.settled(pod, registered):
        await read_residency(rt, pc, changed=False)
        return
    epoch = fleet.epoch(pod.namespace, base.name)
    steps = plan(fleet, base, registered)
    await register(rt, pc, steps.wanted)
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
    if pc.errors:
        raise AdaptersNotLoaded(
            f"{pod.name}: {len(pc.errors)} adapter(s) not loaded: {pc.errors[0]}"
        )
    fleet.ran_clean(pod, epoch, now)

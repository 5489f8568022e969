"""Per-pod convergence: the adapters a pod should serve vs what its vLLM lists, then load/unload.

One run costs one `GET /v1/models` when nothing changed. It is level-based: whatever happened
before (a vLLM restart, a lost load, an operator restart), the run brings the pod to the desired
set and reports each adapter's state on this pod.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from loraplane import kube, metrics
from loraplane.agent.client import AdapterRejectedByAgent, AgentClient, AgentError
from loraplane.builders import naming
from loraplane.conditions import now_rfc3339
from loraplane.config import Settings
from loraplane.fleet import GATE, AdapterView, BaseView, Failure, Fleet, Key, PodView, Version
from loraplane.vllm.client import VLLMClient
from loraplane.vllm.errors import VLLMError

log = logging.getLogger(__name__)


class PodNotReachable(Exception):
    """The pod's servers did not answer: a transient state, retried by the worker."""


class ServerStarting(Exception):
    """vLLM runs but does not answer /health yet: look again soon, without backing off."""


@dataclass
class SyncContext:
    fleet: Fleet
    api: ApiClient
    session: aiohttp.ClientSession
    settings: Settings
    total_loads: asyncio.Semaphore
    on_adapter_failed: Callable[[Key], None]  # kicks every pod of the adapter's base model


SECRET_TTL = 30.0
_secrets: dict[tuple[str, str, str], tuple[float, str | None]] = {}


async def secret_value(api: ApiClient, namespace: str, name: str, key: str) -> str | None:
    """A Secret's value, cached for SECRET_TTL: every sync needs the agent token and API key."""
    now = time.monotonic()
    cached = _secrets.get((namespace, name, key))
    if cached is not None and now - cached[0] < SECRET_TTL:
        return cached[1]
    secret = await kube.get(api, "v1", "Secret", namespace, name)
    raw = ((secret or {}).get("data") or {}).get(key)
    value = base64.b64decode(raw).decode() if raw else None
    if value is not None:
        _secrets[(namespace, name, key)] = (now, value)
    return value


async def clients(ctx: SyncContext, pod: PodView, base: BaseView) -> tuple[VLLMClient, AgentClient]:
    token = await secret_value(
        ctx.api, pod.namespace, naming.agent_secret_name(base.name), naming.AGENT_TOKEN_KEY
    )
    if not token:
        raise PodNotReachable(f"the agent token Secret of {base.name} is missing")
    api_key = None
    if base.api_key_ref is not None:
        api_key = await secret_value(ctx.api, pod.namespace, *base.api_key_ref)
    timeout = ctx.settings.request_timeout_seconds
    vllm = VLLMClient(
        f"http://{pod.ip}:{ctx.settings.vllm_port}", api_key, ctx.session, timeout=timeout
    )
    agent = AgentClient(
        f"http://{pod.ip}:{ctx.settings.agent_port}", token, ctx.session, timeout=4 * timeout
    )
    return vllm, agent


async def fetch_request(ctx: SyncContext, ad: AdapterView, base: BaseView) -> dict[str, Any]:
    req: dict[str, Any] = {
        "name": ad.name,
        "maxLoraRank": base.max_lora_rank,
        "baseModel": base.name,
    }
    source = ad.source
    if source.get("path"):
        req["path"] = source["path"]
    elif source.get("huggingface"):
        hf = source["huggingface"]
        req["hfRepo"] = hf["repo"]
        req["hfRevision"] = hf.get("revision")
        ref = hf.get("tokenSecretRef")
        if ref:
            req["hfToken"] = await secret_value(
                ctx.api, ad.namespace, ref["name"], ref.get("key") or "token"
            )
    return req


def _fail(ctx: SyncContext, ad: AdapterView, reason: str, message: str) -> None:
    key = (ad.namespace, ad.name)
    ctx.fleet.failures[key] = Failure(ad.generation, reason, message)
    log.warning("adapter %s/%s rejected: %s: %s", ad.namespace, ad.name, reason, message)
    ctx.on_adapter_failed(key)


async def _ensure_loaded(
    ctx: SyncContext,
    pod: PodView,
    base: BaseView,
    ad: AdapterView,
    registered: dict[str, str | None],
    vllm: VLLMClient,
    agent: AgentClient,
    had_synced: bool,
) -> None:
    fleet = ctx.fleet
    key, pkey = (ad.namespace, ad.name), (pod.namespace, pod.name)
    labels = (ad.namespace, base.name, ad.name)
    version = fleet.version(key)
    current = registered.get(ad.served_name)
    if version is not None and current == version.path:
        fleet.set_state(pkey, ad.name, "Registered")
        return
    fleet.set_state(pkey, ad.name, "Loading")
    started = time.monotonic()
    async with ctx.total_loads:
        try:
            fetched = await agent.fetch(await fetch_request(ctx, ad, base))
        except AdapterRejectedByAgent as exc:
            metrics.ADAPTER_LOADS.labels(*labels, "rejected").inc()
            _fail(ctx, ad, exc.reason, exc.message)
            fleet.set_state(pkey, ad.name, "Failed", exc.message)
            return
        fleet.versions[key] = Version(
            ad.generation, fetched.path, fetched.summary, fetched.warnings
        )
        if current == fetched.path:
            fleet.set_state(pkey, ad.name, "Registered")
            return
        try:
            # A new version under a registered name is swapped in place: vLLM loads the new
            # weights first, then replaces the old ones, so no request sees a missing adapter.
            await vllm.load_adapter(ad.served_name, fetched.path, inplace=current is not None)
        except VLLMError as exc:
            if exc.permanent:
                metrics.ADAPTER_LOADS.labels(*labels, "rejected").inc()
                _fail(ctx, ad, str(exc.reason), exc.message)
                fleet.set_state(pkey, ad.name, "Failed", exc.message)
                return
            metrics.ADAPTER_LOADS.labels(*labels, "error").inc()
            fleet.set_state(pkey, ad.name, "Loading", f"{exc.reason}: {exc.message}")
            raise
    metrics.ADAPTER_LOADS.labels(*labels, "success").inc()
    metrics.ADAPTER_LOAD_SECONDS.labels(ad.namespace, base.name).observe(time.monotonic() - started)
    if had_synced and current is None:
        metrics.ADAPTER_RECOVERIES.labels(*labels).inc()
    fleet.set_state(pkey, ad.name, "Registered")


async def _set_gate(ctx: SyncContext, pod: PodView, ready: bool, message: str) -> None:
    if pod.gate is ready:
        return
    body = {
        "status": {
            "conditions": [
                {
                    "type": GATE,
                    "status": "True" if ready else "False",
                    "reason": "AdaptersRegistered" if ready else "AdaptersLoading",
                    "message": message,
                    "lastTransitionTime": now_rfc3339(),
                }
            ]
        }
    }
    await kube.patch_status(ctx.api, "v1", "Pod", pod.namespace, pod.name, body)
    pod.gate = ready


def _in_store(path: str | None) -> bool:
    return bool(path) and str(path).startswith(naming.ADAPTER_MOUNT_PATH.rstrip("/") + "/")


def store_versions(paths: Iterable[str | None]) -> dict[str, str]:
    """{adapter dir: version dir} of every path under the adapter store."""
    keep: dict[str, str] = {}
    prefix = naming.ADAPTER_MOUNT_PATH.rstrip("/") + "/"
    for path in paths:
        if path and path.startswith(prefix):
            parts = path[len(prefix) :].strip("/").split("/")
            if len(parts) == 2:
                keep[parts[0]] = parts[1]
    return keep


async def sync_pod(ctx: SyncContext, pod: PodView) -> None:
    """Converge one pod. Raises on transient trouble so the worker retries with backoff."""
    fleet = ctx.fleet
    pkey = (pod.namespace, pod.name)
    base = fleet.bases.get((pod.namespace, pod.base_model))
    if base is None or pod.deleting or not pod.ip:
        return
    if not pod.vllm_ready:
        # A restarted vLLM lost every runtime registration: say so in status rather than keep
        # reporting what was true before, and keep the pod out of the Service until it is back.
        for name, st in fleet.pod_states.get(pkey, {}).items():
            if st.state == "Registered":
                fleet.set_state(pkey, name, "Pending", "vLLM is not ready on this pod")
        await _set_gate(ctx, pod, False, "vLLM is not ready; adapters are registered once it is")
        fleet.touch_base(pod.namespace, base.name)
        if not pod.vllm_running:
            return
    vllm, agent = await clients(ctx, pod, base)
    if not pod.vllm_ready and not await vllm.health():
        # Ask the server itself rather than wait a probe period: its adapters go back the
        # moment it answers.
        raise ServerStarting(pod.name)
    try:
        models = await vllm.list_models()
    except VLLMError as exc:
        raise PodNotReachable(f"{pod.name}: {exc.message}") from exc
    registered = models.adapter_paths
    placement = fleet.placement(pod.namespace, base.name)
    wanted = [fleet.adapters[(pod.namespace, n)] for n in placement.placed]
    had_synced = pkey in fleet.synced

    sem = asyncio.Semaphore(ctx.settings.load_concurrency_per_pod)

    async def one(ad: AdapterView) -> BaseException | None:
        async with sem:
            try:
                await _ensure_loaded(ctx, pod, base, ad, registered, vllm, agent, had_synced)
            except (VLLMError, AgentError) as exc:
                return exc
        return None

    errors = [e for e in await asyncio.gather(*(one(a) for a in wanted)) if e is not None]

    # Unregister whatever this pod should not serve.
    keep_served = {a.served_name for a in wanted}
    by_served = {a.served_name: a for a in fleet.adapters_of(pod.namespace, base.name)}
    for served in sorted(set(registered) - keep_served):
        ad_or_none = by_served.get(served)
        if ad_or_none is None and not _in_store(registered[served]):
            continue  # registered by someone else (e.g. --lora-modules): not ours to remove
        if (
            ad_or_none is not None
            and not ad_or_none.deleting
            and ad_or_none.name not in placement.displaced
            and fleet.failure((ad_or_none.namespace, ad_or_none.name)) is not None
        ):
            continue  # its new version was rejected: the one registered before keeps serving
        await vllm.unload_adapter(served)
        name = ad_or_none.name if ad_or_none else served
        if ad_or_none is not None and name in placement.displaced:
            reason = "capacity"
            metrics.ADAPTER_EVICTIONS.labels(
                pod.namespace, base.name, name, "CapacityExceeded"
            ).inc()
            fleet.set_state(pkey, name, "Evicted", "CapacityExceeded")
        elif ad_or_none is None or ad_or_none.deleting:
            reason = "deleted" if ad_or_none else "orphan"
        else:
            reason = "failed"
        metrics.ADAPTER_UNLOADS.labels(pod.namespace, base.name, name, reason).inc()
        metrics.ADAPTER_REGISTERED.labels(pod.namespace, base.name, name, pod.name).set(0)
    for name in placement.displaced:
        if fleet.pod_states.get(pkey, {}).get(name) is None:
            fleet.set_state(pkey, name, "Evicted", "CapacityExceeded")

    states = fleet.pod_states.get(pkey, {})
    registered_names = [
        a.served_name
        for a in wanted
        if states.get(a.name) is not None and states[a.name].state == "Registered"
    ]
    for a in wanted:
        metrics.ADAPTER_REGISTERED.labels(pod.namespace, base.name, a.name, pod.name).set(
            1 if a.served_name in registered_names else 0
        )
    await agent.set_required(registered_names)
    # Files may go only when no registered name points at them: vLLM re-reads an evicted
    # adapter from its path, and dies when the files are gone (DESIGN.md §4).
    now_registered = (await vllm.list_models()).adapter_paths
    await agent.prune(store_versions(now_registered.values()))
    settled = all(
        states.get(a.name) is not None and states[a.name].state in ("Registered", "Failed")
        for a in wanted
    )
    await _set_gate(
        ctx,
        pod,
        settled,
        f"{len(registered_names)}/{len(wanted)} adapters registered",
    )
    fleet.synced.add(pkey)
    fleet.touch_base(pod.namespace, base.name)
    if errors:
        raise PodNotReachable(f"{pod.name}: {len(errors)} adapter(s) failed to load: {errors[0]}")

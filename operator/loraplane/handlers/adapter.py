"""LoRAAdapter: track it in the fleet, kick its base model's pods, report status, clean up."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from loraplane import adapter_status, conditions, metrics
from loraplane.api import ADAPTER_PLURAL, BASE_MODEL_PLURAL, GROUP, VERSION
from loraplane.fleet import adapter_view, base_view, recorded_version
from loraplane.handlers.state import Runtime
from loraplane.sync import clients

STATUS_SECONDS = 2.0
UNLOAD_TIMEOUT = 15.0


@kopf.on.event(GROUP, VERSION, BASE_MODEL_PLURAL)
async def base_model_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    obj = event["object"]
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if event["type"] == "DELETED":
        rt.fleet.bases.pop(key, None)
        return
    new = base_view(obj)
    old = rt.fleet.bases.get(key)
    if old != new:
        rt.fleet.bases[key] = new
        if old is not None and old.max_lora_rank != new.max_lora_rank:
            # A rejection was a verdict against the old limits: judge those adapters again.
            for ad in rt.fleet.adapters_of(*key):
                rt.fleet.failures.pop((ad.namespace, ad.name), None)
        rt.workers.kick_base(*key)


@kopf.on.event(GROUP, VERSION, ADAPTER_PLURAL)
async def adapter_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    obj = event["object"]
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if event["type"] == "DELETED":
        old = rt.fleet.adapters.get(key)
        rt.fleet.forget_adapter(key)
        if old is not None:
            rt.workers.kick_base(old.namespace, old.base_model)
        return
    new = adapter_view(obj)
    old = rt.fleet.adapters.get(key)
    if old is None and (recorded := recorded_version(obj)) is not None:
        rt.fleet.versions.setdefault(key, recorded)
    rt.fleet.adapters[key] = new
    if old is not None and old.generation != new.generation:
        # What the pods hold is the previous generation's version: not Ready for this one.
        for pod_key, states in rt.fleet.pod_states.items():
            current = states.get(new.name)
            if pod_key[0] == new.namespace and current and current.state == "Registered":
                rt.fleet.set_state(pod_key, new.name, "Loading")
    if old != new:
        rt.workers.kick_base(new.namespace, new.base_model)


@kopf.timer(GROUP, VERSION, ADAPTER_PLURAL, interval=0.05, sharp=False)
async def report_status(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    """Publish the in-memory per-pod view as status; writes only when something changed.

    Each run waits for a change of this adapter's picture (or STATUS_SECONDS), so status
    follows a load within milliseconds while an idle adapter costs one wake-up per period.
    """
    rt: Runtime = memo.runtime
    stopped: kopf.DaemonStopped = kw["stopped"]  # timers get it too; TimerFn does not say so
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    changed_event = rt.fleet.change_event(key)

    async def stopping() -> None:
        await stopped.wait()

    waits = [asyncio.create_task(changed_event.wait()), asyncio.create_task(stopping())]
    await asyncio.wait(waits, timeout=STATUS_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    if stopped:
        return
    changed_event.clear()
    ad = rt.fleet.adapters.get(key)
    if ad is None or ad.deleting:
        return
    pods = rt.fleet.pods_of(ad.namespace, ad.base_model)
    if any((p.namespace, p.name) not in rt.fleet.synced and p.vllm_ready for p in pods):
        return  # right after a start: wait for the first look at each server before judging
    rep = adapter_status.report(rt.fleet, ad, memo.settings.pod_status_cap)
    old = body.get("status") or {}
    old_conditions = old.get("conditions") or []
    new_conditions = conditions.merge(old_conditions, rep.conditions, ad.generation)
    new: dict[str, Any] = {
        "observedGeneration": ad.generation,
        "phase": rep.phase,
        "message": rep.message,
        "replicas": {"desired": rep.desired, "registered": rep.registered},
        "ready": f"{rep.registered}/{rep.desired}",
        "pods": rep.pods,
    }
    if rep.summary is not None:
        new["adapter"] = rep.summary
    changed = any(old.get(k) != v for k, v in new.items() if k != "pods") or _pods_changed(
        old.get("pods") or [], rep.pods
    )
    if not changed and conditions.same_ignoring_time(old_conditions, new_conditions):
        return
    new["conditions"] = new_conditions
    patch.status.update(new)
    if old.get("phase") != rep.phase:
        _announce(body, rep.phase, rep.message, new_conditions)


def _pods_changed(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> bool:
    def strip(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(p.get("name"), p.get("state"), p.get("lastError")) for p in items]

    return strip(old) != strip(new)


def _announce(body: kopf.Body, phase: str, message: str, conds: list[dict[str, Any]]) -> None:
    ready = next((c for c in conds if c["type"] == "Ready"), {})
    if phase == "Ready":
        kopf.info(body, reason="Ready", message=message)
    elif phase == "Failed":
        kopf.warn(body, reason=str(ready.get("reason")), message=message)
    elif ready.get("reason") == "CapacityExceeded":
        kopf.warn(body, reason="CapacityExceeded", message=message)
    elif phase == "Degraded":
        kopf.warn(body, reason="Degraded", message=message)


@kopf.on.delete(GROUP, VERSION, ADAPTER_PLURAL)
async def delete_adapter(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Unregister from every pod before the object goes; bounded, so gone pods never block."""
    rt: Runtime = memo.runtime
    ad = adapter_view(body)
    ad.deleting = True
    key = (ad.namespace, ad.name)
    rt.fleet.adapters[key] = ad
    base = rt.fleet.bases.get((ad.namespace, ad.base_model))
    pods = rt.fleet.pods_of(ad.namespace, ad.base_model) if base else []

    async def unload(pod: Any) -> None:
        if base is None or not pod.ip:
            return
        vllm, _agent = await clients(rt.workers.ctx, pod, base)
        await vllm.unload_adapter(ad.served_name)
        metrics.ADAPTER_UNLOADS.labels(ad.namespace, ad.base_model, ad.name, "deleted").inc()
        metrics.ADAPTER_REGISTERED.labels(ad.namespace, ad.base_model, ad.name, pod.name).set(0)

    results = await asyncio.gather(
        *(asyncio.wait_for(unload(p), UNLOAD_TIMEOUT) for p in pods), return_exceptions=True
    )
    for pod, result in zip(pods, results, strict=True):
        if isinstance(result, BaseException):
            logger.info("unload of %s from %s skipped: %r", ad.name, pod.name, result)
    rt.fleet.forget_adapter(key)
    # The pods' next sync prunes the files, now that the name is unregistered.
    if base is not None:
        rt.workers.kick_base(ad.namespace, ad.base_model)
    kopf.info(body, reason="Deleted", message=f"unregistered from {len(pods)} pod(s)")

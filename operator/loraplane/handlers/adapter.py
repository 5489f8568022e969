"""LoRAAdapter: hand its events to the fleet, publish its status, and unregister it on delete."""

from __future__ import annotations

from typing import Any

import kopf

from loraplane import metrics
from loraplane.api import ADAPTER_KIND, ADAPTER_PLURAL, GROUP, VERSION, LoRAAdapterStatus
from loraplane.handlers.wake import changed_or_period
from loraplane.runtime import Runtime
from loraplane.status import adapter as adapter_status
from loraplane.status import whole


def _key(body: kopf.Body | kopf.RawBody) -> tuple[str, str]:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.event(GROUP, VERSION, ADAPTER_PLURAL)
async def adapter_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    obj = event["object"]
    gone = event["type"] == "DELETED"
    rt.kick(rt.fleet.forget_adapter(_key(obj)) if gone else rt.fleet.observe_adapter(obj))


@kopf.timer(GROUP, VERSION, ADAPTER_PLURAL, interval=0.05, sharp=False)
async def report_status(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    """Publish the adapter's whole status when its picture changed; one Event per transition."""
    rt: Runtime = memo.runtime
    key = _key(body)
    stopped: kopf.DaemonStopped = kw["stopped"]  # timers get it too; TimerFn does not say so
    period = rt.settings.status_period_seconds
    ad = rt.fleet.adapters.get(key)
    if not await changed_or_period(rt.fleet.adapter_changed(key), stopped, period) or ad is None:
        return
    if ad.deleting or adapter_status.waiting_for_first_look(rt.fleet, ad):
        return
    old = LoRAAdapterStatus.from_k8s(body.get("status") or {})
    with metrics.RECONCILE_SECONDS.labels(ADAPTER_KIND).time():
        new = adapter_status.compute(rt.fleet, ad, old, rt.settings.pod_status_cap)
    if new.to_k8s() != old.to_k8s():
        patch.status.update(whole(new))
    for ev in adapter_status.events(rt.republish(ADAPTER_KIND, key, old, new), new):
        kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message)


@kopf.on.delete(GROUP, VERSION, ADAPTER_PLURAL)
async def delete_adapter(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Unregister from every pod before the object goes; bounded, so gone pods never block."""
    rt: Runtime = memo.runtime
    key = _key(body)
    rt.kick(rt.fleet.observe_adapter(body) | rt.fleet.mark_deleting(key))
    left = await rt.fleet.wait_unregistered(key, rt.settings.unload_timeout_seconds)
    rt.kick(rt.fleet.forget_adapter(key))
    rt.forget_published(ADAPTER_KIND, key)
    message = "unregistered from every serving pod"
    if left:
        names = ", ".join(p.name for p in left)
        message = f"unregistered; {names} did not answer in time: their next sync unloads it"
    kopf.info(body, reason="Deleted", message=message)

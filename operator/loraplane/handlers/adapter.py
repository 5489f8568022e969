"""LoRAAdapter: hand its events to the fleet and the status writer; unregister it on delete."""

from __future__ import annotations

from typing import Any

import kopf

from loraplane import services, trace
from loraplane.api import ADAPTER_KIND, ADAPTER_PLURAL, GROUP, VERSION


def _key(body: kopf.Body | kopf.RawBody) -> tuple[str, str]:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.event(GROUP, VERSION, ADAPTER_PLURAL)
async def adapter_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    wired = services.of(memo)
    rt, writer = wired.runtime, wired.status_writer
    writer.start()
    obj = event["object"]
    trace.mark("event", kind=ADAPTER_KIND, name=obj["metadata"]["name"], type=event["type"])
    if event["type"] == "DELETED":
        rt.kick(rt.fleet.forget_adapter(_key(obj)))
        writer.forget(_key(obj))
        return
    rt.kick(rt.fleet.observe_adapter(obj))
    writer.observe(obj)


@kopf.on.delete(GROUP, VERSION, ADAPTER_PLURAL)
async def delete_adapter(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Unregister from every pod before the object goes; bounded, so gone pods never block."""
    wired = services.of(memo)
    rt = wired.runtime
    key = _key(body)
    rt.kick(rt.fleet.observe_adapter(body) | rt.fleet.mark_deleting(key))
    left = await rt.fleet.wait_unregistered(key, rt.settings.unload_timeout_seconds)
    rt.kick(rt.fleet.forget_adapter(key))
    wired.status_writer.forget(key)
    message = "unregistered from every serving pod"
    if left:
        names = ", ".join(p.name for p in left)
        message = f"unregistered; {names} did not answer in time: their next sync unloads it"
    kopf.info(body, reason="Deleted", message=message)

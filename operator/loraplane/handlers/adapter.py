"""LoRAAdapter: hand its events to the fleet and the status writer; unregister it on delete."""

from __future__ import annotations

from typing import Any

import kopf

from loraplane import status_writer, trace
from loraplane.api import ADAPTER_KIND, ADAPTER_PLURAL, GROUP, VERSION
from loraplane.runtime import Runtime


def _key(body: kopf.Body | kopf.RawBody) -> tuple[str, str]:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.event(GROUP, VERSION, ADAPTER_PLURAL)
async def adapter_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    memo.status_writer.start()
    obj = event["object"]
    trace.mark("event", kind=ADAPTER_KIND, name=obj["metadata"]["name"], type=event["type"])
    if event["type"] == "DELETED":
        rt.kick(rt.fleet.forget_adapter(_key(obj)))
        status_writer.forget(rt, _key(obj))
        return
    rt.kick(rt.fleet.observe_adapter(obj))
    status_writer.observe(rt, obj)


@kopf.on.delete(GROUP, VERSION, ADAPTER_PLURAL)
async def delete_adapter(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Unregister from every pod before the object goes; bounded, so gone pods never block."""
    rt: Runtime = memo.runtime
    key = _key(body)
    rt.kick(rt.fleet.observe_adapter(body) | rt.fleet.mark_deleting(key))
    left = await rt.fleet.wait_unregistered(key, rt.settings.unload_timeout_seconds)
    rt.kick(rt.fleet.forget_adapter(key))
    status_writer.forget(rt, key)
    message = "unregistered from every serving pod"
    if left:
        names = ", ".join(p.name for p in left)
        message = f"unregistered; {names} did not answer in time: their next sync unloads it"
    kopf.info(body, reason="Deleted", message=message)

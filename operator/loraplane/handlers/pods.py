"""Pods of base models: keep the fleet's view current and kick the pod's sync on what matters."""

from __future__ import annotations

from typing import Any

import kopf

from loraplane import services, trace
from loraplane.builders import naming
from loraplane.fleet import PodChange

POD_LABELS = {
    "app.kubernetes.io/managed-by": naming.MANAGED_BY,
    naming.LABEL_COMPONENT: "model-server",
}


@kopf.on.event("", "v1", "pods", labels=POD_LABELS)
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt = services.of(memo).runtime
    obj = event["object"]
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    trace.mark("event", kind="Pod", name=key[1], type=event["type"])
    if event["type"] == "DELETED":
        rt.fleet.forget_pod(key)
        await rt.workers.stop(key)
        return
    change = rt.fleet.observe_pod(obj)
    if rt.fleet.pods[key].deleting:
        await rt.workers.stop(key)
    elif change is not PodChange.OTHER:
        rt.kick([key])

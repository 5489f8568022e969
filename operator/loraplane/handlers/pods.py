"""Pods of base models: keep the fleet's view current and kick the pod's sync on what matters."""

from __future__ import annotations

from typing import Any

import kopf

from loraplane.builders import naming
from loraplane.fleet import pod_view
from loraplane.handlers.state import Runtime

POD_LABELS = {
    "app.kubernetes.io/managed-by": naming.MANAGED_BY,
    naming.LABEL_COMPONENT: "model-server",
}


@kopf.on.event("", "v1", "pods", labels=POD_LABELS)
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt: Runtime = memo.runtime
    obj = event["object"]
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if event["type"] == "DELETED":
        gone = rt.fleet.pods.get(key)
        rt.fleet.forget_pod(key)
        await rt.workers.stop(key)
        if gone is not None:
            rt.fleet.touch_base(gone.namespace, gone.base_model)
        return
    new = pod_view(obj, naming.LABEL_BASE_MODEL, naming.VLLM_CONTAINER)
    old = rt.fleet.pods.get(key)
    rt.fleet.pods[key] = new
    if old is None:
        rt.workers.ensure(key)
        return
    if (old.ip, old.vllm_container_id, old.vllm_ready, old.vllm_running, old.deleting) != (
        new.ip,
        new.vllm_container_id,
        new.vllm_ready,
        new.vllm_running,
        new.deleting,
    ):
        rt.workers.kick(key)
    if new.deleting:
        await rt.workers.stop(key)

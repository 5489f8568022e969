"""Merged base models (spec.model.merge): their pods' merges, and the adapters they merge."""

from __future__ import annotations

from typing import Any

import kopf

from loraplane import services
from loraplane.api import ADAPTER_PLURAL, GROUP, VERSION
from loraplane.handlers.pods import POD_LABELS
from loraplane.merge.inputs import ANNOTATION


@kopf.on.event("", "v1", "pods", labels=POD_LABELS, annotations={ANNOTATION: kopf.PRESENT})
async def merged_pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A merge started, finished or failed, or vLLM became ready: the base model judges it."""
    rt = services.of(memo).runtime
    base = rt.merges.observe(event["object"], deleted=event["type"] == "DELETED")
    if base is not None:
        rt.fleet.base_changed(base).set()


@kopf.on.event(GROUP, VERSION, ADAPTER_PLURAL)
async def merged_adapter_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """An adapter's new version (its status) or deletion: merged base models look again.
    They are few, and a base model's reconcile that finds nothing changed writes nothing."""
    rt = services.of(memo).runtime
    namespace = event["object"]["metadata"]["namespace"]
    for key, base in list(rt.fleet.bases.items()):
        if key[0] == namespace and base.merged:
            rt.fleet.base_changed(key).set()

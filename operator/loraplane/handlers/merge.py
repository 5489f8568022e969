"""Merged base models (spec.model.merge): their pods' merges (their adapters' events reach them
through `Fleet.observe_adapter`)."""

from __future__ import annotations

from typing import Any

import kopf

from loraplane import services
from loraplane.handlers.pods import POD_LABELS
from loraplane.merge.inputs import ANNOTATION


@kopf.on.event("", "v1", "pods", labels=POD_LABELS, annotations={ANNOTATION: kopf.PRESENT})
async def merged_pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A merge started, finished or failed, or vLLM became ready: the base model judges it."""
    rt = services.of(memo).runtime
    base = rt.merges.observe(event["object"], deleted=event["type"] == "DELETED")
    if base is not None:
        rt.fleet.base_changed(base).set()

"""BaseModelDeployment: hand its events and its children's to the fleet; converge; report."""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from loraplane import children, metrics, services
from loraplane.api import BASE_MODEL_KIND, BASE_MODEL_PLURAL, GROUP, VERSION
from loraplane.api import BaseModelDeploymentStatus as Status
from loraplane.handlers.wake import changed_or_period
from loraplane.status import base_model as base_model_status
from loraplane.status import whole


@kopf.on.event(GROUP, VERSION, BASE_MODEL_PLURAL)
async def base_model_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    rt = services.of(memo).runtime
    obj = event["object"]
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if event["type"] == "DELETED":
        rt.forget_published(BASE_MODEL_KIND, key)
        rt.kick(rt.fleet.forget_base(key))
    else:
        rt.kick(rt.fleet.observe_base(obj))


# Unfiltered: kopf filters labels in the process anyway, and a child's labels can be edited.
@kopf.on.event("apps", "v1", "deployments")
@kopf.on.event("", "v1", "services")
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies")
@kopf.on.event("", "v1", "configmaps")
@kopf.on.event("", "v1", "serviceaccounts")
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles")
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings")
async def child_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    services.of(memo).runtime.fleet.observe_child(
        event["object"], deleted=event["type"] == "DELETED"
    )


@kopf.timer(GROUP, VERSION, BASE_MODEL_PLURAL, interval=0.05, sharp=False)
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **kw: Any) -> None:
    """Level-based, on any change of the base model's picture (or the slow resync)."""
    rt = services.of(memo).runtime
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    fleet, cfg = rt.fleet, rt.settings
    period, gap = cfg.base_model_resync_seconds, cfg.status_progress_seconds
    if not await changed_or_period(
        fleet.base_changed(key), kw["stopped"], period, fleet.base_progress(key), gap
    ):
        return
    try:
        with rt.reconciling(), metrics.RECONCILE_SECONDS.labels(BASE_MODEL_KIND).time():
            outcome = await children.converge(rt, body)
    except ApiException as exc:
        if exc.status == 403 and "being terminated" in str(exc.body):
            return  # the namespace is going away, and the children with it
        # An API hiccup (a conflict, a restart): soon again, not after kopf's default minute.
        rt.fleet.base_changed(key).set()
        raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=5) from exc
    old = Status.from_k8s(body.get("status") or {})
    merged = rt.merges.pods_of(*key)
    new = base_model_status.of(rt.fleet, body, outcome, old, rt.settings.vllm_port, merged)
    if new.to_k8s() != old.to_k8s():
        patch.status.update(whole(new))
    for ev in base_model_status.events(
        rt.republish(BASE_MODEL_KIND, key, old, new).conditions, new.conditions
    ):
        kopf.event(body, type=ev.type, reason=ev.reason, message=ev.message)

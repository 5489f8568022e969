"""BaseModelDeployment: converge the Deployment, Service and agent Secret; report real status."""

from __future__ import annotations

import secrets
from typing import Any

import kopf
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from loraplane import base_model_status, conditions, kube
from loraplane.api import BASE_MODEL_PLURAL as PLURAL
from loraplane.api import GROUP, VERSION, BaseModelDeploymentSpec
from loraplane.builders import naming
from loraplane.builders.deployment import PodContext, ResourceError, deployment
from loraplane.builders.service import agent_token_secret, service, service_endpoint
from loraplane.builders.vllm_args import ArgsError
from loraplane.config import Settings

RESYNC_SECONDS = 5.0


def _served_name(spec: BaseModelDeploymentSpec, name: str) -> str:
    return spec.model.served_name or name


async def _converge_children(
    api: ApiClient, body: kopf.Body, spec: BaseModelDeploymentSpec, cfg: Settings
) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """Apply the children; returns (live Deployment, spec error) and never rolls a bad spec."""
    owner = dict(body)
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    await kube.create_if_absent(api, agent_token_secret(owner, secrets.token_urlsafe(32)))
    svc = service(owner, cfg.vllm_port)
    live_svc = await kube.get(api, "v1", "Service", ns, naming.service_name(name))
    await kube.converge(api, svc, live_svc, ("ports", "selector", "type"))
    live = await kube.get(api, "apps/v1", "Deployment", ns, naming.deployment_name(name))
    ctx = PodContext(
        agent_image=cfg.operator_image, agent_port=cfg.agent_port, vllm_port=cfg.vllm_port
    )
    try:
        desired = deployment(owner, spec, _served_name(spec, name), ctx)
    except ArgsError as exc:
        return live, ("InvalidEngineArgs", str(exc))
    except ResourceError as exc:
        return live, ("InsufficientResources", str(exc))
    live = await kube.converge(api, desired, live, ("replicas", "selector", "strategy", "template"))
    return live, None


async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    api: ApiClient = memo.api
    cfg: Settings = memo.settings
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    try:
        spec = BaseModelDeploymentSpec.from_k8s(body.get("spec") or {})
    except ValueError as exc:  # the schema should have caught it; say so instead of crashing
        spec_error: tuple[str, str] | None = ("InvalidSpec", str(exc))
        live = await kube.get(api, "apps/v1", "Deployment", ns, naming.deployment_name(name))
        desired_replicas = int((body.get("spec") or {}).get("replicas") or 0)
        served = name
    else:
        try:
            live, spec_error = await _converge_children(api, body, spec, cfg)
        except ApiException as exc:
            if exc.status == 403 and "being terminated" in str(exc.body):
                return  # the namespace is going away, and the children with it
            raise
        desired_replicas = spec.replicas
        served = _served_name(spec, name)
    pods = await kube.list_objects(
        api, "v1", "Pod", ns, naming.label_selector(naming.selector_labels(name))
    )
    observed = base_model_status.Observed(desired_replicas, live, pods, spec_error)
    old_status = body.get("status") or {}
    old_conditions = old_status.get("conditions") or []
    new_conditions = conditions.merge(
        old_conditions, base_model_status.conditions(observed), meta.get("generation")
    )
    _announce(body, old_conditions, new_conditions)
    c = base_model_status.counts(observed)
    new_status: dict[str, Any] = {
        "observedGeneration": meta.get("generation"),
        **c,
        "ready": f"{c['readyReplicas']}/{desired_replicas}",
        "selector": naming.label_selector(naming.selector_labels(name)),
        "endpoint": service_endpoint(body, cfg.vllm_port),
        "servedName": served,
        "conditions": new_conditions,
        "adapters": _adapter_counts(memo, ns, name),
    }
    unchanged = all(
        old_status.get(k) == v for k, v in new_status.items() if k != "conditions"
    ) and conditions.same_ignoring_time(old_conditions, new_conditions)
    if not unchanged:
        patch.status.update(new_status)


def _adapter_counts(memo: kopf.Memo, namespace: str, name: str) -> dict[str, int]:
    """Adapters placed on this base model, and those registered on every one of its pods."""
    runtime = getattr(memo, "runtime", None)
    if runtime is None:
        return {"desired": 0, "ready": 0}
    fleet = runtime.fleet
    placed = fleet.placement(namespace, name).placed
    pods = fleet.pods_of(namespace, name)
    ready = sum(
        1
        for adapter in placed
        if pods
        and all(
            (st := fleet.pod_states.get((p.namespace, p.name), {}).get(adapter)) is not None
            and st.state == "Registered"
            for p in pods
        )
    )
    return {"desired": len(placed), "ready": ready}


def _announce(body: kopf.Body, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """An Event for each condition that changed in a way a user should hear about."""
    before = {c["type"]: c for c in old}
    for cond in new:
        prev = before.get(cond["type"])
        if prev and (prev["status"], prev["reason"]) == (cond["status"], cond["reason"]):
            continue
        if cond["type"] == "Degraded" and cond["status"] == "True":
            kopf.warn(body, reason=cond["reason"], message=cond["message"])
        elif cond["type"] == "Available" and cond["status"] == "True" and prev is not None:
            kopf.info(body, reason="Available", message=cond["message"])
        elif cond["type"] == "Degraded" and prev is not None and prev["status"] == "True":
            kopf.info(body, reason="Recovered", message="no problem seen on any pod")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile_or_retry(body, patch, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, sharp=False)
async def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Level-based: put back children edited or deleted by hand, and refresh status."""
    await _reconcile_or_retry(body, patch, memo)


async def _reconcile_or_retry(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    try:
        await reconcile(body, patch, memo)
    except ApiException as exc:
        # An API hiccup (a conflict, a restart): soon again, not after kopf's default minute.
        raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=5) from exc

"""A base model's children (agent token Secret, Service, Deployment, NetworkPolicy, and the
router's objects when spec.router asks for one), converged from the cache.

The live children come from the watches (the fleet's `children`), so a reconcile that finds
nothing drifted makes no API call; a child edited or deleted by hand shows up as a watch event,
which reconciles its owner at once. A spec the operator refuses rolls nothing.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from loraplane import canary, kube
from loraplane.api import BaseModelDeploymentSpec, RouterSpec
from loraplane.api.common import plain
from loraplane.builders import naming, router
from loraplane.builders.deployment import PodContext, ResourceError, deployment
from loraplane.builders.network_policy import network_policy, network_policy_name
from loraplane.builders.service import agent_token_secret, service
from loraplane.builders.vllm_args import ArgsError
from loraplane.merge import plan as merging
from loraplane.merge.book import inputs_of
from loraplane.runtime import Runtime

_REWRITE_TYPE = ("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite")
# Spec keys a PUT takes back whole when apply cannot (see kube.converge).
SERVICE_KEYS = ("ports", "selector", "type")
DEPLOYMENT_KEYS = ("replicas", "selector", "strategy", "template")
NETWORK_POLICY_KEYS = ("podSelector", "policyTypes", "ingress")
# What the operator creates per base model and watches (the agent Secret is made once; the
# Inference Extension's kinds, UNWATCHED_CHILD_KINDS, are not watched: their CRDs may not exist).
CHILD_KINDS = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
)
# The router's objects by slot (naming.child_slot), in the order they are made: what the EPP
# reads (its account, its rights, its configuration) before the pods that read it.
# Listed at start where their CRDs exist, so that a restart re-applies nothing that is current.
UNWATCHED_CHILD_KINDS = (
    ("inference.networking.k8s.io/v1", "InferencePool"),
    _REWRITE_TYPE,
)
ROUTER_SLOTS = (
    "router/ServiceAccount",
    "router/Role",
    "router/RoleBinding",
    "router/ConfigMap",
    "router/endpoints",
    "router/Deployment",
    "router/Service",
    "InferencePool",
    "InferenceModelRewrite",
)
NO_REWRITE_API = (
    "InferenceModelRewriteNotInstalled",
    "the InferenceModelRewrite API (inference.networking.x-k8s.io/v1alpha2), through which the "
    "router splits requests, is not installed in this cluster: the chart installs it "
    "(crds.inferenceExtension)",
)


NO_INFERENCE_POOL_API = (
    "InferencePoolNotInstalled",
    f"the InferencePool API ({router.INFERENCE_POOL_API}) is not installed in this cluster: "
    "the router's Endpoint Picker reads its pods from one: install the Gateway API Inference "
    "Extension's InferencePool CRD (the chart does, with crds.inferenceExtension)",
)


@dataclass(frozen=True)
class RouterOutcome:
    spec: RouterSpec
    deployment: dict[str, Any] | None  # live, as last seen
    error: tuple[str, str] | None  # (reason, message) when the router could not be made


@dataclass(frozen=True)
class Outcome:
    deployment: dict[str, Any] | None  # live, as last seen
    spec_error: tuple[str, str] | None  # (reason, message) of a spec the operator refused
    desired: int
    served_name: str
    router: RouterOutcome | None = None
    merge: merging.MergePlan | None = None  # spec.model.merge: the version the pods serve


async def _ensure_agent_secret(rt: Runtime, owner: dict[str, Any]) -> None:
    """Created once per base model (it holds a random token the pods already read).

    Looked up first: after a restart it exists, and a read costs the API server less than a
    refused create."""
    meta = owner["metadata"]
    if meta["uid"] in rt.fleet.agent_secrets:
        return
    name = naming.agent_secret_name(meta["name"])
    if await kube.get(rt.api, "v1", "Secret", meta["namespace"], name) is None:
        await kube.create_if_absent(rt.api, agent_token_secret(owner, secrets.token_urlsafe(32)))
    rt.fleet.made_agent_secret(meta["uid"])


async def _converge_network_policy(rt: Runtime, owner: dict[str, Any], routed: bool) -> None:
    """Present exactly while the setting is on: turning it off removes the ones we made."""
    meta = owner["metadata"]
    key = (meta["namespace"], meta["name"])
    live = rt.fleet.child(key, "NetworkPolicy")
    cfg = rt.settings
    if not cfg.network_policy:
        if live is not None:
            name = network_policy_name(meta["name"])
            await kube.delete(rt.api, "networking.k8s.io/v1", "NetworkPolicy", key[0], name)
            rt.fleet.observe_child(live, deleted=True)
        return
    desired = network_policy(
        owner,
        cfg.vllm_port,
        cfg.agent_port,
        cfg.agent_metrics_port,
        cfg.operator_namespace,
        cfg.network_policy_clients,
        routed=routed,
    )
    rt.fleet.observe_child(await kube.converge(rt.api, desired, live, NETWORK_POLICY_KEYS))


def _keys(obj: dict[str, Any]) -> tuple[str, ...]:
    """What a PUT takes back whole when apply cannot: every key of the spec (kinds without a
    spec, such as a ConfigMap or a Role, are whole after an apply)."""
    return tuple(obj.get("spec") or ())


async def _remove(rt: Runtime, live: dict[str, Any]) -> None:
    meta = live["metadata"]
    await kube.delete(rt.api, live["apiVersion"], live["kind"], meta["namespace"], meta["name"])
    rt.fleet.observe_child(live, deleted=True)


def _router_objects(rt: Runtime, owner: dict[str, Any], spec: RouterSpec) -> dict[str, Any]:
    ctx = router.RouterContext.of(rt.settings)
    config = router.config_map(owner, spec, ctx)
    desired = {
        "router/ServiceAccount": router.service_account(owner),
        "router/Role": router.role(owner),
        "router/RoleBinding": router.role_binding(owner),
        "router/ConfigMap": config,
        "router/Deployment": router.deployment(owner, spec, ctx, config),
        "router/Service": router.service(owner, spec),
    }
    meta = owner["metadata"]
    if spec.mode == "Envoy":
        ready = [
            p.ip
            for p in rt.fleet.pods_of(meta["namespace"], meta["name"])
            if p.ip and p.vllm_ready and p.gate
        ]
        desired["router/endpoints"] = router.endpoints_config_map(owner, ready, ctx)
    desired["InferencePool"] = router.inference_pool(owner, spec, ctx.vllm_port)
    return desired


async def _converge_router(
    rt: Runtime, owner: dict[str, Any], spec: RouterSpec | None
) -> RouterOutcome | None:
    """Present exactly while spec.router is set; a mode change removes the other mode's. The
    canaries of the base model's adapters are judged here too, since the router carries them."""
    meta = owner["metadata"]
    key = (meta["namespace"], meta["name"])
    splits = canary.plan(
        rt.fleet.adapters_of(*key), lambda a: rt.fleet.served_everywhere(*key, a), spec is not None
    )
    desired = _router_objects(rt, owner, spec) if spec is not None else {}
    rules = canary.rewrite_rules(splits)
    if rules:
        desired["InferenceModelRewrite"] = router.model_rewrite(owner, rules)
    outcome = None if spec is None else RouterOutcome(spec, None, None)
    for slot in ROUTER_SLOTS:
        live = rt.fleet.child(key, slot)
        if slot not in desired:
            if live is not None:
                await _remove(rt, live)
            continue
        obj = desired[slot]
        try:
            rt.fleet.observe_child(await kube.converge(rt.api, obj, live, _keys(obj)))
        except ApiException as exc:
            if exc.status != 404 or spec is None:
                raise
            if slot == "InferencePool":
                outcome = RouterOutcome(spec, None, NO_INFERENCE_POOL_API)
                break
            if slot == "InferenceModelRewrite":
                splits = {n: canary.unsplit(s, *NO_REWRITE_API) for n, s in splits.items()}
                continue
            raise
    rt.fleet.set_splits(key, splits)
    if outcome is None or outcome.error is not None:
        return outcome
    return dataclasses.replace(outcome, deployment=rt.fleet.child(key, "router/Deployment"))


async def converge(rt: Runtime, body: Any) -> Outcome:
    owner = plain(body)
    meta = owner["metadata"]
    key = (meta["namespace"], meta["name"])
    live = rt.fleet.child(key, "Deployment")
    try:
        spec = BaseModelDeploymentSpec.from_k8s(owner.get("spec") or {})
    except ValueError as exc:  # the schema should have caught it; say so instead of crashing
        replicas = int((owner.get("spec") or {}).get("replicas") or 0)
        return Outcome(live, ("InvalidSpec", str(exc)), replicas, meta["name"])
    served = spec.model.served_name or meta["name"]
    await _ensure_agent_secret(rt, owner)
    svc = service(owner, rt.settings.vllm_port)
    live_svc = await kube.converge(rt.api, svc, rt.fleet.child(key, "Service"), SERVICE_KEYS)
    rt.fleet.observe_child(live_svc)
    await _converge_network_policy(rt, owner, spec.router is not None)
    merge = None
    inputs = None
    if spec.model.merge is not None:
        generation = int(meta.get("generation") or 0)
        merging.restore(rt.merges, key, owner, generation)
        live_inputs = inputs_of(((live or {}).get("spec") or {}).get("template") or {})
        merge = merging.plan(rt.fleet, rt.merges, key, generation, spec, live_inputs)
        inputs = merge.inputs
        if inputs is None:
            # Nothing merged to serve: no pods, rather than pods crash-looping on the merge.
            if live_inputs is None:
                return Outcome(live, None, 0, served, None, merge)
            inputs, spec = live_inputs, spec.model_copy(update={"replicas": 0})
        served = inputs.served_name
    try:
        desired = deployment(owner, spec, served, PodContext.of(rt.settings), inputs)
    except ArgsError as exc:
        return Outcome(live, ("InvalidEngineArgs", str(exc)), spec.replicas, served)
    except ResourceError as exc:
        return Outcome(live, ("InsufficientResources", str(exc)), spec.replicas, served)
    live = await kube.converge(rt.api, desired, live, DEPLOYMENT_KEYS)
    rt.fleet.observe_child(live)
    routed = await _converge_router(rt, owner, spec.router)
    return Outcome(live, None, spec.replicas, served, routed, merge)

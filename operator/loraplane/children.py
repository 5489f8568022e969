"""A base model's children (agent token Secret, Service, Deployment, NetworkPolicy), converged
from the cache.

The live children come from the watches (the fleet's `children`), so a reconcile that finds
nothing drifted makes no API call; a child edited or deleted by hand shows up as a watch event,
which reconciles its owner at once. A spec the operator refuses rolls nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from loraplane import kube
from loraplane.api import BaseModelDeploymentSpec
from loraplane.api.common import plain
from loraplane.builders import naming
from loraplane.builders.deployment import PodContext, ResourceError, deployment
from loraplane.builders.network_policy import network_policy, network_policy_name
from loraplane.builders.service import agent_token_secret, service
from loraplane.builders.vllm_args import ArgsError
from loraplane.runtime import Runtime

# Spec keys a PUT takes back whole when apply cannot (see kube.converge).
SERVICE_KEYS = ("ports", "selector", "type")
DEPLOYMENT_KEYS = ("replicas", "selector", "strategy", "template")
NETWORK_POLICY_KEYS = ("podSelector", "policyTypes", "ingress")
# What the operator creates per base model (the agent Secret aside: it is made once, not watched).
CHILD_KINDS = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


@dataclass(frozen=True)
class Outcome:
    deployment: dict[str, Any] | None  # live, as last seen
    spec_error: tuple[str, str] | None  # (reason, message) of a spec the operator refused
    desired: int
    served_name: str


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


async def _converge_network_policy(rt: Runtime, owner: dict[str, Any]) -> None:
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
    )
    rt.fleet.observe_child(await kube.converge(rt.api, desired, live, NETWORK_POLICY_KEYS))


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
    await _converge_network_policy(rt, owner)
    try:
        desired = deployment(owner, spec, served, PodContext.of(rt.settings))
    except ArgsError as exc:
        return Outcome(live, ("InvalidEngineArgs", str(exc)), spec.replicas, served)
    except ResourceError as exc:
        return Outcome(live, ("InsufficientResources", str(exc)), spec.replicas, served)
    live = await kube.converge(rt.api, desired, live, DEPLOYMENT_KEYS)
    rt.fleet.observe_child(live)
    return Outcome(live, None, spec.replicas, served)

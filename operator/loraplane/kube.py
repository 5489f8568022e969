"""The few Kubernetes API calls the operator makes, idempotent by construction.

Children are written with server-side apply (field manager `loraplane`, forced): applying the same
manifest twice is a no-op, a child edited by hand gets our fields back, a deleted one is recreated.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from loraplane import metrics
from loraplane.subset import is_subset

FIELD_MANAGER = "loraplane"

_COLLECTIONS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Pod"): "pods",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("v1", "Event"): "events",
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepools",
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite"): "inferencemodelrewrites",
    ("loraplane.dev/v1alpha1", "BaseModelDeployment"): "basemodeldeployments",
    ("loraplane.dev/v1alpha1", "LoRAAdapter"): "loraadapters",
}


# What makes aiohttp's trust_env matter: a proxy or a netrc file named in the environment.
_ENV_NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "netrc")


def client() -> ApiClient:
    """The operator's API client, from the configuration loaded at start.

    kubernetes_asyncio opens its session with trust_env on, so every call reads ~/.netrc and the
    proxy variables in a thread: a tenth of the operator's CPU in a cold start of 10,000
    adapters. Without a proxy or a netrc named in the environment that finds nothing, so it is
    turned off; with one, it is kept.
    """
    api = ApiClient()
    if not any(n in os.environ or n.upper() in os.environ for n in _ENV_NAMES):
        api.rest_client.pool_manager._trust_env = False
    return api


def collection_path(api_version: str, kind: str, namespace: str | None) -> str:
    """The collection's path; namespace None means across all namespaces."""
    plural = _COLLECTIONS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{scope}/{plural}"


async def _call(
    api: ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> Any:
    if method != "GET":
        metrics.KUBE_API_WRITES.labels(_resource(path), _verb(method, content_type)).inc()
    resp = await api.call_api(
        path,
        method,
        query_params=query or [],
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    raw = await resp.read()
    if not 200 <= resp.status <= 299:
        # Without preloading the client does not raise by itself.
        exc = ApiException(status=resp.status, reason=resp.reason)
        exc.body = raw.decode(errors="replace")
        raise exc
    return json.loads(raw) if raw else None


def _resource(path: str) -> str:
    """`deployments`, `loraadapters/status`: the resource a path names, as the API server's
    own metrics do."""
    parts = path.strip("/").split("/")
    rest = parts[parts.index("namespaces") + 2 :] if "namespaces" in parts else parts[-1:]
    return "/".join(rest[:1] + rest[2:3])


def _verb(method: str, content_type: str) -> str:
    if content_type == "application/apply-patch+yaml":
        return "apply"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]


async def get(
    api: ApiClient, api_version: str, kind: str, namespace: str, name: str
) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = await _call(
            api, "GET", f"{collection_path(api_version, kind, namespace)}/{name}"
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return result


async def list_objects(
    api: ApiClient,
    api_version: str,
    kind: str,
    namespace: str | None,
    selector: str = "",
    *,
    chunk: int,
) -> AsyncIterator[dict[str, Any]]:
    """Every object of a kind, fetched `chunk` at a time: one list of 10,000 adapters with
    their statuses is some 50 MB of JSON, parsed whole, at the moment the operator starts."""
    token = ""
    while True:
        query = [("labelSelector", selector), ("limit", str(chunk))]
        if token:
            query.append(("continue", token))
        result = await _call(api, "GET", collection_path(api_version, kind, namespace), query=query)
        for item in result.get("items", []):
            yield item
        token = result.get("metadata", {}).get("continue") or ""
        if not token:
            return


async def apply(api: ApiClient, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side apply of `obj` (create or converge), forced: we own what we set."""
    meta = obj["metadata"]
    path = f"{collection_path(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
    result: dict[str, Any] = await _call(
        api,
        "PATCH",
        path,
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        body=dict(obj),
        content_type="application/apply-patch+yaml",
    )
    return result


async def replace(api: ApiClient, obj: Mapping[str, Any]) -> dict[str, Any]:
    """PUT `obj` (carrying the live resourceVersion): for what apply cannot take back."""
    meta = obj["metadata"]
    path = f"{collection_path(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
    result: dict[str, Any] = await _call(
        api, "PUT", path, query=[("fieldManager", FIELD_MANAGER)], body=dict(obj)
    )
    return result


async def converge(
    api: ApiClient,
    desired: Mapping[str, Any],
    live: Mapping[str, Any] | None,
    keys: tuple[str, ...],
) -> dict[str, Any]:
    """Bring a child to `desired`; a no-op when the live object already carries it.

    Apply first. Fields someone else added under ours (a second Service port from `kubectl
    patch`, say) survive an apply, since apply only removes what its own manager set: then the
    `keys` of spec are taken back whole with a PUT.
    """
    if live is not None and is_subset(desired, live):
        return dict(live)
    try:
        applied = await apply(api, desired)
    except ApiException as exc:
        # Our fields merged into someone else's can be invalid (two Service ports named http):
        # then only taking the keys back whole works.
        if exc.status != 422 or live is None:
            raise
        applied = dict(live)
    if is_subset(desired, applied) or not keys:
        return applied
    repaired = {**applied, "spec": {**applied["spec"]}}
    for key in keys:
        repaired["spec"][key] = desired["spec"][key]
    try:
        return await replace(api, repaired)
    except ApiException as exc:
        if exc.status == 409:  # changed under us (a status update): the next resync repairs
            return applied
        raise


async def create_if_absent(api: ApiClient, obj: Mapping[str, Any]) -> bool:
    """Create `obj`; an existing one is left untouched. True when this call created it."""
    meta = obj["metadata"]
    try:
        await _call(
            api,
            "POST",
            collection_path(obj["apiVersion"], obj["kind"], meta["namespace"]),
            body=dict(obj),
        )
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


async def delete(api: ApiClient, api_version: str, kind: str, namespace: str, name: str) -> None:
    try:
        await _call(api, "DELETE", f"{collection_path(api_version, kind, namespace)}/{name}")
    except ApiException as exc:
        if exc.status != 404:
            raise


async def patch_status(
    api: ApiClient,
    api_version: str,
    kind: str,
    namespace: str,
    name: str,
    body: dict[str, Any],
    merge: bool = False,
) -> dict[str, Any] | None:
    """Patch of the status subresource: strategic merge (conditions merge by type), or with
    `merge` a JSON merge patch (custom resources have no strategic merge)."""
    kind_of_patch = "merge-patch" if merge else "strategic-merge-patch"
    try:
        result: dict[str, Any] = await _call(
            api,
            "PATCH",
            f"{collection_path(api_version, kind, namespace)}/{name}/status",
            body=body,
            content_type=f"application/{kind_of_patch}+json",
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None  # gone meanwhile
    return result

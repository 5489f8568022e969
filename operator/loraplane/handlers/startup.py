"""Operator start-up and shutdown: kopf settings, the API client, the fleet and its workers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import ApiClient
from prometheus_client import start_http_server

from loraplane import kube
from loraplane.api import ADAPTER_KIND, API_VERSION, BASE_MODEL_KIND
from loraplane.builders import naming
from loraplane.config import settings as load_settings
from loraplane.fleet import Fleet, Key, adapter_view, base_view, pod_view, recorded_version
from loraplane.handlers.pods import POD_LABELS
from loraplane.handlers.state import Runtime
from loraplane.sync import SyncContext
from loraplane.workers import Workers


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = load_settings()
    # One operator replica (Recreate strategy): peering would only add API traffic.
    settings.peering.standalone = True
    # Only our own events become Kubernetes Events, not every handler log line.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="loraplane.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="loraplane.dev", key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        await k8s_config.load_kube_config()
    api = ApiClient()
    session = aiohttp.ClientSession()
    fleet = Fleet()
    workers: Workers

    def on_adapter_failed(key: Key) -> None:
        ad = fleet.adapters.get(key)
        if ad is not None:
            workers.kick_base(ad.namespace, ad.base_model)

    ctx = SyncContext(
        fleet=fleet,
        api=api,
        session=session,
        settings=cfg,
        total_loads=asyncio.Semaphore(cfg.load_concurrency_total),
        on_adapter_failed=on_adapter_failed,
    )
    workers = Workers(ctx)
    await _seed(fleet, workers, api, cfg.namespace)
    memo.api = api
    memo.settings = cfg
    memo.runtime = Runtime(fleet=fleet, workers=workers, session=session)
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)


async def _seed(fleet: Fleet, workers: Workers, api: ApiClient, namespace: str | None) -> None:
    """Know every base model, adapter and pod before any pod is synced or status published.

    Watch events arrive in no particular order after a restart: a pod synced before the adapters
    are known would lose them, and an adapter seen before its pods would be reported with zero
    replicas for a moment, a status that lies.
    """
    for obj in await kube.list_objects(api, API_VERSION, BASE_MODEL_KIND, namespace):
        fleet.bases[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = base_view(obj)
    # Adapters before any pod worker runs: a worker that saw no adapters would unload them all.
    for obj in await kube.list_objects(api, API_VERSION, ADAPTER_KIND, namespace):
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        fleet.adapters[key] = adapter_view(obj)
        if (recorded := recorded_version(obj)) is not None:
            fleet.versions[key] = recorded
    selector = naming.label_selector(POD_LABELS)
    for obj in await kube.list_objects(api, "v1", "Pod", namespace, selector):
        view = pod_view(obj, naming.LABEL_BASE_MODEL, naming.VLLM_CONTAINER)
        fleet.pods[(view.namespace, view.name)] = view
        workers.ensure((view.namespace, view.name))


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = getattr(memo, "runtime", None)
    if runtime is not None:
        await runtime.workers.stop_all()
        await runtime.session.close()
    api = getattr(memo, "api", None)
    if api is not None:
        await api.close()

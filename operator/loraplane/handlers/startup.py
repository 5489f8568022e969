"""Operator start-up and shutdown: kopf settings, the services, and the first picture of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from loraplane import fleet_gauges, kube, metrics, metrics_http, services
from loraplane.api import ADAPTER_KIND, API_VERSION, BASE_MODEL_KIND
from loraplane.builders import naming
from loraplane.children import CHILD_KINDS, UNWATCHED_CHILD_KINDS
from loraplane.config import settings as load_settings
from loraplane.fleet import Fleet
from loraplane.handlers.pods import POD_LABELS

# A reconcile is a handful of API writes; well within the default 30 s grace period of the pod.
SETTLE_SECONDS = 10.0


class NoDiffBase(kopf.DiffBaseStorage):
    """Keeps no last-handled configuration on the objects.

    The one changing handler, an adapter's deletion, needs no diff; stored, it would cost one
    API write per adapter created, a thousand for a burst of a thousand.
    """

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _not_into_a_terminating_namespace(record: logging.LogRecord) -> bool:
    """Drops kopf's lines about an Event refused by a namespace being deleted: the API server
    refuses every retry the same way (403 NamespaceTerminating), and a deleted namespace with
    adapters in it made bursts of ERROR lines, nine per Event, about nothing anyone can fix."""
    return "NamespaceTerminating" not in record.getMessage()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = load_settings()
    # One operator replica (Recreate strategy): peering would only add API traffic.
    settings.peering.standalone = True
    # Only our own events become Kubernetes Events, not every handler log line.
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf._core.engines.posting").addFilter(_not_into_a_terminating_namespace)
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="loraplane.dev")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    # kopf's own list stays whole: kopf handles each page's objects before it asks for the next,
    # and at 10,000 adapters the continue token expired under it (410 after the API server's
    # 5-minute compaction), which ended the operator.
    # The resources are found once at start (the chart installs the CRDs first); watching CRDs
    # for later changes would need cluster-wide read access to every CRD, for nothing.
    settings.scanning.disabled = True
    # First, and once: a port already taken fails the start before any pod sync runs, and a
    # start retried after an API hiccup does not bind it twice.
    if cfg.metrics_port and not hasattr(memo, "metrics_server"):
        memo.metrics_server = metrics_http.serve(cfg.metrics_port)
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        await k8s_config.load_kube_config()
    api, fleet = kube.client(), Fleet()
    try:
        await _seed(fleet, api, cfg.namespaces, cfg.list_chunk_size)
    except ApiException as exc:
        # A control plane still starting answers 429 or 5xx: soon again, without a Traceback.
        await api.close()
        raise kopf.TemporaryError(f"API server not ready: {exc.status} {exc.reason}", 2) from exc
    wired = services.compose(api, aiohttp.ClientSession(), cfg, fleet)
    wired.runtime.kick(fleet.pods)
    fleet_gauges.watch_fleet(fleet)
    metrics.count_watch_restarts()
    services.keep(memo, wired)  # the status writer starts with the first adapter event


async def _seed(fleet: Fleet, api: ApiClient, namespaces: tuple[str, ...], chunk: int) -> None:
    """Know every base model, adapter, child and pod before any pod is synced or status published.

    Watch events arrive in no particular order after a restart: a pod synced before the adapters
    are known would lose them, and an adapter seen before its pods would be reported with zero
    replicas for a moment, a status that lies.
    """
    scopes: tuple[str | None, ...] = namespaces or (None,)
    for namespace in scopes:
        async for obj in kube.list_objects(
            api, API_VERSION, BASE_MODEL_KIND, namespace, chunk=chunk
        ):
            fleet.observe_base(obj)
    for namespace in scopes:
        async for obj in kube.list_objects(api, API_VERSION, ADAPTER_KIND, namespace, chunk=chunk):
            fleet.observe_adapter(obj)
    children = naming.label_selector({"app.kubernetes.io/managed-by": naming.MANAGED_BY})
    for namespace in scopes:
        for api_version, kind in CHILD_KINDS + UNWATCHED_CHILD_KINDS:
            try:
                async for obj in kube.list_objects(
                    api, api_version, kind, namespace, children, chunk=chunk
                ):
                    # A list's items carry neither: without them no child would match its
                    # desired manifest, and the first reconcile after a restart would re-apply
                    # every one.
                    fleet.observe_child({**obj, "apiVersion": api_version, "kind": kind})
            except ApiException as exc:
                if exc.status != 404 or (api_version, kind) in CHILD_KINDS:
                    raise  # 404: the Inference Extension's CRDs are not installed, nothing to find
        pods = naming.label_selector(POD_LABELS)
        async for obj in kube.list_objects(api, "v1", "Pod", namespace, pods, chunk=chunk):
            fleet.observe_pod(obj)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    wired = services.kept(memo)
    if wired is not None:
        rt = wired.runtime
        await wired.status_writer.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_SECONDS):
                await rt.settle()
        await rt.workers.stop_all()
        await rt.session.close()
        await rt.api.close()

"""Operator start-up and shutdown: kopf settings and the shared API client."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import ApiClient

from loraplane.config import settings


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # One operator replica (Recreate strategy): peering would only add API traffic.
    settings.peering.standalone = True
    # Only our own events become Kubernetes Events, not every handler log line.
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = "loraplane.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="loraplane.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="loraplane.dev", key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        await k8s_config.load_kube_config()
    memo.api = ApiClient()
    memo.settings = _settings()


def _settings() -> Any:
    return settings()


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    api = getattr(memo, "api", None)
    if api is not None:
        await api.close()

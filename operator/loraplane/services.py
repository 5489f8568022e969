"""The composition root: the operator's services wired once, and the one typed way to them.

kopf hands every handler its memo, an untyped namespace; handlers reach the services through
`of(memo)`, never through its attributes.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

import aiohttp
import kopf
from kubernetes_asyncio.client import ApiClient

from loraplane.config import Settings
from loraplane.fleet import Fleet, Key
from loraplane.runtime import Runtime
from loraplane.status_writer import StatusWriter
from loraplane.sync import sync_pod


@dataclass(frozen=True)
class Services:
    runtime: Runtime
    status_writer: StatusWriter


def compose(
    api: ApiClient, session: aiohttp.ClientSession, settings: Settings, fleet: Fleet | None = None
) -> Services:
    """The runtime, its pod workers running `sync.sync_pod`, and the status writer."""

    def converge(key: Key) -> Awaitable[bool]:
        return sync_pod(runtime, key)

    runtime = Runtime.create(api, session, settings, converge, fleet)
    return Services(runtime, StatusWriter(runtime))


def keep(memo: kopf.Memo, services: Services) -> None:
    memo.services = services


def of(memo: kopf.Memo) -> Services:
    services = memo.services
    assert isinstance(services, Services), "the start-up handler keeps the services in the memo"
    return services


def kept(memo: kopf.Memo) -> Services | None:
    """The services, when the start-up got as far as making them (for the cleanup)."""
    services = getattr(memo, "services", None)
    return services if isinstance(services, Services) else None

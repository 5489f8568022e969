"""The operator's process-wide runtime: fleet, API client, HTTP session, settings, pod workers.

Built once at start-up by the composition root (`handlers.startup`) and kept in kopf's memo;
handlers and the per-pod sync take it whole. What each part remembers lives with its owner:
the fleet's picture in `Fleet`, what status writes are judged against in `StatusWriter`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from kubernetes_asyncio.client import ApiClient

from loraplane import kube
from loraplane.api.common import StatusModel
from loraplane.config import Settings
from loraplane.fleet import Fleet, Key
from loraplane.merge.book import MergeBook
from loraplane.workers import Converge, Workers

S = TypeVar("S", bound=StatusModel)


@dataclass
class SecretCache:
    """Secret values reused for a while: every sync needs the agent token and the API key."""

    api: ApiClient
    ttl: float
    _values: dict[tuple[str, str, str], tuple[float, str]] = field(default_factory=dict)

    async def value(self, namespace: str, name: str, key: str) -> str | None:
        now = time.monotonic()
        cached = self._values.get((namespace, name, key))
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        secret = await kube.get(self.api, "v1", "Secret", namespace, name)
        raw = ((secret or {}).get("data") or {}).get(key)
        if not raw:
            self._values.pop((namespace, name, key), None)
            return None
        value = base64.b64decode(raw).decode()
        self._values[(namespace, name, key)] = (now, value)
        return value

    def forget(self, namespace: str, name: str, key: str) -> None:
        """The value was refused where it is used: read it again next time."""
        self._values.pop((namespace, name, key), None)


@dataclass
class Runtime:
    fleet: Fleet
    api: ApiClient
    session: aiohttp.ClientSession
    settings: Settings
    secrets: SecretCache
    workers: Workers
    # The status last published per (kind, object). The body a timer sees lags behind our own
    # patch; judging transitions against this instead announces each one once.
    published: dict[tuple[str, Key], StatusModel] = field(default_factory=dict)
    # Base-model reconciles in flight. kopf abandons a running timer at shutdown instead of
    # waiting for it, so the cleanup waits for these before closing the client they write with.
    converging: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # Merged base models' pods and failed merges (spec.model.merge)
    merges: MergeBook = field(default_factory=MergeBook)

    @classmethod
    def create(
        cls,
        api: ApiClient,
        session: aiohttp.ClientSession,
        settings: Settings,
        converge: Converge,
        fleet: Fleet | None = None,
    ) -> Runtime:
        """`converge`: one pod's sync, run by its worker when kicked."""
        return cls(
            fleet=fleet if fleet is not None else Fleet(),
            api=api,
            session=session,
            settings=settings,
            secrets=SecretCache(api, settings.secret_cache_seconds),
            workers=Workers(converge, settings),
        )

    @contextlib.contextmanager
    def reconciling(self) -> Iterator[None]:
        self.converging += 1
        self.settled.clear()
        try:
            yield
        finally:
            self.converging -= 1
            if not self.converging:
                self.settled.set()

    async def settle(self) -> None:
        """Wait for the reconciles in flight to finish (the caller bounds the wait)."""
        if self.converging:
            await self.settled.wait()

    def kick(self, pods: Iterable[Key]) -> None:
        for key in pods:
            if key in self.fleet.pods:
                self.workers.ensure(key).kick()

    def republish(self, kind: str, key: Key, body_status: S, new: S) -> S:
        """Remember `new` as published; returns the status it follows (ours, or the body's)."""
        before = self.published.get((kind, key))
        self.published[(kind, key)] = new
        return before if isinstance(before, type(body_status)) else body_status

    def forget_published(self, kind: str, key: Key) -> None:
        self.published.pop((kind, key), None)

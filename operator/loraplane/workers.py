"""One asyncio task per vLLM pod: converge when kicked, or at the slow periodic resync.

Events (a pod restarted, an adapter changed) kick the pods concerned; nothing polls every
adapter on every pod. A failed run is retried with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from loraplane.config import Settings
from loraplane.fleet import Key

log = logging.getLogger(__name__)


class ServerStarting(Exception):
    """vLLM runs but does not answer /health yet: look again soon, without backing off."""


Converge = Callable[[Key], Awaitable[bool]]  # False: the pod is gone, stop its worker


class PodWorker:
    def __init__(self, converge: Converge, settings: Settings, key: Key) -> None:
        self.converge = converge
        self.settings = settings
        self.key = key
        self.kicked = asyncio.Event()
        self.kicked.set()  # converge once at start
        self.task = asyncio.create_task(self._run(), name=f"pod-sync:{key[0]}/{key[1]}")

    async def _run(self) -> None:
        cfg = self.settings
        backoff = cfg.backoff_initial_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kicked.wait(), timeout=cfg.resync_seconds)
            self.kicked.clear()
            try:
                if not await self.converge(self.key):
                    return
            except asyncio.CancelledError:
                raise
            except ServerStarting:
                await asyncio.sleep(cfg.starting_poll_seconds)
                self.kicked.set()
            except Exception as exc:  # any trouble: report, back off, and try again
                log.info("sync of pod %s/%s: %s (retry in %.0fs)", *self.key, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, cfg.backoff_max_seconds)
                self.kicked.set()
            else:
                backoff = cfg.backoff_initial_seconds

    def kick(self) -> None:
        self.kicked.set()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Workers:
    def __init__(self, converge: Converge, settings: Settings) -> None:
        self.converge = converge
        self.settings = settings
        self._workers: dict[Key, PodWorker] = {}

    def ensure(self, key: Key) -> PodWorker:
        worker = self._workers.get(key)
        if worker is None or worker.task.done():
            worker = self._workers[key] = PodWorker(self.converge, self.settings, key)
        return worker

    async def stop(self, key: Key) -> None:
        worker = self._workers.pop(key, None)
        if worker is not None:
            await worker.stop()

    async def stop_all(self) -> None:
        for key in list(self._workers):
            await self.stop(key)

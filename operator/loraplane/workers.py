"""One asyncio task per vLLM pod: converge when kicked, or at the slow periodic resync.

Events (a pod restarted, an adapter changed) kick the pods concerned; nothing polls every
adapter on every pod. A failed run is retried with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from loraplane import metrics
from loraplane.fleet import Key
from loraplane.sync import ServerStarting, SyncContext, sync_pod

log = logging.getLogger(__name__)

BACKOFF_START = 1.0
BACKOFF_CAP = 30.0
STARTING_POLL = 0.5


class PodWorker:
    def __init__(self, ctx: SyncContext, key: Key) -> None:
        self.ctx = ctx
        self.key = key
        self.kicked = asyncio.Event()
        self.kicked.set()  # converge once at start
        self.task = asyncio.create_task(self._run(), name=f"pod-sync:{key[0]}/{key[1]}")

    async def _run(self) -> None:
        backoff = BACKOFF_START
        while True:
            wait = self.ctx.settings.resync_seconds
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kicked.wait(), timeout=wait)
            self.kicked.clear()
            pod = self.ctx.fleet.pods.get(self.key)
            if pod is None:
                return
            try:
                await sync_pod(self.ctx, pod)
            except asyncio.CancelledError:
                raise
            except ServerStarting:
                await asyncio.sleep(STARTING_POLL)
                self.kicked.set()
            except Exception as exc:  # any trouble: report, back off, and try again
                metrics.POD_SYNCS.labels("error").inc()
                log.info("sync of pod %s/%s: %s (retry in %.0fs)", *self.key, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
                self.kicked.set()
            else:
                metrics.POD_SYNCS.labels("ok").inc()
                backoff = BACKOFF_START

    def kick(self) -> None:
        self.kicked.set()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Workers:
    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx
        self._workers: dict[Key, PodWorker] = {}

    def ensure(self, key: Key) -> PodWorker:
        worker = self._workers.get(key)
        if worker is None or worker.task.done():
            worker = self._workers[key] = PodWorker(self.ctx, key)
        return worker

    def kick(self, key: Key) -> None:
        if key in self.ctx.fleet.pods:
            self.ensure(key).kick()

    def kick_base(self, namespace: str, base_model: str) -> None:
        self.ctx.fleet.touch_base(namespace, base_model)
        for pod in self.ctx.fleet.pods_of(namespace, base_model):
            self.kick((pod.namespace, pod.name))

    async def stop(self, key: Key) -> None:
        worker = self._workers.pop(key, None)
        if worker is not None:
            await worker.stop()

    async def stop_all(self) -> None:
        for key in list(self._workers):
            await self.stop(key)

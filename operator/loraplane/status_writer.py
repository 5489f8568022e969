"""The LoRAAdapter status writer: one queue of adapters whose picture changed, a few writers.

The fleet queues an adapter (`Fleet.wake`) whenever something its status is computed from
changes; a writer takes the one that changed first and is not being written already, computes
its whole status and patches it only when it differs from what the API holds. Changes that land
while a write is in flight coalesce into the next one, and an idle fleet costs nothing: no
per-object timer wakes, no sweep, no write. Nothing in a status depends on the clock alone, so
nothing needs recomputing that no change woke.

The writer is the one owner of what it judges a write against: each adapter's status as the API
last showed it, and the one it last wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from math import inf
from typing import Any, cast

import kopf
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from loraplane import kube, metrics, trace
from loraplane.api import ADAPTER_KIND, API_VERSION, LoRAAdapterStatus
from loraplane.fleet import AdapterView, Key
from loraplane.runtime import Runtime
from loraplane.status import Kept, canonical, whole
from loraplane.status import adapter as adapter_status

log = logging.getLogger(__name__)

# Patch one adapter's status; the API's answer (None: the adapter is gone).
Patch = Callable[[Key, dict[str, Any]], Awaitable[Mapping[str, Any] | None]]


def parse(raw: Any) -> LoRAAdapterStatus:
    try:
        return LoRAAdapterStatus.from_k8s(raw or {})
    except ValidationError:  # a status edited by hand into nonsense: ours replaces it
        return LoRAAdapterStatus()


def _changed(wanted: Mapping[str, Any], there: Mapping[str, Any]) -> str:
    """The status fields a write changes, for its trace span."""
    return ",".join(
        sorted(k for k in wanted.keys() | there.keys() if wanted.get(k) != there.get(k))
    )


def version_of(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):  # opaque in theory: then every view counts
        return 0


def reference(ad: AdapterView) -> dict[str, Any]:
    meta = {"name": ad.name, "namespace": ad.namespace, "uid": ad.uid}
    return {"apiVersion": API_VERSION, "kind": ADAPTER_KIND, "metadata": meta}


class StatusWriter:
    def __init__(self, rt: Runtime, patch: Patch | None = None) -> None:
        self.rt = rt
        self._patch = patch or self._patch_api
        self.busy: set[Key] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.written_at: dict[Key, float] = {}  # monotonic time of each adapter's last write
        self.deferred: set[Key] = set()  # progress held back, queued again when due
        # Each adapter's status as the API last showed it (the watch, or our own write's
        # answer), with the resourceVersion it was seen at; and the one last written (the same
        # object when the watch shows what we wrote).
        self.observed: dict[Key, tuple[int, Kept]] = {}
        self.written: dict[Key, Kept] = {}

    async def _patch_api(self, key: Key, body: dict[str, Any]) -> Mapping[str, Any] | None:
        return await kube.patch_status(
            self.rt.api, API_VERSION, ADAPTER_KIND, *key, body, merge=True
        )

    def observe(self, obj: Mapping[str, Any]) -> None:
        """An adapter as the watch shows it: its status there is what a write is judged against.

        Our own write's echo is recognised by its resourceVersion, without a look at its body. A
        status that is not the one we last wrote (edited by hand, or written before a restart)
        queues the adapter, so it is put right.
        """
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        at = version_of(obj)
        before = self.observed.get(key)
        if before is not None and at <= before[0]:
            return  # our own write's echo, or older: the watch is catching up
        seen = Kept.of(parse(obj.get("status")))
        ours = self.written.get(key)
        if ours is not None and ours.text == seen.text:
            seen = ours  # one copy of what we wrote, not two
        self.observed[key] = (at, seen)
        if seen is not ours:
            self.rt.fleet.wake(key)

    def forget(self, key: Key) -> None:
        self.observed.pop(key, None)
        self.written.pop(key, None)
        self.written_at.pop(key, None)

    async def write(self, key: Key) -> None:
        """Compute the adapter's status; patch it when the API holds another (progress within
        a phase at most every `status_progress_seconds`); announce transitions."""
        rt, fleet = self.rt, self.rt.fleet
        ad = fleet.adapters.get(key)
        if ad is None or ad.deleting or adapter_status.waiting_for_first_look(fleet, ad):
            self.written_at.pop(key, None)
            return
        if key not in self.observed:
            return  # not seen by the watch yet: its status there is what `since` and
            # lastTransitionTime carry over from (after a restart), and `observe` queues it
        held = self.observed[key][1]
        follows = self.written.get(key, held)
        old = follows.model(LoRAAdapterStatus)
        with metrics.RECONCILE_SECONDS.labels(ADAPTER_KIND).time():
            new = adapter_status.compute(fleet, ad, old, rt.settings.pod_status_cap)
        wanted = new.to_k8s()
        kept = Kept(canonical(wanted))
        if kept.text != held.text:
            there = old if follows is held else held.model(LoRAAdapterStatus)
            due = self.written_at.get(key, -inf) + rt.settings.status_progress_seconds
            if time.monotonic() < due and not adapter_status.transition(there, new):
                self._defer(key, due)
                metrics.STATUS_COMPUTATIONS.labels(ADAPTER_KIND, "deferred").inc()
                return
            changed = _changed(wanted, there.to_k8s()) if trace.enabled() else None
            with trace.span(
                "status", adapter=ad.name, phase=new.phase, ready=new.ready, changed=changed
            ):
                written = await self._patch(key, {"status": whole(new)})
            if written is None:
                return  # the adapter is gone
            self.observed[key] = (version_of(written), kept)
            self.written_at[key] = time.monotonic()
            metrics.STATUS_COMPUTATIONS.labels(ADAPTER_KIND, "written").inc()
        else:
            kept = held
            metrics.STATUS_COMPUTATIONS.labels(ADAPTER_KIND, "unchanged").inc()
        self.written[key] = kept
        for ev in adapter_status.events(old, new):
            kopf.event(
                kopf.Body(cast(kopf.RawBody, reference(ad))),
                type=ev.type,
                reason=ev.reason,
                message=ev.message,
            )

    def _defer(self, key: Key, due: float) -> None:
        if key in self.deferred:
            return
        self.deferred.add(key)

        def wake() -> None:
            self.deferred.discard(key)
            self.rt.fleet.wake(key)

        asyncio.get_running_loop().call_later(max(due - time.monotonic(), 0.0), wake)

    def start(self) -> None:
        """Start once, from a kopf handler: its tasks inherit the context kopf posts Events
        through (kopf sets it for each object's handlers, not for start-up activities)."""
        if self.tasks:
            return
        n = self.rt.settings.status_write_concurrency
        self.tasks = [asyncio.create_task(self._writer(), name=f"status-{i}") for i in range(n)]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _next(self) -> Key:
        fleet = self.rt.fleet
        while (key := fleet.take_stale(self.busy)) is None:
            fleet.stale_event.clear()
            await fleet.stale_event.wait()
        return key

    async def _writer(self) -> None:
        while True:
            key = await self._next()
            self.busy.add(key)
            try:
                await self.write(key)
            except ApiException as exc:
                log.info("status of %s/%s: API error %s; again soon", *key, exc.status)
                await asyncio.sleep(self.rt.settings.backoff_initial_seconds)
                self.rt.fleet.wake(key)
            except Exception:  # a bug must not stop the writer of every other status
                log.exception("status of %s/%s", *key)
            finally:
                self.busy.discard(key)
                if key in self.rt.fleet.stale:
                    self.rt.fleet.stale_event.set()  # queued again while this wrote it

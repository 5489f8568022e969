"""The runtime's shutdown wait: the cleanup closes the API client only after reconciles end."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from kubernetes_asyncio.client import ApiClient

from loraplane import services
from loraplane.config import Settings
from loraplane.runtime import Runtime


async def _runtime() -> Runtime:
    return services.compose(ApiClient(), aiohttp.ClientSession(), Settings()).runtime


async def _close(rt: Runtime) -> None:
    await rt.session.close()
    await rt.api.close()


def test_settle_waits_for_the_reconcile_in_flight() -> None:
    async def run() -> list[str]:
        rt, order = await _runtime(), []

        async def reconcile() -> None:
            with rt.reconciling():
                await asyncio.sleep(0.05)
                order.append("reconciled")

        task = asyncio.create_task(reconcile())
        await asyncio.sleep(0)  # the reconcile has started
        async with asyncio.timeout(5.0):
            await rt.settle()
        order.append("settled")
        await task
        await _close(rt)
        return order

    assert asyncio.run(run()) == ["reconciled", "settled"]


def test_settle_returns_at_once_when_idle_and_leaves_a_hung_reconcile_to_the_timeout() -> None:
    async def run() -> tuple[bool, int]:
        rt = await _runtime()
        async with asyncio.timeout(0.01):
            await rt.settle()  # nothing in flight: no wait
        release = asyncio.Event()

        async def hung() -> None:
            with rt.reconciling():
                await release.wait()

        task = asyncio.create_task(hung())
        await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await rt.settle()
        still = not task.done()
        release.set()
        await task
        await _close(rt)
        return still, rt.converging

    assert asyncio.run(run()) == (True, 0)


def test_no_changing_handler_but_the_adapters_deletion_needs_a_stored_diff() -> None:
    """The operator stores no last-handled configuration (handlers/startup.NoDiffBase): a create,
    update or resume handler added later would see every event as a creation."""
    import kopf

    import loraplane.handlers  # noqa: F401  (registers the handlers)

    changing = kopf.get_default_registry()._changing.get_all_handlers()
    assert [(h.id, h.reason) for h in changing] == [("delete_adapter", kopf.Reason.DELETE)]

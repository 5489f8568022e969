"""The wait at the top of the base model's reconcile: a change at once, progress after a gap."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits.aioenums import FlagSetter

from loraplane.handlers.wake import changed_or_period

GAP = 60.0  # longer than any test waits: progress alone never returns within the test


def test_progress_waits_for_the_gap_and_a_change_ends_the_wait() -> None:
    async def run() -> tuple[bool, bool]:
        changed, progress = asyncio.Event(), asyncio.Event()
        stopper: FlagSetter = FlagSetter()  # type: ignore[type-arg]
        progress.set()
        wait = asyncio.create_task(
            changed_or_period(changed, stopper.async_waiter, 120.0, progress, GAP)
        )
        await asyncio.sleep(0.05)
        held = not wait.done()  # progress alone: within the gap, no run
        changed.set()
        woke = await asyncio.wait_for(wait, GAP / 2)
        cleared = not changed.is_set() and not progress.is_set()  # that run saw both
        return held, woke and cleared

    held, woke = asyncio.run(run())
    assert held
    assert woke


def test_stopping_ends_the_wait_with_false() -> None:
    async def run() -> bool:
        stopper: FlagSetter = FlagSetter()  # type: ignore[type-arg]
        wait = asyncio.create_task(
            changed_or_period(asyncio.Event(), stopper.async_waiter, 120.0, asyncio.Event(), GAP)
        )
        await asyncio.sleep(0.01)
        stopper.set()
        return await asyncio.wait_for(wait, GAP / 2)

    assert asyncio.run(run()) is False

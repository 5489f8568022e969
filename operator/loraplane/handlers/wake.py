"""The wait at the top of an event-driven timer: a change of the object's picture, or a period."""

from __future__ import annotations

import asyncio

import kopf


async def changed_or_period(
    changed: asyncio.Event,
    stopped: kopf.DaemonStopped,
    period: float,
    progress: asyncio.Event,
    gap: float,
) -> bool:
    """Wait for `changed`, for `progress` and then `gap` more, or for `period`; clear both;
    False when the operator is stopping.

    kopf timers cannot be woken, so each run of ours waits inside: the status follows a change
    within milliseconds, progress (counts moving in a burst) within `gap`, while an idle object
    costs one wake-up per period.
    """

    async def stopping() -> None:
        await stopped.wait()

    async def progressed() -> None:
        await progress.wait()
        await asyncio.sleep(gap)

    waits = [
        asyncio.create_task(changed.wait()),
        asyncio.create_task(stopping()),
        asyncio.create_task(progressed()),
    ]
    await asyncio.wait(waits, timeout=period, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    changed.clear()
    progress.clear()
    return not stopped

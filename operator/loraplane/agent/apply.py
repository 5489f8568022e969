"""The agent's apply: fetch, verify and register the adapters the operator asks for, one line each.

The pod's own vLLM is on loopback, so a registration costs the operator nothing beyond its
share of one call per pod. Each adapter is fetched into the store (verified once per version:
the store keeps what it verified) and, when the operator pinned that very version, loaded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from loraplane.agent import protocol
from loraplane.agent.store import AdapterStore, Rejected, VersionUnavailable
from loraplane.vllm.client import VLLMClient, same_path
from loraplane.vllm.errors import VLLMError, error_class


async def apply(
    store: AdapterStore, vllm: VLLMClient, req: protocol.ApplyRequest
) -> AsyncGenerator[protocol.Applied, None]:
    """Each adapter's outcome as soon as it is known, `req.concurrency` at a time."""
    done: asyncio.Queue[protocol.Applied] = asyncio.Queue()
    slots = asyncio.Semaphore(req.concurrency)

    async def one(item: protocol.ApplyItem) -> None:
        async with slots:
            try:
                result = await _one(store, vllm, item)
            except Exception as exc:  # a bug on one adapter must not lose the others' answers
                result = protocol.Applied(name=item.name, error=f"{type(exc).__name__}: {exc}")
            await done.put(result)

    tasks = [asyncio.create_task(one(item)) for item in req.adapters]
    try:
        for _ in tasks:
            yield await done.get()
    finally:
        for task in tasks:
            task.cancel()


async def _one(store: AdapterStore, vllm: VLLMClient, item: protocol.ApplyItem) -> protocol.Applied:
    started = time.monotonic()
    try:
        fetched = await store.fetch(item)
    except Rejected as exc:
        rejection = protocol.Rejection(
            reason=exc.reason, message=exc.message, findings=exc.findings
        )
        return protocol.Applied(name=item.name, rejected=rejection)
    except VersionUnavailable as exc:
        unavailable = protocol.Unavailable(reason=exc.reason, message=exc.message)
        return protocol.Applied(name=item.name, unavailable=unavailable)
    out = protocol.Applied(
        name=item.name, fetched=fetched, fetch_seconds=time.monotonic() - started
    )
    # Only the version the operator pinned: a following adapter's new files are told first,
    # and every pod then loads the one the operator pins.
    pinned = item.expected_digest is not None and fetched.summary.digest == item.expected_digest
    if not item.load or not pinned or same_path(item.registered_path, fetched.path):
        return out
    started = time.monotonic()
    try:
        await vllm.load_adapter(
            item.served_name, fetched.path, inplace=item.registered_path is not None
        )
    except VLLMError as exc:
        out.load_failure = protocol.LoadFailure(
            reason=str(exc.reason),
            message=exc.message,
            permanent=exc.permanent,
            error_class=error_class(exc) if exc.status is not None else "unreachable",
        )
    else:
        out.loaded = True
    out.load_seconds = time.monotonic() - started
    return out

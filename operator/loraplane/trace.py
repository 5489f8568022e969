"""Spans of the operator's adapter work as structured debug lines, for a timeline of a burst.

One JSON object per line on logger `loraplane.trace`, at DEBUG: `step` (event, sync, list,
apply, publish, gate, status, ...), `start` (Unix time), `seconds`, `outcome` (ok, or the
exception's name) and the step's own fields (pod, adapter). `Settings.trace` turns the logger on
whatever the log level; off, a span costs one level check. `bench/timeline.py` reads them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("loraplane.trace")

Field = str | int | float | None


def enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)


def _emit(step: str, start: float, seconds: float, outcome: str, fields: dict[str, Field]) -> None:
    line = {"step": step, "start": round(start, 6), "seconds": round(seconds, 6)}
    log.debug("%s", json.dumps({**line, "outcome": outcome, **fields}))


@contextmanager
def span(step: str, **fields: Field) -> Iterator[dict[str, Field]]:
    """Time the block; the fields it yields may be filled in before it ends."""
    if not enabled():
        yield fields
        return
    start = time.time()
    outcome = "ok"
    try:
        yield fields
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        _emit(step, start, time.time() - start, outcome, fields)


def mark(step: str, **fields: Field) -> None:
    """An instant: a watch event seen, say."""
    if enabled():
        _emit(step, time.time(), 0.0, "ok", fields)

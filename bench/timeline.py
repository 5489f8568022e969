"""Where a burst's time goes, read from the operator's trace lines (`LORAPLANE_TRACE=true`).

Each line of logger `loraplane.trace` is one JSON span (see operator/loraplane/trace.py). This
folds the spans of one burst into a breakdown per step: how many, the time they add up to, and
when the first began and the last ended after the burst's start, so serialised steps and gaps
show.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = " loraplane.trace "


def spans(log_text: str) -> list[dict[str, Any]]:
    out = []
    for line in log_text.splitlines():
        at = line.find(MARKER)
        if at < 0:
            continue
        try:
            out.append(json.loads(line[at + len(MARKER) :]))
        except json.JSONDecodeError:
            continue
    return out


@dataclass
class Step:
    count: int
    total: float  # seconds the spans add up to
    busy: float  # seconds at least one such span was open
    first: float  # start of the first, after the burst's start
    last: float  # end of the last
    median: float


def _busy(intervals: Iterable[tuple[float, float]]) -> float:
    busy, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy


def breakdown(items: list[dict[str, Any]], start: float) -> dict[str, Step]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in items:
        if s["start"] + s["seconds"] >= start:
            key = s["step"] if s["step"] != "event" else f"event {s.get('kind')}"
            by[key].append(s)
    out = {}
    for step, group in by.items():
        ivals = [(s["start"] - start, s["start"] - start + s["seconds"]) for s in group]
        out[step] = Step(
            count=len(group),
            total=sum(s["seconds"] for s in group),
            busy=_busy(ivals),
            first=min(a for a, _ in ivals),
            last=max(b for _, b in ivals),
            median=statistics.median(s["seconds"] for s in group),
        )
    return out


def report(
    title: str, items: list[dict[str, Any]], start: float, ready: float | None = None
) -> str:
    """A table of the steps after `start` (Unix time); `ready`: seconds until all were Ready."""
    steps = breakdown(items, start)
    ready_writes = [
        s["start"] - start
        for s in items
        if s["step"] == "status" and s.get("phase") == "Ready" and s["start"] >= start
    ]
    seen = "" if ready is None else f"; all Ready seen by a watch at {ready:.2f}"
    lines = [
        f"{title}: timeline from the operator's trace (seconds after the start{seen})",
        f"  {'step':<16}{'count':>6}{'sum s':>9}{'busy s':>9}{'median ms':>11}"
        f"{'first':>8}{'last':>8}",
    ]
    for name, st in sorted(steps.items(), key=lambda kv: kv[1].first):
        lines.append(
            f"  {name:<16}{st.count:>6}{st.total:>9.2f}{st.busy:>9.2f}{st.median * 1000:>11.1f}"
            f"{st.first:>8.2f}{st.last:>8.2f}"
        )
    if ready_writes:
        lines.append(
            f"  Ready statuses decided from {min(ready_writes):.2f} to {max(ready_writes):.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m bench.timeline [LOG]`: the breakdown of a log (or stdin) since its first span."""
    text = Path(argv[0]).read_text(errors="replace") if argv else sys.stdin.read()
    items = spans(text)
    if not items:
        print("no loraplane.trace lines: run the operator with LORAPLANE_TRACE=true (chart: trace)")
        return 1
    print(report("trace", items, min(s["start"] for s in items)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

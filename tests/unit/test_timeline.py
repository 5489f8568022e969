"""bench/timeline.py: a burst's trace lines folded into a breakdown per step."""

from __future__ import annotations

import json

from bench import timeline


def _line(step: str, start: float, seconds: float, **fields: object) -> str:
    body = {"step": step, "start": start, "seconds": seconds, "outcome": "ok", **fields}
    return f"2026-12-02 10:00:00,000 DEBUG loraplane.trace {json.dumps(body)}"


LOG = "\n".join(
    [
        "2026-12-02 10:00:00,000 INFO kopf.activities.startup Activity 'configure' succeeded.",
        _line("fetch", 100.0, 1.0, pod="p0"),
        _line("fetch", 100.5, 1.0, pod="p1"),  # overlaps the first: busy 1.5 s, not 2 s
        _line("load", 102.0, 0.5),
        _line("status", 103.0, 0.1, phase="Ready"),
        "2026-12-02 10:00:00,000 DEBUG loraplane.trace {not json",
    ]
)


def test_spans_are_read_from_the_trace_lines_only() -> None:
    assert [s["step"] for s in timeline.spans(LOG)] == ["fetch", "fetch", "load", "status"]


def test_overlapping_spans_count_once_in_busy_time() -> None:
    steps = timeline.breakdown(timeline.spans(LOG), 100.0)
    assert steps["fetch"].count == 2
    assert steps["fetch"].total == 2.0
    assert steps["fetch"].busy == 1.5
    assert (steps["load"].first, steps["load"].last) == (2.0, 2.5)


def test_the_report_says_when_the_ready_statuses_were_decided() -> None:
    text = timeline.report("burst", timeline.spans(LOG), 100.0, 3.2)
    assert "all Ready seen by a watch at 3.20" in text
    assert "Ready statuses decided from 3.00 to 3.00" in text

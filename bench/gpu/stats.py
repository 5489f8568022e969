"""Results of a kit run: one JSON line per measured run, and the tables made from them.

A run of the kit appends every measurement to `results.jsonl` as it goes (a run cut short keeps
what it measured) and prints the tables at the end; `python -m bench.gpu.stats FILE` prints them
again from a saved file. Pure (stdlib only), unit-tested in tests/unit.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BATCH_METRICS = ("tokens_per_s", "ms_per_step")
SINGLE_METRICS = ("ttft_ms", "ms_per_token")


@dataclass(frozen=True)
class Record:
    phase: str
    engine: str
    row: str  # what was asked: "base", "r16 all x1", ...
    load: str  # "batch" or "single"
    run: int  # 0 .. n-1 (warm-ups are not recorded)
    values: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def read(lines: Iterable[str]) -> list[Record]:
    out = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            if "load" in d:
                out.append(Record(**d))
    return out


@dataclass(frozen=True)
class Summary:
    engine: str
    row: str
    load: str
    medians: dict[str, float]
    n: int
    spread: dict[str, float]  # (max - min) / median, per metric


def summarize(records: Sequence[Record]) -> list[Summary]:
    """One summary per (engine, row, load), in first-seen order."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.engine, r.row, r.load), []).append(r)
    out = []
    for (engine, row, load), recs in groups.items():
        metrics = sorted({k for r in recs for k in r.values})
        medians, spread = {}, {}
        for m in metrics:
            values = [r.values[m] for r in recs if m in r.values]
            mid = statistics.median(values)
            medians[m] = mid
            spread[m] = (max(values) - min(values)) / mid if mid else 0.0
        out.append(Summary(engine, row, load, medians, len(recs), spread))
    return out


def change(value: float, reference: float) -> str:
    if not reference:
        return "-"
    pct = 100 * (value / reference - 1)
    return f"{pct:+.1f}%"


def table(summaries: Sequence[Summary], load: str, reference: tuple[str, str] | None = None) -> str:
    """A markdown table of one load's rows; `reference` (engine, row) gives the 'vs' column."""
    rows = [s for s in summaries if s.load == load]
    if not rows:
        return ""
    ref = next((s for s in rows if reference and (s.engine, s.row) == reference), None)
    if load == "batch":
        head = "| engine | case | tokens/s | ms per step | vs reference | n | spread |"
        key = "tokens_per_s"
    else:
        head = (
            "| engine | case | time to first token (ms) | ms per token | vs reference | n "
            "| spread |"
        )
        key = "ms_per_token"
    lines = [head, "|" + " --- |" * 7]
    for s in rows:
        a, b = (
            (s.medians.get("tokens_per_s", 0), s.medians.get("ms_per_step", 0))
            if load == "batch"
            else (s.medians.get("ttft_ms", 0), s.medians.get("ms_per_token", 0))
        )
        vs = change(s.medians.get(key, 0), ref.medians.get(key, 0)) if ref else "-"
        fmt_a = f"{a:.0f}" if load == "batch" else f"{a:.1f}"
        lines.append(
            f"| {s.engine} | {s.row} | {fmt_a} | {b:.2f} | {vs} | {s.n} | "
            f"{100 * s.spread.get(key, 0):.1f}% |"
        )
    return "\n".join(lines)


def paired(records: Sequence[Record], a: str, b: str, row: str, metric: str) -> list[float]:
    """Ratios a/b of the same row's runs, run by run (the kit interleaves a and b)."""

    def runs(engine: str) -> dict[int, float]:
        return {
            r.run: r.values[metric]
            for r in records
            if (r.engine, r.row) == (engine, row) and metric in r.values
        }

    first, second = runs(a), runs(b)
    return [first[i] / second[i] for i in sorted(set(first) & set(second)) if second[i]]


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    records = read(Path(args[0]).read_text().splitlines())
    summaries = summarize(records)
    for load in ("batch", "single"):
        text = table(summaries, load)
        if text:
            print(text, end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

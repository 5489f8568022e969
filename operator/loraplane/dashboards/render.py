"""docs/dashboard.png: one small plot per dashboard panel, drawn from real query results.

Grafana cannot run here, so the picture of the dashboard is drawn from what its queries return:

    python -m loraplane.dashboards.render --prometheus http://127.0.0.1:9090 --minutes 30 \\
        --save-results results.json --out docs/dashboard.png
    python -m loraplane.dashboards.render --results results.json --out docs/dashboard.png

Results are a JSON object: panel title -> one Prometheus HTTP API response per query of the
panel, in order (`/api/v1/query_range`: resultType matrix). Every panel must be there.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loraplane.dashboards.dashboard import TITLE, Panel, Query, expand, panels

Results = Mapping[str, Sequence[Mapping[str, Any]]]
Series = Mapping[str, Any]

COLUMNS = 3
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Longer cell values (digests, lists of adapters) are cut so a table fits its small plot.
CELL_CHARS = 16


def _matrix(response: Mapping[str, Any], where: str) -> list[Series]:
    data = response.get("data")
    if response.get("status") != "success" or not isinstance(data, Mapping):
        raise ValueError(f"{where}: not a successful Prometheus API response: {response!r:.200}")
    if data.get("resultType") != "matrix":
        raise ValueError(f"{where}: resultType {data.get('resultType')!r}, expected matrix")
    result: list[Series] = data["result"]
    return result


def legend(q: Query, labels: Mapping[str, str]) -> str:
    """A series' name as Grafana writes it from the query's legendFormat."""
    if q.legend and q.legend != "__auto":
        return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), q.legend).strip()
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
    return labels.get("__name__", "") + "{" + inner + "}"


def _points(series: Series, end: float) -> tuple[list[float], list[float]]:
    """(minutes before `end`, values): the x axis reads "minutes ago", whatever the clock."""
    values = series["values"]
    return [(float(t) - end) / 60 for t, _ in values], [float(v) for _, v in values]


def _last(series: Series) -> float:
    return float(series["values"][-1][1])


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def _timeseries(ax: Axes, p: Panel, per_query: list[list[Series]]) -> None:
    drawn = 0
    end = max((float(s["values"][-1][0]) for r in per_query for s in r), default=0.0)
    for q, result in zip(p.queries, per_query, strict=True):
        for s in result:
            ax.plot(*_points(s, end), label=legend(q, s["metric"]), linewidth=1.2)
            drawn += 1
    ax.set_xlabel("minutes", fontsize=7)
    ax.tick_params(labelsize=7)
    if p.unit != "short":
        ax.set_ylabel({"s": "seconds", "ops": "per second"}.get(p.unit, p.unit), fontsize=7)
    if drawn:
        ax.legend(fontsize=6, loc="upper left")
    else:
        _no_data(ax)


def _stat(ax: Axes, p: Panel, per_query: list[list[Series]]) -> None:
    ax.set_axis_off()
    cells = [
        (legend(q, s["metric"]), _number(_last(s)))
        for q, result in zip(p.queries, per_query, strict=True)
        for s in result
    ]
    if not cells:
        _no_data(ax)
    for i, (name, value) in enumerate(cells):
        x = (i + 0.5) / len(cells)
        ax.text(x, 0.55, value, ha="center", va="center", fontsize=26, transform=ax.transAxes)
        ax.text(x, 0.2, name, ha="center", va="center", fontsize=9, transform=ax.transAxes)


def _current(result: list[Series]) -> list[Series]:
    """The series present at the last step: a table shows now, not every label set seen."""
    if not result:
        return []
    end = max(float(s["values"][-1][0]) for s in result)
    return [s for s in result if float(s["values"][-1][0]) == end]


def _cell(text: str) -> str:
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _table(ax: Axes, p: Panel, per_query: list[list[Series]]) -> None:
    # Like the dashboard's merge transformation: the first query's series are the rows, the
    # other queries' values join them on the labels they share.
    ax.set_axis_off()
    rows = _current(per_query[0])
    valued = [(q, _current(r)) for q, r in zip(p.queries, per_query, strict=True) if q.legend]
    header = [*p.columns, *(q.legend for q, _ in valued)]
    body = []
    for row in rows:
        labels = row["metric"]
        cells = [labels.get(c, "") for c in p.columns]
        for _, result in valued:
            match = [
                s
                for s in result
                if all(labels.get(k) == v for k, v in s["metric"].items() if k in labels)
            ]
            cells.append(_number(_last(match[0])) if match else "")
        body.append([_cell(c) for c in cells])
    if not body:
        _no_data(ax)
        return
    tab = ax.table(cellText=body, colLabels=header, loc="upper center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(6)
    tab.auto_set_column_width(list(range(len(header))))


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="grey")


def figure(results: Results) -> Figure:
    """One plot per panel, titled as in the dashboard, in dashboard order."""
    all_panels = panels()
    titles = {p.title for p in all_panels}
    missing = [p.title for p in all_panels if p.title not in results]
    unknown = sorted(set(results) - titles)
    if missing or unknown:
        raise ValueError(f"results do not match the panels: missing {missing}, unknown {unknown}")
    rows = math.ceil(len(all_panels) / COLUMNS)
    fig = Figure(figsize=(5.2 * COLUMNS, 3.2 * rows), layout="constrained")
    fig.suptitle(TITLE)
    for i, p in enumerate(all_panels):
        responses = results[p.title]
        if len(responses) != len(p.queries):
            raise ValueError(f"{p.title!r}: {len(responses)} results for {len(p.queries)} queries")
        per_query = [_matrix(r, f"{p.title!r} query {j}") for j, r in enumerate(responses)]
        ax = fig.add_subplot(rows, COLUMNS, i + 1)
        ax.set_title(p.title, fontsize=9)
        {"timeseries": _timeseries, "stat": _stat, "table": _table}[p.kind](ax, p, per_query)
    return fig


def render(results: Results, out: Path) -> None:
    fig = figure(results)
    FigureCanvasAgg(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def query_range(
    prometheus: str, expr: str, start: float, end: float, step: float
) -> dict[str, Any]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    url = f"{prometheus.rstrip('/')}/api/v1/query_range?{params}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        doc: dict[str, Any] = json.load(resp)
    return doc


def collect(
    prometheus: str,
    start: float,
    end: float,
    step: float = 15,
    values: Mapping[str, Sequence[str]] | None = None,
    rate_interval: str = "1m",
) -> dict[str, list[dict[str, Any]]]:
    """Every panel's queries, expanded as Grafana would (`values`: the variables' selection,
    All by default), run over [start, end] against `prometheus`."""
    return {
        p.title: [
            query_range(prometheus, expand(q.expr, values, rate_interval), start, end, step)
            for q in p.queries
        ]
        for p in panels()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loraplane.dashboards.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", type=Path, help="query results saved as JSON")
    source.add_argument("--prometheus", help="query this Prometheus (base URL) instead")
    parser.add_argument("--minutes", type=float, default=30, help="time range, up to now")
    parser.add_argument("--step", type=float, default=15, help="seconds between points")
    parser.add_argument("--save-results", type=Path, help="also write the results fetched")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    results: Results
    if args.results is not None:
        results = json.loads(args.results.read_text())
    else:
        end = time.time()
        results = collect(args.prometheus, end - 60 * args.minutes, end, args.step)
        if args.save_results is not None:
            args.save_results.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    render(results, args.out)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

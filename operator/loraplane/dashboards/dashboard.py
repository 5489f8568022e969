"""The Grafana dashboard "loraplane: LoRA adapters", built with grafana-foundation-sdk.

The panels are declared as data (`ROWS`), then turned into the SDK's builders by `build()`. The
same data drives the query checks and `render.py`, which draws docs/dashboard.png from the results
of these queries against a real Prometheus.

Series come from three scrapes: the operator's /metrics, whose own `namespace` label must win
over the target's (the chart's monitor for the operator sets honorLabels); each vLLM pod's
/metrics (`vllm:lora_requests_info`, `vllm:request_success_total`), where the PodMonitor adds
`namespace` and `pod` and copies the pod label loraplane.dev/base-model into `base_model`; and
each pod's agent (engine residency), which labels its series itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

UID = "loraplane-adapters"
TITLE = "loraplane: LoRA adapters"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# With "All" selected Grafana sends this instead of the list of every value, so series of
# adapters that are gone (still in the time range) are shown too.
ALL_VALUE = ".*"

PanelKind = Literal["timeseries", "stat", "table"]


@dataclass(frozen=True)
class Variable:
    """A query variable: the values of `label` on the series `selector` selects."""

    name: str
    label: str
    selector: str

    @property
    def query(self) -> str:
        return f"label_values({self.selector}, {self.name})"


# Chained: each one lists only what the variables before it leave selected.
VARIABLES = (
    Variable("namespace", "Namespace", "loraplane_adapter_info"),
    Variable("base_model", "Base model", 'loraplane_adapter_info{namespace=~"$namespace"}'),
    Variable(
        "adapter",
        "Adapter",
        'loraplane_adapter_info{namespace=~"$namespace", base_model=~"$base_model"}',
    ),
)

ADAPTERS = 'namespace=~"$namespace", base_model=~"$base_model", adapter=~"$adapter"'
PODS = 'namespace=~"$namespace", base_model=~"$base_model"'
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Query:
    """One PromQL target. `legend` is Grafana's legendFormat; in a table, its column name (a
    query with no legend there only brings its labels)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    kind: PanelKind
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 8
    # Tables: the labels shown as columns, in order (the value columns follow).
    columns: tuple[str, ...] = ()
    # Stats: the legends of values that are bad when above zero (drawn red, others green).
    alarming: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _series(metric: str, selector: str) -> str:
    return f"{metric}{{{selector}}}" if selector else metric


def _rate(metric: str, by: str, selector: str = ADAPTERS) -> str:
    return f"sum by ({by}) (rate({_series(metric, selector)}{RATE}))"


def _quantile(q: float, metric: str, by: str = "", selector: str = ADAPTERS) -> str:
    labels = f"{by}, le" if by else "le"
    buckets = _series(f"{metric}_bucket", selector)
    return f"histogram_quantile({q}, sum by ({labels}) (rate({buckets}{RATE})))"


def _by_adapter(metric: str) -> str:
    # The operator exports one series per adapter; `max` drops the scrape's job/instance/pod
    # labels so a table can join the queries on the adapter's own labels.
    return f"max by (namespace, base_model, adapter) ({metric}{{{ADAPTERS}}})"


# Engine (LRU) evictions of the selected adapters per finished request, by base model and tier:
# the request count is vLLM's own, per pod; the evictions are the agents' (reason lru).
ENGINE_EVICTIONS_PER_REQUEST = (
    "sum by (namespace, base_model, tier) "
    f'(rate(loraplane_adapter_evictions_total{{reason="lru", {ADAPTERS}}}{RATE})) '
    "/ ignoring (tier) group_left sum by (namespace, base_model) "
    f"(rate(vllm:request_success_total{{{PODS}}}{RATE}))"
)

ROWS: tuple[Row, ...] = (
    Row(
        "Adapters",
        (
            Panel(
                "Adapter readiness",
                "stat",
                "LoRAAdapters in the selection whose Ready condition is True, and the others "
                "(Pending, Loading, Degraded or Failed).",
                (
                    Query(f"sum(loraplane_adapter_ready{{{ADAPTERS}}})", "Ready"),
                    Query(f"sum(loraplane_adapter_ready{{{ADAPTERS}}} == bool 0)", "Not Ready"),
                ),
                width=6,
                alarming=("Not Ready",),
            ),
            Panel(
                "Adapter inventory",
                "table",
                "Every LoRAAdapter: the name clients put in `model`, its version, and on how "
                "many of its base model's pods it is registered.",
                (
                    Query(
                        "max by (namespace, base_model, adapter, served_name, rank, revision, "
                        f"digest) (loraplane_adapter_info{{{ADAPTERS}}})"
                    ),
                    Query(_by_adapter("loraplane_adapter_ready"), "Ready"),
                    Query(_by_adapter("loraplane_adapter_registered_replicas"), "Registered"),
                    Query(_by_adapter("loraplane_adapter_desired_replicas"), "Desired"),
                    Query(_by_adapter("loraplane_adapter_size_bytes"), "Size (bytes)"),
                ),
                width=18,
                columns=(
                    "namespace",
                    "base_model",
                    "adapter",
                    "served_name",
                    "rank",
                    "revision",
                    "digest",
                ),
            ),
            Panel(
                "Registered and desired replicas",
                "timeseries",
                "Pods each adapter is placed on (desired) and pods that serve its current "
                "version (registered). A gap that stays open is LoRAAdapterUnderReplicated.",
                (
                    Query(
                        "sum by (namespace, adapter) "
                        f"(loraplane_adapter_registered_replicas{{{ADAPTERS}}})",
                        "{{adapter}} registered",
                    ),
                    Query(
                        "sum by (namespace, adapter) "
                        f"(loraplane_adapter_desired_replicas{{{ADAPTERS}}})",
                        "{{adapter}} desired",
                    ),
                ),
                width=24,
            ),
        ),
    ),
    Row(
        "Loads",
        (
            Panel(
                "Loads per second",
                "timeseries",
                "Adapter load calls to vLLM servers, by result: success, rejected (vLLM or "
                "the pre-flight checks refused the files) or error (the call failed).",
                (
                    Query(
                        _rate("loraplane_adapter_loads_total", "adapter, result"),
                        "{{adapter}} {{result}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Fetch latency p50/p95 (agent)",
                "timeseries",
                "Time the pod's agent took to fetch and verify an adapter's files.",
                (
                    Query(_quantile(0.5, "loraplane_adapter_fetch_duration_seconds"), "p50"),
                    Query(_quantile(0.95, "loraplane_adapter_fetch_duration_seconds"), "p95"),
                ),
                unit="s",
            ),
            Panel(
                "vLLM load latency p50/p95",
                "timeseries",
                "Time of vLLM's POST /v1/load_lora_adapter call.",
                (
                    Query(_quantile(0.5, "loraplane_adapter_vllm_load_duration_seconds"), "p50"),
                    Query(_quantile(0.95, "loraplane_adapter_vllm_load_duration_seconds"), "p95"),
                ),
                unit="s",
            ),
            Panel(
                "Failures by reason",
                "timeseries",
                "Loads that did not succeed, by result, and adapters refused by the operator's "
                "pre-flight checks, by reason.",
                (
                    Query(
                        _rate(
                            "loraplane_adapter_loads_total",
                            "result",
                            f'{ADAPTERS}, result!="success"',
                        ),
                        "load {{result}}",
                    ),
                    Query(
                        _rate("loraplane_adapter_validation_failures_total", "reason"),
                        "validation {{reason}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Unloads by reason",
                "timeseries",
                "Adapters unregistered from a vLLM server, by reason.",
                (Query(_rate("loraplane_adapter_unloads_total", "reason"), "{{reason}}"),),
                unit="ops",
            ),
        ),
    ),
    Row(
        "Churn",
        (
            Panel(
                "Evictions by tier",
                "timeseries",
                "Adapters displaced: from a server by the operator's per-replica cap (tier "
                "server), or from GPU or CPU memory by vLLM's LRU (tiers gpu, cpu). Rising "
                "evictions of the same adapters are LoRAAdapterThrashing.",
                (
                    Query(
                        _rate("loraplane_adapter_evictions_total", "tier, reason"),
                        "{{tier}} ({{reason}})",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Re-registrations by cause",
                "timeseries",
                "Adapters put back on a server that lost them: its container restarted, a new "
                "pod, or drift seen by the periodic resync.",
                (
                    Query(
                        _rate("loraplane_adapter_reregistrations_total", "cause"),
                        "{{cause}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "In-flight adapters per pod (vLLM)",
                "table",
                "vLLM's own view of each pod: adapters with running or waiting requests "
                "(activity, not what is resident in memory), from its latest "
                "vllm:lora_requests_info sample.",
                (Query(f"topk by (namespace, pod) (1, vllm:lora_requests_info{{{PODS}}})"),),
                columns=(
                    "namespace",
                    "base_model",
                    "pod",
                    "running_lora_adapters",
                    "waiting_lora_adapters",
                    "max_lora",
                ),
            ),
        ),
    ),
    Row(
        "Engine residency",
        (
            Panel(
                "Resident adapters by tier",
                "timeseries",
                "Adapters whose weights sit in the engines' GPU slots and CPU caches, summed over "
                "the base model's pods, beside the capacity (--max-loras, --max-cpu-loras). "
                "From loraplane's vLLM plugin, through each pod's agent.",
                (
                    Query(
                        f"sum by (base_model, tier) (loraplane_adapter_resident{{{ADAPTERS}}})",
                        "{{base_model}} {{tier}}",
                    ),
                    Query(
                        f"sum by (base_model, tier) (loraplane_engine_lora_slots{{{PODS}}})",
                        "{{base_model}} {{tier}} capacity",
                    ),
                ),
            ),
            Panel(
                "Engine evictions per request",
                "timeseries",
                "LRU evictions from GPU slots and CPU caches per finished request "
                "(vllm:request_success_total). Near zero: the adapters in use fit. Rising: "
                "requests wait for loads (LoRAEngineThrashing).",
                (
                    Query(
                        f"{ENGINE_EVICTIONS_PER_REQUEST}",
                        "{{base_model}} {{tier}}",
                    ),
                ),
            ),
            Panel(
                "Disk loads by adapter",
                "timeseries",
                "Reads of adapters' files into the engines' CPU caches: the first after each "
                "registration, then one per request that found the adapter evicted to disk.",
                (
                    Query(
                        _rate("loraplane_adapter_disk_loads_total", "namespace, adapter"),
                        "{{namespace}}/{{adapter}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Mean disk load time",
                "timeseries",
                "Time a request waits for its adapter's files when it was evicted to disk.",
                (
                    Query(
                        f"{_rate('loraplane_adapter_disk_load_seconds_total', 'base_model')}"
                        f" / {_rate('loraplane_adapter_disk_loads_total', 'base_model')}",
                        "{{base_model}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "GPU activations by adapter",
                "timeseries",
                "Times an adapter took a GPU slot: requests for it found it in none.",
                (
                    Query(
                        _rate("loraplane_adapter_activations_total", "namespace, adapter"),
                        "{{namespace}}/{{adapter}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Where each adapter sits",
                "table",
                "The tier each adapter's weights are in on each pod now (absent: on disk).",
                (
                    Query(
                        "max by (namespace, base_model, adapter, pod, tier) "
                        f"(loraplane_adapter_resident{{{ADAPTERS}}} == 1)"
                    ),
                ),
                columns=("namespace", "base_model", "adapter", "pod", "tier"),
            ),
        ),
    ),
    Row(
        "Operator",
        (
            Panel(
                "Reconcile duration p95 by kind",
                "timeseries",
                "The operator's handlers of LoRAAdapters and BaseModelDeployments.",
                (
                    Query(
                        _quantile(0.95, "loraplane_reconcile_duration_seconds", "kind", ""),
                        "{{kind}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Pod sync duration p95",
                "timeseries",
                "One pod's convergence: its desired adapters against vLLM's /v1/models, then "
                "the loads and unloads.",
                (
                    Query(
                        _quantile(0.95, "loraplane_pod_sync_duration_seconds", "base_model", PODS),
                        "{{base_model}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Pod syncs by result",
                "timeseries",
                "Pod syncs that converged (ok) or failed and were retried with backoff (error).",
                (
                    Query(
                        _rate("loraplane_pod_syncs_total", "base_model, result", PODS),
                        "{{base_model}} {{result}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "vLLM and agent API errors",
                "timeseries",
                "Failed calls from the operator to vLLM servers and to pods' agents, by "
                "endpoint and error class.",
                (
                    Query(
                        _rate("loraplane_vllm_api_errors_total", "endpoint, class", ""),
                        "vllm {{endpoint}} {{class}}",
                    ),
                    Query(
                        _rate("loraplane_agent_api_errors_total", "endpoint, class", ""),
                        "agent {{endpoint}} {{class}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Work in flight",
                "timeseries",
                "Pod syncs and adapter loads running now.",
                (Query("sum by (kind) (loraplane_work_in_flight)", "{{kind}}"),),
            ),
            Panel(
                "Watch restarts",
                "timeseries",
                "Restarts of the operator's watches on the API server, by resource.",
                (Query(_rate("loraplane_watch_restarts_total", "resource", ""), "{{resource}}"),),
                unit="ops",
            ),
        ),
    ),
)


def panels() -> list[Panel]:
    """Every panel, in dashboard order: its title and its queries (tests and render.py)."""
    return [p for row in ROWS for p in row.panels]


# Characters Grafana escapes in a regex-matched value, doubled backslash and all: it is inside
# a PromQL string literal.
_REGEX_SPECIAL = set("\\$^*{}[]'+?.()|")
_VARIABLE = re.compile(r"\$(\w+)")


def _regex_escape(value: str) -> str:
    return "".join("\\\\" + c if c in _REGEX_SPECIAL else c for c in value)


def expand(
    expr: str,
    values: Mapping[str, Sequence[str]] | None = None,
    rate_interval: str = "1m",
) -> str:
    """`expr` as Grafana sends it to Prometheus. A variable missing from `values` is "All";
    several values become an alternation, as for a multi-value variable."""
    values = values or {}
    known = {v.name for v in VARIABLES}

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "__rate_interval":
            return rate_interval
        if name not in known:
            raise ValueError(f"unknown variable ${name} in {expr!r}")
        chosen = values.get(name)
        if not chosen:
            return ALL_VALUE
        escaped = [_regex_escape(v) for v in chosen]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    return _VARIABLE.sub(one, expr)


def _variable(v: Variable) -> gd.QueryVariable:
    return (
        gd.QueryVariable(v.name)
        .label(v.label)
        .datasource(DATASOURCE)
        .query(v.query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL_VALUE)
        .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def _ref(index: int) -> str:
    """Grafana's refId of a panel's index-th query: A, B, ..."""
    return chr(ord("A") + index)


def _target(q: Query, ref_id: str, kind: PanelKind) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(q.expr).ref_id(ref_id).datasource(DATASOURCE)
    if kind == "timeseries":
        return target.range().legend_format(q.legend or "__auto")
    target = target.instant().legend_format(q.legend or "__auto")
    return target.format(PromQueryFormat.TABLE) if kind == "table" else target


def _table_transformations(p: Panel) -> list[DataTransformerConfig]:
    # Grafana names a table query's value column "Value #<refId>": join the queries on their
    # labels, name the value columns after the legends, and keep only the declared columns.
    # organize orders by the names before its renames; the filter after it sees the new ones.
    renames = {f"Value #{_ref(i)}": q.legend for i, q in enumerate(p.queries) if q.legend}
    order = [*p.columns, *renames]
    shown = [*p.columns, *renames.values()]
    return [
        DataTransformerConfig(id_val="merge", options={}),
        DataTransformerConfig(
            id_val="organize",
            options={
                "renameByName": renames,
                "indexByName": {name: i for i, name in enumerate(order)},
            },
        ),
        DataTransformerConfig(id_val="filterFieldsByName", options={"include": {"names": shown}}),
    ]


def _red_above_zero() -> list[DynamicConfigValue]:
    steps = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
    return [
        DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
        DynamicConfigValue(id_val="thresholds", value={"mode": "absolute", "steps": steps}),
    ]


def _panel(p: Panel, panel_id: int) -> timeseries.Panel | stat.Panel | table.Panel:
    builder: timeseries.Panel | stat.Panel | table.Panel
    if p.kind == "timeseries":
        builder = timeseries.Panel().fill_opacity(10)
    elif p.kind == "stat":
        builder = (
            stat.Panel()
            .graph_mode(BigValueGraphMode.NONE)
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
            # Grafana's default turns a stat red at 80: a count of Ready adapters is not alarming.
            .thresholds(
                gd.ThresholdsConfig()
                .mode(ThresholdsMode.ABSOLUTE)
                .steps([Threshold(value=None, color="green")])
            )
        )
        for name in p.alarming:
            builder = builder.override_by_name(name, _red_above_zero())
    else:
        builder = table.Panel()
        for t in _table_transformations(p):
            builder = builder.with_transformation(t)
    builder = (
        builder.id(panel_id)
        .title(p.title)
        .description(p.description)
        .datasource(DATASOURCE)
        .unit(p.unit)
        .span(p.width)
        .height(8)
    )
    for i, q in enumerate(p.queries):
        builder = builder.with_target(_target(q, _ref(i), p.kind))
    return builder


def build() -> gd.Dashboard:
    board = (
        gd.Dashboard(TITLE)
        .uid(UID)
        .description("LoRA adapters served by loraplane on vLLM, and the operator's health.")
        .tags(["loraplane", "vllm", "lora"])
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for v in VARIABLES:
        board = board.with_variable(_variable(v))
    panel_id = 0
    for row in ROWS:
        panel_id += 1
        board = board.with_row(gd.Row(row.title).id(panel_id))
        for p in row.panels:
            panel_id += 1
            board = board.with_panel(_panel(p, panel_id))
    return board


def as_dict() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    doc: dict[str, Any] = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    return doc


def render_json() -> str:
    """dashboard.json: sorted keys, so a change in the code is a readable diff."""
    return json.dumps(as_dict(), indent=2, sort_keys=True) + "\n"

"""The Grafana dashboard, the alert rules and the PNG renderer, without Grafana or Prometheus.

What needs promtool (every expr parses, the rules fire when they should) is in
tests/integration/test_alerts.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplane.dashboards import __main__ as generate
from loraplane.dashboards import alerts, dashboard, render
from tests.conftest import REPO

FILES = REPO / "charts" / "loraplane" / "files"

# The panels issue 11 asks for, as a user finds them on the dashboard.
PANELS = {
    "Adapter readiness": "stat",
    "Adapter inventory": "table",
    "Registered and desired replicas": "timeseries",
    "Loads per second": "timeseries",
    "Fetch latency p50/p95 (agent)": "timeseries",
    "vLLM load latency p50/p95": "timeseries",
    "Failures by reason": "timeseries",
    "Unloads by reason": "timeseries",
    "Evictions by tier": "timeseries",
    "Re-registrations by cause": "timeseries",
    "In-flight adapters per pod (vLLM)": "table",
    "Resident adapters by tier": "timeseries",
    "Engine evictions per request": "timeseries",
    "Disk loads by adapter": "timeseries",
    "Mean disk load time": "timeseries",
    "GPU activations by adapter": "timeseries",
    "Where each adapter sits": "table",
    "Reconcile duration p95 by kind": "timeseries",
    "Pod sync duration p95": "timeseries",
    "Pod syncs by result": "timeseries",
    "vLLM and agent API errors": "timeseries",
    "Work in flight": "timeseries",
    "Watch restarts": "timeseries",
}

# The metric names the operator exports (operator/loraplane/metrics.py) and vLLM's LoRA gauge:
# a query naming anything else shows "No data" forever.
METRICS = {
    "loraplane_adapter_loads_total",
    "loraplane_adapter_fetch_duration_seconds_bucket",
    "loraplane_adapter_vllm_load_duration_seconds_bucket",
    "loraplane_adapter_unloads_total",
    "loraplane_adapter_evictions_total",
    "loraplane_adapter_reregistrations_total",
    "loraplane_adapter_validation_failures_total",
    "loraplane_adapter_desired_replicas",
    "loraplane_adapter_registered_replicas",
    "loraplane_adapter_ready",
    "loraplane_adapter_info",
    "loraplane_adapter_size_bytes",
    "loraplane_adapter_registered",
    "loraplane_reconcile_duration_seconds_bucket",
    "loraplane_pod_sync_duration_seconds_bucket",
    "loraplane_pod_syncs_total",
    "loraplane_vllm_api_errors_total",
    "loraplane_agent_api_errors_total",
    "loraplane_work_in_flight",
    "loraplane_watch_restarts_total",
    "vllm:lora_requests_info",
    "vllm:request_success_total",
    # From each pod's agent: the engine residency of loraplane's vLLM plugin.
    "loraplane_adapter_resident",
    "loraplane_adapter_activations_total",
    "loraplane_adapter_disk_loads_total",
    "loraplane_adapter_disk_load_seconds_total",
    "loraplane_engine_lora_slots",
}
METRIC_NAME = re.compile(r"\b(?:loraplane_\w+|vllm:\w+)")


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FILES / "dashboard.json").read_text())
    return doc


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def test_the_dashboard_has_a_stable_uid(board: dict[str, Any]) -> None:
    assert board["uid"] == "loraplane-adapters"
    assert board["title"] == "loraplane: LoRA adapters"


def test_the_datasource_is_a_variable_every_query_uses(board: dict[str, Any]) -> None:
    ds = _variables(board)["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    for p in _panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_namespace_base_model_and_adapter_are_chained_multi_select_variables(
    board: dict[str, Any],
) -> None:
    v = _variables(board)
    assert list(v) == ["datasource", "namespace", "base_model", "adapter"]
    assert v["namespace"]["query"] == "label_values(loraplane_adapter_info, namespace)"
    assert v["base_model"]["query"] == (
        'label_values(loraplane_adapter_info{namespace=~"$namespace"}, base_model)'
    )
    assert v["adapter"]["query"] == (
        'label_values(loraplane_adapter_info{namespace=~"$namespace", '
        'base_model=~"$base_model"}, adapter)'
    )
    for name in ("namespace", "base_model", "adapter"):
        assert v[name]["type"] == "query"
        assert v[name]["multi"] and v[name]["includeAll"], name
        assert v[name]["allValue"] == ".*", name
        assert v[name]["datasource"]["uid"] == "${datasource}", name


def test_every_panel_the_issue_lists_is_there_with_its_type(board: dict[str, Any]) -> None:
    assert {p["title"]: p["type"] for p in _panels(board)} == PANELS
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Adapters", "Loads", "Churn", "Engine residency", "Operator"]


def test_panels_have_unique_ids_and_fit_the_grid(board: dict[str, Any]) -> None:
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids
    for p in board["panels"]:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]


def test_the_json_queries_are_the_ones_panels_returns(board: dict[str, Any]) -> None:
    """Tests and the PNG iterate `panels()`: it must be what Grafana runs."""
    in_json = [(p["title"], [t["expr"] for t in p["targets"]]) for p in _panels(board)]
    declared = [(p.title, [q.expr for q in p.queries]) for p in dashboard.panels()]
    assert in_json == declared
    for p in _panels(board):
        assert [t["refId"] for t in p["targets"]] == list("ABCDE"[: len(p["targets"])])


def test_adapter_panels_follow_the_variables() -> None:
    for p in dashboard.panels():
        for q in p.queries:
            if "loraplane_adapter_" in q.expr:
                assert dashboard.ADAPTERS in q.expr, (p.title, q.expr)
            if "vllm:" in q.expr or "pod_sync" in q.expr:
                assert dashboard.PODS in q.expr, (p.title, q.expr)


def test_queries_and_alerts_name_only_exported_metrics() -> None:
    exprs = [q.expr for p in dashboard.panels() for q in p.queries]
    exprs += [v.selector for v in dashboard.VARIABLES]
    exprs += [a.expr for a in alerts.alerts()]
    used = {m for e in exprs for m in METRIC_NAME.findall(e)}
    assert used - METRICS == set()


def test_timeseries_run_as_range_queries_and_tables_as_instant_tables(
    board: dict[str, Any],
) -> None:
    for p in _panels(board):
        for t in p["targets"]:
            if p["type"] == "timeseries":
                assert t["range"] and not t.get("instant"), p["title"]
            else:
                assert t["instant"] and not t["range"], p["title"]
            if p["type"] == "table":
                assert t["format"] == "table", p["title"]


def test_the_inventory_table_names_its_value_columns(board: dict[str, Any]) -> None:
    inventory = next(p for p in _panels(board) if p["title"] == "Adapter inventory")
    organize = next(t for t in inventory["transformations"] if t["id"] == "organize")
    assert organize["options"]["renameByName"] == {
        "Value #B": "Ready",
        "Value #C": "Registered",
        "Value #D": "Desired",
        "Value #E": "Size (bytes)",
    }
    shown = next(t for t in inventory["transformations"] if t["id"] == "filterFieldsByName")
    assert "served_name" in shown["options"]["include"]["names"]
    assert "Value #A" not in shown["options"]["include"]["names"]


def test_readiness_shows_not_ready_adapters_in_red_and_ready_ones_never(
    board: dict[str, Any],
) -> None:
    stat = next(p for p in _panels(board) if p["title"] == "Adapter readiness")
    assert stat["fieldConfig"]["defaults"]["thresholds"]["steps"] == [
        {"color": "green", "value": None}
    ]
    (override,) = stat["fieldConfig"]["overrides"]
    assert override["matcher"] == {"id": "byName", "options": "Not Ready"}
    steps = next(p for p in override["properties"] if p["id"] == "thresholds")["value"]["steps"]
    assert steps[-1] == {"color": "red", "value": 1}


def test_variables_default_to_all(board: dict[str, Any]) -> None:
    for name in ("namespace", "base_model", "adapter"):
        assert _variables(board)[name]["current"]["value"] == ["$__all"], name


def test_expand_substitutes_variables_as_grafana_does() -> None:
    expr = 'x{namespace=~"$namespace", adapter=~"$adapter"}[$__rate_interval]'
    assert dashboard.expand(expr) == 'x{namespace=~".*", adapter=~".*"}[1m]'
    chosen = {"namespace": ["team-a"], "adapter": ["sql.v2", "chat"]}
    # The dot is a regex escape inside a PromQL string: two backslashes in the query text.
    expected = r'x{namespace=~"team-a", adapter=~"(sql\\.v2|chat)"}[2m]'
    assert dashboard.expand(expr, chosen, "2m") == expected
    with pytest.raises(ValueError, match=r"\$nope"):
        dashboard.expand("x{a=~'$nope'}")


# The alerts issue 11 asks for.
ALERTS = {
    "LoRAAdapterNotReady": "10m",
    "LoRAAdapterLoadFailures": "10m",
    "LoRAAdapterThrashing": "15m",
    "LoRAEngineThrashing": "15m",
    "LoRAAdapterUnderReplicated": "15m",
    "LoraplaneSyncErrors": "15m",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((FILES / "alerts.yaml").read_text())
    assert list(doc) == ["groups"]
    return [r for g in doc["groups"] for r in g["rules"]]


def _github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub gives the headings: lowercase, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_alerts_yaml_holds_the_alerts_the_issue_lists() -> None:
    rules = _rules()
    assert {r["alert"]: r["for"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert "$labels." in r["annotations"]["description"], r["alert"]


def test_every_runbook_url_points_at_a_section_of_docs_runbooks() -> None:
    anchors = _github_anchors((REPO / "docs" / "runbooks.md").read_text())
    for r in _rules():
        url = r["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base == "https://github.com/loraplane/loraplane/blob/main/docs/runbooks.md"
        assert anchor in anchors, f"{r['alert']}: no heading in docs/runbooks.md for #{anchor}"


def test_the_chart_files_are_what_the_code_generates(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check", str(FILES)]) == 0, capsys.readouterr().out


def test_the_drift_check_fails_with_a_diff_on_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(FILES, tmp_path, dirs_exist_ok=True)
    stale = tmp_path / "alerts.yaml"
    stale.write_text(stale.read_text().replace("for: 10m", "for: 1m", 1))
    assert generate.main(["--check", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "-    for: 1m" in out.out and "+    for: 10m" in out.out
    assert "is stale" in out.err
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert generate.main(["--check", str(tmp_path)]) == 0


def _synthetic(panel: dashboard.Panel) -> list[dict[str, Any]]:
    """A query_range response per query: two series, labelled as the panel shows them."""
    start = 1_700_000_000
    out = []
    for i, q in enumerate(panel.queries):
        names = {*re.findall(r"\{\{(\w+)\}\}", q.legend), *panel.columns}
        if panel.kind == "table" and i > 0:
            names = {"namespace", "base_model", "adapter"}
        result = []
        for n in (1, 2):
            metric = {k: f"{k}-{n}" for k in sorted(names)}
            values = [[start + 60 * t, str(n * (t % 5) + i)] for t in range(20)]
            result.append({"metric": metric, "values": values})
        out.append({"status": "success", "data": {"resultType": "matrix", "result": result}})
    return out


def _results() -> dict[str, list[dict[str, Any]]]:
    return {p.title: _synthetic(p) for p in dashboard.panels()}


def test_the_png_has_one_plot_per_panel_titled_as_in_the_dashboard(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results()))
    png = tmp_path / "dashboard.png"
    assert render.main(["--results", str(results), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = render.figure(_results())
    assert [ax.get_title() for ax in fig.axes] == list(PANELS)


def _texts(fig: Any, title: str) -> list[str]:
    ax = next(a for a in fig.axes if a.get_title() == title)
    texts = [t.get_text() for t in ax.texts]
    texts += [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
    for table in ax.tables:
        texts += [c.get_text().get_text() for c in table.get_celld().values()]
    return texts


def test_the_png_shows_last_values_legends_and_joined_table_rows() -> None:
    fig = render.figure(_results())
    # Stat: the last sample of each query, under its legend (19 % 5 * n + query index).
    assert {"Ready", "Not Ready", "4", "9"} <= set(_texts(fig, "Adapter readiness"))
    assert "adapter-1 result-1" in _texts(fig, "Loads per second")
    inventory = _texts(fig, "Adapter inventory")
    assert {"served_name", "Ready", "Desired", "served_name-2"} <= set(inventory)


def test_the_png_refuses_results_that_do_not_match_the_panels() -> None:
    results = _results()
    del results["Watch restarts"]
    with pytest.raises(ValueError, match="missing \\['Watch restarts'\\]"):
        render.figure(results)
    results = _results()
    results["Loads per second"][0]["data"]["resultType"] = "vector"
    with pytest.raises(ValueError, match="expected matrix"):
        render.figure(results)

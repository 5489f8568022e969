"""The alert rules and the dashboard's queries, checked by promtool (Prometheus's own parser and
rule engine). No cluster: only the promtool binary of hack/build-tools.sh, which must be built.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from loraplane.dashboards import alerts, dashboard
from tests.conftest import REPO

ALERTS_YAML = REPO / "charts" / "loraplane" / "files" / "alerts.yaml"
RULE_TESTS = sorted((REPO / "tests" / "alerts").glob("*.yaml"))

# Selections a user makes in the dashboard: "All" everywhere, and several values of each
# variable (a regex alternation, names with dots escaped), as Grafana sends them.
SELECTIONS: list[dict[str, list[str]]] = [
    {},
    {"namespace": ["team-a", "team-b"], "base_model": ["llama"], "adapter": ["sql.v2", "chat"]},
]


@pytest.fixture(scope="module")
def promtool(loraplane_home: Path) -> Path:
    # Where hack/build-tools.sh puts it (its --print-env PROMTOOL).
    path = loraplane_home / "bin" / "promtool-v0.316.0" / "promtool"
    if not path.exists():
        pytest.fail(f"promtool not built: run hack/build-tools.sh (no {path})", pytrace=False)
    return path


def run(promtool: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_chart_alerts_are_a_valid_rules_file(promtool: Path) -> None:
    proc = run(promtool, "check", "rules", ALERTS_YAML)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts.alerts())} rules found" in proc.stdout


def test_every_alert_fires_and_stays_silent_as_its_unit_tests_expect(promtool: Path) -> None:
    assert RULE_TESTS, "no promtool rule tests in tests/alerts"
    tested = {
        case["alertname"]
        for f in RULE_TESTS
        for test in yaml.safe_load(f.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert tested == {a.name for a in alerts.alerts()}
    proc = run(promtool, "test", "rules", *RULE_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_rule_tests_fail_on_a_rule_that_fires_too_early(promtool: Path, tmp_path: Path) -> None:
    rules = tmp_path / "alerts.yaml"
    rules.write_text(ALERTS_YAML.read_text().replace("for: 10m", "for: 5m", 1))
    for f in RULE_TESTS:
        doc = yaml.safe_load(f.read_text())
        doc["rule_files"] = [str(rules)]
        (tmp_path / f.name).write_text(yaml.safe_dump(doc))
    proc = run(promtool, "test", "rules", *(tmp_path / f.name for f in RULE_TESTS))
    assert proc.returncode != 0
    assert "LoRAAdapterNotReady" in proc.stdout + proc.stderr


def _recording_rules(exprs: list[str]) -> str:
    """A rules file recording each expr: `promtool check rules` then parses every one."""
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})


def test_every_dashboard_query_is_valid_promql(promtool: Path, tmp_path: Path) -> None:
    exprs = []
    for values in SELECTIONS:
        exprs += [dashboard.expand(q.expr, values) for p in dashboard.panels() for q in p.queries]
        exprs += [dashboard.expand(v.selector, values) for v in dashboard.VARIABLES]
    rules = tmp_path / "dashboard.yaml"
    rules.write_text(_recording_rules(exprs))
    proc = run(promtool, "check", "rules", rules)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout


def test_the_query_check_catches_a_query_that_does_not_parse(
    promtool: Path, tmp_path: Path
) -> None:
    broken = dashboard.expand(dashboard.panels()[0].queries[0].expr).replace(")", "", 1)
    rules = tmp_path / "broken.yaml"
    rules.write_text(_recording_rules([broken]))
    proc = run(promtool, "check", "rules", rules)
    assert proc.returncode != 0
    assert "parse error" in proc.stdout + proc.stderr

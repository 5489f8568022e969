"""Smoke test of the Go-built tools of hack/build-tools.sh (no cluster needed).

Prometheus answers queries, promtool is 3.16 and accepts Kubernetes service discovery, the
helm-unittest plugin runs a test suite under the project's helm, and the generated Prometheus
Operator CRDs are one valid CRD per kind. A tool that is missing fails with the command that
builds it (tests/support/tools.py).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support import tools

PROMETHEUS_RELEASE = "3.16."

# A job with Kubernetes SD: the build keeps only that SD mechanism (remove_all_sd +
# enable_kubernetes_sd), so promtool must know kubernetes_sd_configs and no longer ec2_sd_configs.
K8S_SD_CONFIG = """
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: loraplane-pods
    kubernetes_sd_configs:
      - role: pod
        api_server: https://127.0.0.1:6443
        namespaces:
          names: [default]
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_label_app]
        regex: vllm
        action: keep
"""
EC2_SD_CONFIG = """
scrape_configs:
  - job_name: aws
    ec2_sd_configs: [{region: us-east-1}]
"""


def run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_promtool_version_and_kubernetes_sd_config(tmp_path: Path) -> None:
    proc = run(tools.promtool(), "--version")
    assert proc.returncode == 0, proc.stderr
    assert f"promtool, version {PROMETHEUS_RELEASE}" in proc.stdout, proc.stdout
    config = tmp_path / "prometheus.yml"
    config.write_text(K8S_SD_CONFIG)
    proc = run(tools.promtool(), "check", "config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config.write_text(EC2_SD_CONFIG)
    proc = run(tools.promtool(), "check", "config", config)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "field ec2_sd_configs not found" in proc.stdout + proc.stderr


def test_prometheus_serves_queries() -> None:
    proc = run(tools.prometheus(), "--version")
    assert f"prometheus, version {PROMETHEUS_RELEASE}" in proc.stdout, proc.stdout + proc.stderr
    # Prometheus scrapes itself, so `up` appears after the first scrape (interval 1 s).
    config = (
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: self\n"
        "    static_configs: [{targets: ['{target}']}]\n"
    )
    port = tools.free_port()
    with tools.prometheus_server(config.replace("{target}", f"127.0.0.1:{port}"), port=port) as p:
        (sample,) = p.query("vector(1)")
        assert sample["value"][1] == "1"
        deadline = time.monotonic() + 30
        while not (up := p.query("up")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [(s["metric"]["job"], s["value"][1]) for s in up] == [("self", "1")], up


def test_helm_unittest_plugin_runs_a_suite(tmp_path: Path) -> None:
    env = tools.helm_env()
    proc = run(tools.helm(), "unittest", "--help", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unittest" in proc.stdout
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "tests").mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("replicas: 2\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: demo}\n"
        "data: {replicas: {{ .Values.replicas | quote }}}\n"
    )
    (chart / "tests" / "cm_test.yaml").write_text(
        "suite: demo\ntemplates: [templates/cm.yaml]\ntests:\n"
        "  - it: renders the replica count\n"
        "    set: {replicas: 3}\n"
        "    asserts:\n"
        "      - equal: {path: data.replicas, value: '3'}\n"
    )
    proc = run(tools.helm(), "unittest", chart, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Tests:       1 passed" in proc.stdout, proc.stdout


def test_prometheus_operator_crds() -> None:
    crds = tools.load_crds(tools.prometheus_operator_crds())
    assert set(tools.OPERATOR_CRD_KINDS) <= set(crds), sorted(crds)
    for kind, crd in crds.items():
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1", kind
        assert crd["kind"] == "CustomResourceDefinition", kind
        assert crd["spec"]["group"] == "monitoring.coreos.com", kind
        assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.monitoring.coreos.com"
        served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
        assert served, kind

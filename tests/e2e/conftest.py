"""End-to-end fixtures: the chart as users install it, on the local cluster.

The cluster fixtures are the integration tier's (one cluster per run). Nothing here skips.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.cluster import Cluster
from tests.integration.conftest import cluster, crds, namespace, tiny_model  # noqa: F401

CHART = REPO / "charts" / "loraplane"
KUBE_VERSION = "1.36.3"  # `helm template` without a cluster checks kubeVersion against this


def render(c: Cluster, values: dict[str, Any], release_ns: str = "lp-render") -> list[Any]:
    """`helm template` of the chart with `values`: the objects, empty documents dropped."""
    proc = c.helm(
        "template",
        "lp",
        str(CHART),
        "-n",
        release_ns,
        "--kube-version",
        KUBE_VERSION,
        "-f",
        "-",
        check=False,
        input=json.dumps(values),
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="session")
def monitoring_crds(cluster: Cluster) -> Cluster:  # noqa: F811
    """The Prometheus Operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule), generated
    from its Go module by hack/build-tools.sh, so the chart's monitors meet the real schema."""
    from tests.support import tools

    crd_dir = tools.prometheus_operator_crds()
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
    return cluster


CRDS = (
    "basemodeldeployments.loraplane.dev",
    "loraadapters.loraplane.dev",
    "inferencepools.inference.networking.k8s.io",
    "inferencemodelrewrites.inference.networking.x-k8s.io",
)


def adopt_crds(c: Cluster, release: str, release_ns: str) -> None:
    """CRDs applied by hand (the integration tests do) get the release's ownership metadata, as
    `make demo` does: Helm refuses to install over objects it does not own."""
    for crd in CRDS:
        if c.get("crd", crd, "") is None:
            continue
        c.kubectl("label", "--overwrite", "crd", crd, "app.kubernetes.io/managed-by=Helm")
        c.kubectl(
            "annotate", "--overwrite", "crd", crd,
            f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={release_ns}",
        )  # fmt: skip


def ensure_namespace(c: Cluster, name: str) -> None:
    c.kubectl("create", "namespace", name, check=False)

"""Integration fixtures: the real local cluster, the CRDs, the operator, the tiny model.

Nothing here skips: a missing prerequisite fails with a message that says what is missing.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.cluster import Cluster, condition, wait_for
from tests.integration.operator_process import OperatorProcess


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="session")
def cluster(loraplane_home: Path) -> Cluster:
    """The local cluster, brought up once per run (a no-op when it is already up)."""
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "cluster.sh"), "up"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.fail(
            "the local cluster did not come up (`make cluster-up`):\n"
            + proc.stdout[-2000:]
            + proc.stderr[-3000:],
            pytrace=False,
        )
    v = _versions()
    bins = loraplane_home / "bin"
    c = Cluster(
        home=loraplane_home,
        kubeconfig=loraplane_home / "kubeconfig",
        kubectl_bin=bins / f"kubectl-{v['KUBERNETES_VERSION']}" / "kubectl",
        helm_bin=bins / f"helm-{v['HELM_VERSION']}" / "helm",
    )
    for path in (c.kubeconfig, c.kubectl_bin):
        if not path.exists():
            pytest.fail(f"missing {path}: run `make cluster-up`", pytrace=False)
    wait_for(
        "node loraplane-node to be Ready (the process node: hack/processnode)",
        lambda: condition_true(c.get("node", "loraplane-node", ""), "Ready"),
        timeout=90,
    )
    return c


def condition_true(obj: dict[str, object] | None, ctype: str) -> bool:
    cond = condition(obj, ctype)  # type: ignore[arg-type]
    return bool(cond and cond.get("status") == "True")


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/basemodeldeployments.loraplane.dev",
        "crd/loraadapters.loraplane.dev",
    )
    # The router's Endpoint Picker reads its pods from an InferencePool (builders/router_config),
    # and canaries are InferenceModelRewrites: the Inference Extension's CRDs, as the chart has.
    from loraplane.chart.render import INFERENCE_EXTENSION_CRDS
    from tests.support.tools import gie_crds

    for name in INFERENCE_EXTENSION_CRDS:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(gie_crds() / name))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/inferencepools.inference.networking.k8s.io",
        "crd/inferencemodelrewrites.inference.networking.x-k8s.io",
    )
    return cluster


@pytest.fixture()
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for it to drain)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(
        "the default ServiceAccount",
        lambda: cluster.get("serviceaccount", "default", name),
        timeout=30,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def tiny_model(loraplane_home: Path) -> Path:
    from tests.support.tinymodel import ensure_tiny_model

    return ensure_tiny_model(loraplane_home)


@pytest.fixture(scope="session")
def operator(crds: Cluster) -> Iterator[OperatorProcess]:
    op = OperatorProcess(crds)
    op.start()
    yield op
    op.stop()


@pytest.fixture(autouse=True)
def operator_log_has_no_traceback(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that made the operator log a Traceback fails, whatever it asserted itself."""
    if "operator" not in request.fixturenames:
        yield
        return
    op: OperatorProcess = request.getfixturevalue("operator")
    start = op.log_size()
    yield
    text = op.log_since(start)
    if "Traceback" in text:
        at = text.index("Traceback")
        pytest.fail(
            f"the operator logged a Traceback during this test ({op.log}):\n"
            + text[max(0, at - 1500) : at + 3000],
            pytrace=False,
        )

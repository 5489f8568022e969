"""`make demo` and `make demo-down`, through the same script the Makefile runs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO
from tests.integration.cluster import Cluster

DEMO = REPO / "hack" / "demo.sh"
ADAPTERS = ("tiny-chat", "tiny-sql", "tiny-summarize")


def demo(action: str, timeout: float) -> str:
    proc = subprocess.run(
        ["bash", str(DEMO), action],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DEMO_TIMEOUT_SECONDS": "480"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_make_demo_serves_the_tiny_example_and_demo_down_removes_it(
    cluster: Cluster, tiny_model: Path
) -> None:
    out = demo("up", timeout=600)
    # Progress is shown while it waits, then what a user came to see.
    assert re.search(r"\[demo \d+s\] waiting for ", out), out
    for name in ADAPTERS:
        assert re.search(rf"loraadapter.loraplane.dev/{name}\s+tiny\s+Ready\s+2/2", out), out
        assert re.search(rf"^  {name}\s+'.+'$", out, re.M), out
    assert re.search(r"tiny-too-big\s+tiny\s+Failed\s+0/2", out), out
    assert "tiny-too-big: Validated=False RankExceedsMax" in out, out
    assert re.search(r"^  tiny\s+'.+'$", out, re.M), out  # the base model itself
    assert re.search(r'loraplane_adapter_loads_total\{.*adapter="tiny-chat".*result="success"', out)
    pods = cluster.list("pods", "loraplane-system", "app.kubernetes.io/instance=loraplane")
    assert len(pods) == 1 and pods[0]["spec"]["serviceAccountName"] == "loraplane"

    demo("down", timeout=300)
    assert cluster.get("namespace", "loraplane-demo", "") is None
    assert cluster.get("namespace", "loraplane-system", "") is None
    releases = cluster.helm("list", "-A", "-q").stdout.split()
    assert "loraplane" not in releases

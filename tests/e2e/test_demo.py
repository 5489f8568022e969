"""`make demo` and `make demo-down`, through the same script the Makefile runs."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO
from tests.integration.cluster import Cluster
from tests.support.adapters import DEMO as DEMO_ADAPTERS
from tests.support.adapters import ensure_adapter

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
    cluster: Cluster, tiny_model: Path, loraplane_home: Path
) -> None:
    for name in DEMO_ADAPTERS:  # what `make demo-fixtures` builds
        ensure_adapter(name, loraplane_home)
    out = demo("up", timeout=600)
    # Progress is shown while it waits, then what a user came to see.
    assert re.search(r"\[demo \d+s\] waiting for ", out), out
    # The line that ends the wait agrees with `kubectl get bmd,lora` below it.
    done = r"\[demo \d+s\] 3 adapters Ready on 2 vLLM servers, tiny-too-big refused: "
    assert re.search(done + r"vLLM servers ready 2/2; adapters: .*tiny-chat Ready 2/2", out), out
    assert re.search(r"basemodeldeployment.loraplane.dev/tiny\s+tiny\s+2/2\s+True", out), out
    for name in ADAPTERS:
        assert re.search(rf"loraadapter.loraplane.dev/{name}\s+tiny\s+Ready\s+2/2", out), out
        assert re.search(rf"^  {name}\s+'.+'$", out, re.M), out
    assert re.search(r"tiny-too-big\s+tiny\s+Failed\s+0/2", out), out
    assert "tiny-too-big: Validated=False RankExceedsMax" in out, out
    assert re.search(r"^  tiny\s+'.+'$", out, re.M), out  # the base model itself
    assert re.search(r'loraplane_adapter_loads_total\{.*adapter="tiny-chat".*result="success"', out)
    # Through the router, each adapter's requests land on named pods of the base model.
    for name in ADAPTERS:
        assert re.search(rf"^  {name}\s+(tiny-[a-z0-9]+-[a-z0-9]+(, )?){{4}}$", out, re.M), out
    pods = cluster.list("pods", "loraplane-system", "app.kubernetes.io/instance=loraplane")
    assert len(pods) == 1 and pods[0]["spec"]["serviceAccountName"] == "loraplane"

    demo("down", timeout=300)
    assert cluster.get("namespace", "loraplane-demo", "") is None
    assert cluster.get("namespace", "loraplane-system", "") is None
    releases = cluster.helm("list", "-A", "-q").stdout.split()
    assert "loraplane" not in releases

"""Every manifest under examples/ is accepted by the real API server as written.

The GPU examples cannot run here, so they are applied as a server-side dry run (the API server
validates them against the CRDs and their CEL rules); examples/tiny/ is also run for real by the
demo (tests/e2e/test_demo.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.cluster import Cluster

EXAMPLES = sorted((REPO / "examples").glob("**/*.yaml"))


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ has no manifests"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_example_is_accepted(crds: Cluster, namespace: str, path: Path) -> None:
    proc = crds.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "created (server dry run)" in proc.stdout

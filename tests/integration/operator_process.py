"""The operator run on the host, as a developer would run it (`python -m loraplane.main`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

from tests.conftest import REPO
from tests.integration.cluster import Cluster
from tests.integration.manifests import SOURCE_CA_FILE


class OperatorProcess:
    """The operator, run on the host like a developer would (`loraplane-operator`)."""

    def __init__(self, cluster: Cluster, env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.extra_env = env or {}
        self.metrics_port = int(self.extra_env.get("LORAPLANE_METRICS_PORT", "8080"))
        self.log = cluster.home / "logs" / "operator-tests.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "LORAPLANE_OPERATOR_IMAGE": "ghcr.io/loraplane/loraplane:dev",
            "LORAPLANE_RESYNC_SECONDS": "20",
            "LORAPLANE_RESIDENCY_INTERVAL_SECONDS": "20",
            # A hung agent is reported after this long (the tests stop one on purpose).
            "LORAPLANE_AGENT_TIMEOUT_SECONDS": "8",
            # Lists in pages of two: each start (and the restart test's) seeds the fleet from
            # several pages of the API server's answer, as with thousands of adapters.
            "LORAPLANE_LIST_CHUNK_SIZE": "2",
            # Where the base model of tests/integration/test_sources.py mounts its servers' CA;
            # read only by fetches from https sources, so other pods go without it.
            "LORAPLANE_SOURCE_CA_FILE": SOURCE_CA_FILE,
            "PYTHONPATH": str(REPO / "operator"),
            **self.extra_env,
        }
        with self.log.open("ab") as out:
            out.write(f"\n===== operator start {time.ctime()} =====\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loraplane.main"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        time.sleep(1.0)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the operator exited at start; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def restart(self) -> None:
        self.stop()
        self.start()

    def writes(self) -> dict[str, float]:
        """What it wrote to the API itself since it started, as `resource verb` (its /metrics)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        pattern = r'^loraplane_kube_api_writes_total\{resource="([^"]+)",verb="([^"]+)"\} (\S+)$'
        found = re.findall(pattern, text, re.M)
        return {f"{resource} {verb}": float(v) for resource, verb, v in found if float(v)}

"""Paths of the Go-built tools under $LORAPLANE_HOME, and a throwaway Prometheus for tests.

hack/build-tools.sh builds the tools and is the one place that knows their layout: `--print-env`
prints NAME=path lines, computed from hack/versions.env and $LORAPLANE_HOME (default
~/.cache/loraplane). Every function here returns an existing path or raises ToolMissing naming
the missing file and the command that builds it. Nothing skips: a test that needs a tool fails
until the tool is built.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .cache import loraplane_home

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = REPO / "hack" / "build-tools.sh"

# The kinds a monitoring test may create; the generated set has more (Alertmanager, Probe, ...).
OPERATOR_CRD_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule", "Prometheus")


class ToolMissing(RuntimeError):
    """A tool of hack/build-tools.sh (or hack/build-cluster.sh) has not been built."""


@functools.cache
def _layout(home: str) -> dict[str, str]:
    proc = subprocess.run(
        ["bash", str(BUILD_TOOLS), "--print-env"],
        capture_output=True,
        text=True,
        env={**os.environ, "LORAPLANE_HOME": home},
        check=False,
    )
    if proc.returncode != 0:
        raise ToolMissing(f"`{BUILD_TOOLS} --print-env` failed: {proc.stderr.strip()}")
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def tool_paths() -> dict[str, Path]:
    """Every NAME=path of `hack/build-tools.sh --print-env`, built or not."""
    return {k: Path(v) for k, v in _layout(str(loraplane_home())).items()}


def _require(name: str, marker: str | None = None, build: str = "hack/build-tools.sh") -> Path:
    path = tool_paths()[name]
    check = path / marker if marker else path
    if not check.exists():
        raise ToolMissing(f"{name}: {check} does not exist; build it with `{build}`")
    return path


def prometheus() -> Path:
    return _require("PROMETHEUS")


def promtool() -> Path:
    return _require("PROMTOOL")


def controller_gen() -> Path:
    return _require("CONTROLLER_GEN")


def helm() -> Path:
    """The project's helm (built with the cluster, not by build-tools)."""
    return _require("HELM", build="hack/build-cluster.sh")


def helm_plugins() -> Path:
    """A HELM_PLUGINS directory holding the helm-unittest plugin (`helm unittest`)."""
    _require("HELM_UNITTEST")
    return _require("HELM_PLUGINS", "unittest/plugin.yaml")


def helm_env() -> dict[str, str]:
    """os.environ plus HELM_PLUGINS, for running `helm unittest` with the project's helm."""
    return {**os.environ, "HELM_PLUGINS": str(helm_plugins())}


def prometheus_operator_crds() -> Path:
    """The directory of generated Prometheus Operator CRD files (monitoring.coreos.com_*.yaml)."""
    return _require("PROMETHEUS_OPERATOR_CRDS", ".complete")


def gie_crds() -> Path:
    """The Gateway API Inference Extension's CRD files (the router's InferencePool among them)."""
    return _require("GIE_CRDS", "inference.networking.k8s.io_inferencepools.yaml")


def prometheus_operator() -> Path:
    """The Prometheus Operator binary: opt-in, built by `hack/build-tools.sh --operator`."""
    return _require("PROMETHEUS_OPERATOR", build="hack/build-tools.sh --operator")


def registry() -> Path:
    """The CNCF distribution registry (`hack/build-tools.sh --sources` builds it)."""
    return _require("REGISTRY", build="hack/build-tools.sh --sources")


def oras() -> Path:
    """The oras CLI, which pushes adapters to the registry as OCI artifacts."""
    return _require("ORAS", build="hack/build-tools.sh --sources")


def versitygw() -> Path:
    """versitygw, the S3 gateway whose posix backend serves a local directory."""
    return _require("VERSITYGW", build="hack/build-tools.sh --sources")


def olah() -> Path:
    """olah's command, in the venv hack/build-tools.sh installs it into."""
    return _require("OLAH", build="hack/build-tools.sh --sources")


# libyaml's parser (in every PyYAML wheel): the operator's CRDs are 4 MB, 20 s in pure Python.
class _CRDLoader(yaml.CSafeLoader):
    """SafeLoader without YAML 1.1's !!value: a bare `=` (an enum value in the operator's CRDs,
    e.g. a relabeling action's `=`) would otherwise fail to load."""

    yaml_implicit_resolvers = {  # noqa: RUF012 (PyYAML's class attribute)
        k: [r for r in v if r[0] != "tag:yaml.org,2002:value"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def load_crds(directory: Path) -> dict[str, dict[str, Any]]:
    """The CRDs of `directory`/*.yaml by kind; each file must hold exactly one document."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(directory.glob("*.yaml")):
        docs = [d for d in yaml.load_all(f.read_text(), Loader=_CRDLoader) if d]
        if len(docs) != 1:
            raise ValueError(f"{f}: {len(docs)} YAML documents, expected one CRD")
        kind = docs[0]["spec"]["names"]["kind"]
        if kind in out:
            raise ValueError(f"{f}: a second CRD for kind {kind}")
        out[kind] = docs[0]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrometheusServer:
    url: str
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (raises on a non-success answer)."""
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r}: {body}")
        return list(body["data"]["result"])


@contextlib.contextmanager
def prometheus_server(
    config: str, *, port: int | None = None, timeout: float = 60.0
) -> Iterator[PrometheusServer]:
    """The built prometheus with `config` (YAML text) on 127.0.0.1:`port` (default: a free one),
    in a temporary directory (config, TSDB, log), ready when yielded; stopped (SIGTERM, then
    SIGKILL) afterwards."""
    binary = prometheus()
    with tempfile.TemporaryDirectory(prefix="loraplane-prometheus-") as tmp:
        work = Path(tmp)
        (work / "prometheus.yml").write_text(config)
        log = work / "prometheus.log"
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    str(binary),
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                    )
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"prometheus not ready at {url} within {timeout:.0f} s:\n"
                        + log.read_text()[-3000:]
                    )
                time.sleep(0.2)
            yield PrometheusServer(url=url, log=log)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

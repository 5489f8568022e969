"""The per-pod sync on its own, against a real CPU vLLM, the real agent and the real API server.

The sync runs in this process with its own runtime (no operator), so every request it makes is
counted: a second run over a converged pod costs one `GET /v1/models` and nothing else.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import ApiClient

from loraplane import services
from loraplane.agent.main import build_app
from loraplane.builders import naming
from loraplane.config import AgentSettings, Settings
from loraplane.sync import sync_pod
from tests.integration.cluster import Cluster
from tests.support import VllmServer, ensure_adapters, start_vllm
from tests.support.vllm_server import free_port

BASE = "tiny"
TOKEN = "sync-test-token"


@pytest.fixture(scope="module")
def server() -> Iterator[VllmServer]:
    vllm = start_vllm()
    try:
        yield vllm
    finally:
        vllm.stop()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The pods mount the store at /adapters; here the agent keeps it in a temporary directory.
    monkeypatch.setattr(naming, "ADAPTER_MOUNT_PATH", str(tmp_path))
    return tmp_path


@pytest.fixture
async def agent(server: VllmServer, store: Path) -> AsyncIterator[int]:
    cfg = AgentSettings(adapter_root=store, agent_token=TOKEN, vllm_url=server.base_url)
    runner = web.AppRunner(build_app(cfg))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port
    await runner.cleanup()


def objects(namespace: str, adapters: dict[str, Path]) -> SimpleNamespace:
    meta = {"namespace": namespace, "uid": "u1", "generation": 1}
    bmd = {
        "metadata": {**meta, "name": BASE},
        "spec": {"model": {"source": {"path": "/m"}}, "lora": {"maxLoraRank": 16}},
    }
    loras = [
        {
            "metadata": {**meta, "name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"baseModel": BASE, "source": {"path": str(adapters[fixture])}},
        }
        for name, fixture in (("sql", "rank8"), ("chat", "rank16"))
    ]
    pod = {
        "metadata": {
            "namespace": namespace,
            "name": "p0",
            "labels": {naming.LABEL_BASE_MODEL: BASE},
        },
        "status": {
            "podIP": "127.0.0.1",
            "containerStatuses": [
                {"name": "vllm", "ready": True, "state": {"running": {}}, "containerID": "c"}
            ],
        },
    }
    return SimpleNamespace(bmd=bmd, loras=loras, pod=pod)


async def test_a_converged_pod_costs_one_models_call(
    cluster: Cluster, namespace: str, server: VllmServer, agent: int
) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": naming.agent_secret_name(BASE)},
        "data": {naming.AGENT_TOKEN_KEY: base64.b64encode(TOKEN.encode()).decode()},
    }
    cluster.apply(secret, namespace)
    calls: Counter[tuple[str, str]] = Counter()

    async def count(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        calls[(params.method, params.url.path)] += 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(count)
    await k8s_config.load_kube_config(config_file=str(cluster.kubeconfig))
    settings = Settings(vllm_port=server.port, agent_port=agent)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session, ApiClient() as api:
        rt = services.compose(api, session, settings).runtime
        objs = objects(namespace, ensure_adapters())
        rt.fleet.observe_base(objs.bmd)
        for obj in objs.loras:
            rt.fleet.observe_adapter(obj)
        rt.fleet.observe_pod(objs.pod)
        key = (namespace, "p0")

        assert await sync_pod(rt, key)
        listed = {m["id"]: m["root"] for m in server.models() if m.get("parent")}
        assert set(listed) == {"sql", "chat"}
        assert all(path.startswith(str(naming.ADAPTER_MOUNT_PATH)) for path in listed.values())
        first = dict(calls)
        # One apply for both adapters to fetch and pin their versions, one more to load them;
        # the agent loads them into its vLLM itself, so the operator sends no load of its own.
        assert first[("POST", "/v1/adapters/apply")] == 2
        assert ("POST", "/v1/load_lora_adapter") not in first

        calls.clear()
        assert await sync_pod(rt, key)
        assert dict(calls) == {("GET", "/v1/models"): 1}, "a converged pod was asked for more"
        states = {n: st.state for n, st in rt.fleet.pod_states[key].items()}
        assert states == {"sql": "Registered", "chat": "Registered"}

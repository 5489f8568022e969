"""hack/fakepods answers as the real agent and fakevllm do, to the operator's own clients.

The fake agent's fetch is checked against the real agent's store on the fixture adapters (the
same summaries, findings and refusal reasons); the operator's agent and vLLM clients then talk
to one fake pod over fakepods' HTTP server, at a loopback address of its own.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakepods import http1
from fakepods.pods import FakePod, Inspections

from fakevllm import Response
from loraplane.agent import protocol
from loraplane.agent.client import AdapterRejectedByAgent, AgentClient, AgentError
from loraplane.agent.store import AdapterStore, Rejected
from loraplane.api import AdapterSource
from loraplane.vllm.client import LoadOutcome, UnloadOutcome, VLLMClient
from tests.support import ensure_adapters

MOUNT = "/adapter-sources"
TOKEN = "t0ken"
# Refusals and acceptances the real store makes on the fixture adapters.
CASES = ("rank8", "rank16", "rank64", "dora", "bias", "no-config", "no-tensors", "corrupt")


@pytest.fixture(scope="module")
def adapters() -> dict[str, Path]:
    return ensure_adapters()


def pod(sources: Path) -> dict[str, Any]:
    mounts = [{"name": "sources", "mountPath": MOUNT, "readOnly": True}]
    return {
        "metadata": {"name": "base-0", "namespace": "ns", "uid": "u-0"},
        "spec": {
            "containers": [
                {
                    "name": "vllm",
                    "image": "loraplane/fakevllm:bench",
                    "args": ["--model", "m", "--enable-lora", "--max-lora-rank", "16"],
                    "env": [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "true"}],
                    "volumeMounts": mounts,
                },
                {
                    "name": "agent",
                    "image": "ghcr.io/loraplane/loraplane:dev",
                    "volumeMounts": mounts,
                },
            ],
            "volumes": [{"name": "sources", "hostPath": {"path": str(sources)}}],
        },
    }


def fetch_body(name: str, rank: int = 16) -> bytes:
    source = {"path": f"{MOUNT}/{name}"}
    return json.dumps({"name": name, "source": source, "maxLoraRank": rank}).encode()


@pytest.mark.parametrize("name", CASES)
def test_a_fetch_is_answered_as_the_real_agent_answers(
    adapters: dict[str, Path], tmp_path: Path, name: str
) -> None:
    store = AdapterStore(tmp_path, None)
    request = protocol.FetchRequest(
        name=name, source=AdapterSource(path=str(adapters[name])), max_lora_rank=16
    )

    async def both() -> tuple[protocol.Fetched | Rejected, Response]:
        fake = FakePod(pod(adapters[name].parent), "127.0.0.7", TOKEN, Inspections())
        headers = {"authorization": f"Bearer {TOKEN}"}
        answer = fake.agent_call("POST", protocol.FETCH, headers, fetch_body(name))
        try:
            return await store.fetch(request), answer
        except Rejected as exc:
            return exc, answer

    real, answer = asyncio.run(both())
    body = json.loads(answer.body)
    if isinstance(real, Rejected):
        assert answer.status == protocol.REJECTED_STATUS
        assert body["reason"] == real.reason
        return
    assert answer.status == 200
    fetched = protocol.Fetched.model_validate(body)
    assert fetched.summary == real.summary
    assert fetched.findings == real.findings
    assert fetched.path == f"/adapters/{name}/{real.summary.digest.removeprefix('sha256:')}"


def test_the_operators_clients_see_a_pod(adapters: dict[str, Path]) -> None:
    fake = FakePod(pod(adapters["rank8"].parent), "127.0.0.7", TOKEN, Inspections())
    pods = {fake.ip: fake}

    async def vllm(local: str, method: str, path: str, h: dict[str, str], b: bytes) -> Any:
        found = pods.get(local)
        return None if found is None else await found.vllm_call(method, path, h, b, local)

    async def agent(local: str, method: str, path: str, h: dict[str, str], b: bytes) -> Any:
        found = pods.get(local)
        return None if found is None else found.agent_call(method, path, h, b)

    async def talk() -> None:
        servers = [
            await http1.serve(vllm, "0.0.0.0", 0, 5.0),
            await http1.serve(agent, "0.0.0.0", 0, 75.0),
        ]
        vport, aport = (s.sockets[0].getsockname()[1] for s in servers)
        async with aiohttp.ClientSession() as session:
            v = VLLMClient(f"http://{fake.ip}:{vport}", None, session)
            a = AgentClient(f"http://{fake.ip}:{aport}", TOKEN, session, timeout=10)
            request = protocol.FetchRequest(
                name="sql", source=AdapterSource(path=f"{MOUNT}/rank8"), max_lora_rank=16
            )
            fetched = await a.fetch(request)
            assert await v.load_adapter("sql", fetched.path) is LoadOutcome.LOADED
            assert await v.load_adapter("sql", fetched.path) is LoadOutcome.ALREADY_LOADED
            assert (await v.list_models()).adapter_paths == {"sql": fetched.path}
            await a.set_required(["sql"])
            assert fake.agent_ready()
            assert await a.prune({}) == [fetched.path.removeprefix("/adapters/")]
            assert not (await a.residency()).available
            big = protocol.FetchRequest(
                name="big", source=AdapterSource(path=f"{MOUNT}/rank64"), max_lora_rank=16
            )
            with pytest.raises(AdapterRejectedByAgent):
                await a.fetch(big)
            with pytest.raises(AgentError):
                await AgentClient(a.base_url, "wrong", session, timeout=10).residency()
            assert await v.unload_adapter("sql") is UnloadOutcome.UNLOADED
            # No pod at an address: the connection closes, as none would open.
            assert not await VLLMClient(f"http://127.0.0.8:{vport}", None, session).health()
            fake.restart_vllm()
            assert (await v.list_models()).adapter_paths == {}
            assert not fake.agent_ready()
        for s in servers:
            s.close()

    asyncio.run(talk())

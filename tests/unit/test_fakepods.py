"""hack/fakepods answers as the real agent and fakevllm do, to the operator's own clients.

The fake agent's apply is checked against the real agent's apply over its store on the fixture
adapters (the same summaries, findings and refusal reasons); the operator's agent and vLLM
clients then talk to one fake pod over fakepods' HTTP server, at a loopback address of its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakepods import http1
from fakepods.pods import FakePod, Inspections

from fakevllm import Response
from loraplane.agent import protocol
from loraplane.agent.apply import apply
from loraplane.agent.client import AgentClient, AgentError
from loraplane.agent.store import AdapterStore
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


def item(
    name: str, source: str, load: bool = False, digest: str | None = None
) -> protocol.ApplyItem:
    return protocol.ApplyItem(
        name=name,
        source=AdapterSource(path=source),
        max_lora_rank=16,
        served_name=name,
        load=load,
        expected_digest=digest,
    )


def applying(*items: protocol.ApplyItem) -> protocol.ApplyRequest:
    return protocol.ApplyRequest(adapters=list(items), concurrency=2, load_timeout_seconds=5)


@pytest.mark.parametrize("name", CASES)
def test_an_apply_is_answered_as_the_real_agent_answers(
    adapters: dict[str, Path], tmp_path: Path, name: str
) -> None:
    store = AdapterStore(tmp_path, None)
    real_request = applying(item(name, str(adapters[name])))
    fake_request = applying(item(name, f"{MOUNT}/{name}"))

    async def both() -> tuple[protocol.Applied, Response]:
        fake = FakePod(pod(adapters[name].parent), "127.0.0.7", TOKEN, Inspections())
        headers = {"authorization": f"Bearer {TOKEN}"}
        body = fake_request.model_dump_json(by_alias=True).encode()
        answer = await fake.agent_call("POST", protocol.APPLY, headers, body)
        (real,) = [a async for a in apply(store, None, real_request)]  # type: ignore[arg-type]
        return real, answer

    real, answer = asyncio.run(both())
    assert answer.status == 200
    (line,) = answer.body.decode().splitlines()
    faked = protocol.Applied.model_validate_json(line)
    if real.rejected is not None:
        assert faked.rejected is not None and faked.rejected.reason == real.rejected.reason
        return
    assert real.fetched is not None and faked.fetched is not None
    assert faked.fetched.summary == real.fetched.summary
    assert faked.fetched.findings == real.fetched.findings
    digest = real.fetched.summary.digest.removeprefix("sha256:")
    assert faked.fetched.path == f"/adapters/{name}/{digest}"
    assert not faked.loaded and not real.loaded  # not pinned: fetched only


def test_the_operators_clients_see_a_pod(adapters: dict[str, Path]) -> None:
    fake = FakePod(pod(adapters["rank8"].parent), "127.0.0.7", TOKEN, Inspections())
    pods = {fake.ip: fake}

    async def vllm(local: str, method: str, path: str, h: dict[str, str], b: bytes) -> Any:
        found = pods.get(local)
        return None if found is None else await found.vllm_call(method, path, h, b, local)

    async def agent(local: str, method: str, path: str, h: dict[str, str], b: bytes) -> Any:
        found = pods.get(local)
        return None if found is None else await found.agent_call(method, path, h, b)

    async def talk() -> None:
        servers = [
            await http1.serve(vllm, "0.0.0.0", 0, 5.0),
            await http1.serve(agent, "0.0.0.0", 0, 75.0),
        ]
        vport, aport = (s.sockets[0].getsockname()[1] for s in servers)
        async with aiohttp.ClientSession() as session:
            v = VLLMClient(f"http://{fake.ip}:{vport}", None, session)
            a = AgentClient(f"http://{fake.ip}:{aport}", TOKEN, session, timeout=10)
            source = f"{MOUNT}/rank8"
            (first,) = [x async for x in a.apply(applying(item("sql", source)), 10)]
            assert first.fetched is not None and not first.loaded
            fetched, digest = first.fetched, first.fetched.summary.digest
            pinned = applying(item("sql", source, load=True, digest=digest))
            (second,) = [x async for x in a.apply(pinned, 10)]
            assert second.loaded and second.fetched == fetched
            assert fake.vllm.local_counts == {"POST /v1/load_lora_adapter": 1}
            assert await v.load_adapter("sql", fetched.path) is LoadOutcome.ALREADY_LOADED
            assert (await v.list_models()).adapter_paths == {"sql": fetched.path}
            await a.set_required(["sql"])
            assert fake.agent_ready()
            assert await a.prune({}) == [fetched.path.removeprefix("/adapters/")]
            assert not (await a.residency()).available
            big = applying(item("big", f"{MOUNT}/rank64"))
            (refused,) = [x async for x in a.apply(big, 10)]
            assert refused.rejected is not None and refused.rejected.reason == "RankExceedsMax"
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

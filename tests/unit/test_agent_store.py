"""The agent's store end to end through its protocol types: fetch, verify, prune."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncGenerator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from loraplane.agent.main import build_app
from loraplane.agent.protocol import FetchRequest
from loraplane.agent.store import AdapterStore, Rejected, VersionUnavailable
from loraplane.api import AdapterSource
from loraplane.config import AgentSettings
from tests.support import ensure_adapters
from tests.support.vllm_server import free_port


@pytest.fixture(scope="session")
def adapters() -> dict[str, Path]:
    return ensure_adapters()


def request(source: Path, name: str = "sql", rank: int = 16) -> FetchRequest:
    return FetchRequest(name=name, source=AdapterSource(path=str(source)), max_lora_rank=rank)


def test_fetch_answers_the_verified_summary(adapters: dict[str, Path], tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, None)
    fetched = asyncio.run(store.fetch(request(adapters["rank8"])))
    assert fetched.summary.rank == 8 and fetched.summary.digest
    assert Path(fetched.path).parent == tmp_path / "sql"
    with pytest.raises(Rejected) as refused:
        asyncio.run(store.fetch(request(adapters["rank64"], name="big")))
    assert refused.value.reason == "RankExceedsMax"


def test_a_prune_killed_halfway_never_leaves_a_partial_version(
    adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent killed while deleting must not leave a directory under the version's name that
    a later fetch of the same digest serves to vLLM (which then dies on a missing file)."""
    store = AdapterStore(tmp_path, None)
    fetched = asyncio.run(store.fetch(request(adapters["rank8"])))
    version = Path(fetched.path)
    real_rmtree = shutil.rmtree

    def killed_midway(path: str | Path, *args: object, **kwargs: object) -> None:
        first = sorted(p for p in Path(path).iterdir() if not p.name.startswith("."))[0]
        first.unlink()
        raise KeyboardInterrupt("agent killed")

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        store.prune({})
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert not version.exists(), "a half-deleted directory kept the version's name"
    again = asyncio.run(store.fetch(request(adapters["rank8"])))
    assert again.path == fetched.path
    for rel in ("adapter_config.json", "adapter_model.safetensors"):
        assert (version / rel).is_file()
    # The next prune finishes what the killed one left behind.
    store.prune({"sql": version.name})
    assert sorted(p.name for p in (tmp_path / "sql").iterdir()) == [version.name]


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def pinned(source: Path, digest: str, peers: list[str] | None = None) -> FetchRequest:
    req = request(source)
    return req.model_copy(update={"expected_digest": digest, "peers": peers or []})


def test_a_pinned_version_is_served_from_the_store_whatever_the_source_does(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    source = tmp_path / "src"
    shutil.copytree(adapters["rank8"], source)
    store = AdapterStore(tmp_path / "store", None)
    first = asyncio.run(store.fetch(request(source)))
    digest = first.summary.digest
    assert digest is not None
    shutil.rmtree(source)
    assert asyncio.run(store.fetch(pinned(source, digest))).path == first.path
    shutil.copytree(adapters["rank8-v2"], source)  # other files at the same path
    assert asyncio.run(store.fetch(pinned(source, digest))).path == first.path
    # Without the pin the source is what counts: a new version.
    assert asyncio.run(store.fetch(request(source))).path != first.path


def test_a_pinned_version_missing_everywhere_is_unavailable_not_rejected(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    source = tmp_path / "src"
    shutil.copytree(adapters["rank8"], source)
    digest = asyncio.run(AdapterStore(tmp_path / "a", None).fetch(request(source))).summary.digest
    assert digest is not None
    empty = AdapterStore(tmp_path / "b", None)
    shutil.rmtree(source)
    with pytest.raises(VersionUnavailable) as gone:
        asyncio.run(empty.fetch(pinned(source, digest)))
    assert gone.value.reason == "SourceUnavailable"
    shutil.copytree(adapters["rank8-v2"], source)
    with pytest.raises(VersionUnavailable) as changed:
        asyncio.run(empty.fetch(pinned(source, digest)))
    assert changed.value.reason == "SourceChanged" and digest in changed.value.message
    # A first verification has no pin: a missing source is the adapter's own failure.
    with pytest.raises(Rejected) as missing:
        asyncio.run(empty.fetch(request(tmp_path / "nowhere")))
    assert missing.value.reason == "AdapterNotFound"


async def test_a_pod_without_the_pinned_version_gets_it_from_a_peer(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    source = tmp_path / "src"
    shutil.copytree(adapters["rank8"], source)
    holder_cfg = AgentSettings(adapter_root=tmp_path / "holder", agent_token="t")
    holder = AdapterStore(holder_cfg.adapter_root, None)
    digest = (await holder.fetch(request(source))).summary.digest
    assert digest is not None
    runner = web.AppRunner(build_app(holder_cfg))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        shutil.rmtree(source)
        newcomer = AdapterStore(tmp_path / "new", None, token="t")
        peer = f"http://127.0.0.1:{port}"
        with pytest.raises(VersionUnavailable):  # a wrong token is refused by the peer
            await AdapterStore(tmp_path / "x", None, token="bad").fetch(
                pinned(source, digest, [peer])
            )
        got = await newcomer.fetch(pinned(source, digest, ["http://127.0.0.1:1", peer]))
    finally:
        await runner.cleanup()
    assert got.summary.digest == digest
    assert visible(Path(got.path)) == ["adapter_config.json", "adapter_model.safetensors"]


async def test_a_bad_apply_request_is_answered_without_its_credentials(tmp_path: Path) -> None:
    """The operator logs the agent's 400 answer: it must not quote the request's secrets."""
    cfg = AgentSettings(adapter_root=tmp_path / "store", agent_token="t")
    runner = web.AppRunner(build_app(cfg))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    item = {
        "name": "a",
        "source": {"s3": {"uri": "s3://bkt/p"}},
        "credentials": {"kind": "s3", "accessKeyId": "AKIAEXAMPLE", "secret": "s3-secret-key"},
        "maxLoraRank": 16,
        "servedName": "a",
        "load": True,
    }
    body = {"adapters": [item], "concurrency": 1, "loadTimeoutSeconds": 5}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/v1/adapters/apply",
                json=body,
                headers={"Authorization": "Bearer t"},
            ) as resp,
        ):
            status, text = resp.status, await resp.text()
    finally:
        await runner.cleanup()
    assert status == 400 and "credentials" in text
    assert "s3-secret-key" not in text and "AKIAEXAMPLE" not in text


async def test_a_slow_apply_says_it_is_at_work_and_a_silent_agent_is_given_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While its adapters take longer than a heartbeat, the agent sends empty lines, so the
    operator's wait for the next line tells a slow fetch from an agent that hangs."""
    from loraplane.agent import main, protocol
    from loraplane.agent.client import AgentClient, AgentError

    async def slow(*_: object) -> AsyncGenerator[protocol.Applied, None]:
        await asyncio.sleep(0.5)
        yield protocol.Applied(name="a", error="done late")

    monkeypatch.setattr(main, "apply", slow)
    cfg = AgentSettings(adapter_root=tmp_path / "store", agent_token="t")
    runner = web.AppRunner(build_app(cfg))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    item = protocol.ApplyItem(
        name="a", source=AdapterSource(path="/x"), max_lora_rank=8, served_name="a", load=False
    )
    request = protocol.ApplyRequest(
        adapters=[item], concurrency=1, load_timeout_seconds=1, heartbeat_seconds=0.1
    )
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"http://127.0.0.1:{port}{protocol.APPLY}",
                json=request.model_dump(mode="json", by_alias=True),
                headers={"Authorization": "Bearer t"},
            ) as resp:
                lines = (await resp.read()).decode().split("\n")
            assert lines[0] == "" and lines.count("") >= 3  # heartbeats, then the answer
            agent = AgentClient(f"http://127.0.0.1:{port}", "t", session, timeout=5)
            (late,) = [a async for a in agent.apply(request, line_timeout=0.3)]
            assert late.error == "done late"
            hung = AgentClient(f"http://127.0.0.1:{silent_port}", "t", session, timeout=5)
            with pytest.raises(AgentError, match="timed out"):
                _ = [a async for a in hung.apply(request, line_timeout=0.3)]
    finally:
        silent.close()
        await runner.cleanup()

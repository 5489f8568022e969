"""The agent's readiness check, against the fake vLLM's real HTTP server: Ready only while vLLM is
healthy and has every required adapter, a kept verdict costs one `/health`, and a vLLM restart is
seen at the next check even when no check ever saw it unhealthy."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from loraplane.agent.readiness import Readiness, ReadinessCheck, RequiredStore
from loraplane.vllm import VLLMClient
from tests.support.fake_vllm import FAST, Fake, adapter_dir

READY = Readiness(True, "ok")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = Fake([], FAST).start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def check(tmp_path: Path, clock: Clock) -> ReadinessCheck:
    return ReadinessCheck(RequiredStore(tmp_path / "store"), refresh_seconds=30, clock=clock)


@pytest.fixture
async def vllm(fake: Fake, check: ReadinessCheck) -> AsyncIterator[VLLMClient]:
    async with aiohttp.ClientSession(trace_configs=[check.trace_config()]) as session:
        yield VLLMClient(fake.url, None, session, timeout=2)


def agent_calls(fake: Fake) -> dict[str, int]:
    """What the fake counted from loopback callers, the agent's side of the pod."""
    with urllib.request.urlopen(fake.url + "/fakevllm/stats", timeout=5) as r:
        counts: dict[str, int] = json.load(r)["loopback"]
    return counts


async def register(fake: Fake, tmp_path: Path, *names: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = VLLMClient(fake.url, None, session)
        for name in names:
            await client.load_adapter(name, str(adapter_dir(tmp_path / "files", name)))


async def test_ready_once_every_required_adapter_is_registered_then_health_alone(
    fake: Fake, check: ReadinessCheck, vllm: VLLMClient, tmp_path: Path
) -> None:
    check.required.save(["a", "b"])
    await register(fake, tmp_path, "a")
    assert await check.check(vllm) == Readiness(False, "adapters not registered yet: b")
    await register(fake, tmp_path, "b")
    assert await check.check(vllm) == READY
    before = agent_calls(fake)
    for _ in range(20):
        assert await check.check(vllm) == READY
    after = agent_calls(fake)
    assert after.get("GET /v1/models", 0) - before.get("GET /v1/models", 0) == 0
    assert after["GET /health"] - before["GET /health"] == 20


async def test_a_vllm_restart_between_two_checks_is_seen_though_health_never_failed(
    fake: Fake, check: ReadinessCheck, vllm: VLLMClient, tmp_path: Path
) -> None:
    check.required.save(["a"])
    await register(fake, tmp_path, "a")
    assert await check.check(vllm) == READY
    fake.stop()
    restarted = Fake([], FAST, port=fake.port).start()  # the same address, no adapters
    try:
        assert await check.check(vllm) == Readiness(False, "adapters not registered yet: a")
        await register(restarted, tmp_path / "again", "a")
        assert await check.check(vllm) == READY
    finally:
        restarted.stop()


async def test_a_new_required_list_is_judged_at_once(
    fake: Fake, check: ReadinessCheck, vllm: VLLMClient, tmp_path: Path
) -> None:
    check.required.save(["a"])
    await register(fake, tmp_path, "a")
    assert await check.check(vllm) == READY
    check.required.save(["a", "c"])
    assert await check.check(vllm) == Readiness(False, "adapters not registered yet: c")


async def test_a_kept_verdict_is_listed_again_after_refresh_seconds(
    fake: Fake, check: ReadinessCheck, vllm: VLLMClient, clock: Clock
) -> None:
    assert await check.check(vllm) == READY  # nothing required yet
    listed = agent_calls(fake)["GET /v1/models"]
    clock.now += 29
    assert await check.check(vllm) == READY
    assert agent_calls(fake)["GET /v1/models"] == listed
    clock.now += 1
    assert await check.check(vllm) == READY
    assert agent_calls(fake)["GET /v1/models"] == listed + 1


async def test_an_unreachable_vllm_is_not_ready_and_forgets_the_verdict(
    fake: Fake, check: ReadinessCheck, vllm: VLLMClient
) -> None:
    assert await check.check(vllm) == READY
    fake.stop()
    assert await check.check(vllm) == Readiness(False, "vLLM is not healthy yet")


def test_the_required_list_outlives_the_agent_not_the_volume(tmp_path: Path) -> None:
    RequiredStore(tmp_path / "store").save(["b", "a", "b"])
    assert RequiredStore(tmp_path / "store").load() == ["a", "b"]
    assert RequiredStore(tmp_path / "other").load() == []

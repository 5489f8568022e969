"""VLLMClient against a real CPU vLLM 0.32 (DESIGN.md §4): idempotent load and unload, /v1/models,
the API key, every valid fixture adapter served, every broken one refused with its own reason
while the server stays healthy, pre-flight agreeing with vLLM on every fixture, and a server
without runtime LoRA updating.

One vLLM at a time: each class starts its own server and stops it when its tests are done.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from loraplane.adapters.inspect import AdapterInspectionError, inspect_adapter
from loraplane.adapters.validate import errors, llama_base_facts, validate
from loraplane.vllm import (
    AdapterNameConflict,
    AdapterRejected,
    LoadOutcome,
    Reason,
    RuntimeLoRAUpdatingDisabled,
    Unauthorized,
    UnloadOutcome,
    VLLMClient,
)
from tests.support import VllmServer, ensure_adapters, ensure_tiny_model, start_vllm
from tests.support.adapters import SPECS

pytestmark = pytest.mark.vllm

API_KEY = "contract-test-key"
MAX_LORA_RANK = 16

# What vLLM 0.32 answers for each fixture it refuses, as classified (measured); every fixture of
# SPECS is here or in ACCEPTED.
VLLM_REASON: dict[str, Reason] = {
    "rank64": Reason.RANK_EXCEEDS_MAX,
    "rank-pattern": Reason.RANK_EXCEEDS_MAX,
    "dora": Reason.DORA_NOT_SUPPORTED,
    "bias": Reason.BIAS_NOT_SUPPORTED,
    "modules-to-save": Reason.MODULES_TO_SAVE_NOT_SUPPORTED,
    "wrong-base": Reason.BASE_MODEL_SHAPE_MISMATCH,
    "corrupt": Reason.CORRUPT_WEIGHTS,
    "corrupt-data": Reason.CORRUPT_WEIGHTS,
    "no-config": Reason.ADAPTER_NOT_FOUND,
    "no-weights": Reason.NO_TENSORS,
    # vLLM 0.32 refuses an empty safetensors file with an empty message: only pre-flight can
    # name it (NoTensors); the client still reports a permanent rejection.
    "no-tensors": Reason.ADAPTER_REJECTED,
    "lora-bias": Reason.BIAS_NOT_SUPPORTED,
    "pissa": Reason.UNSUPPORTED_LORA_FEATURE,
    # "base_model.model.lm_head.weight is unsupported LoRA weight": the resized embeddings.
    "new-tokens": Reason.UNSUPPORTED_TARGET_MODULES,
    "no-alpha": Reason.INVALID_ADAPTER_CONFIG,
}
ACCEPTED = [
    "rank8",
    "rank16",
    "rank8-mlp",
    "rank8-v2",
    "rank8-embed",
    "other-base-name",
    "lm-head",
    "embed-default",
    "lm-head-default",
    "all-linear",
    "alpha-pattern",
    "rslora",
    "layers-to-transform",
]


@pytest.fixture(scope="module")
def adapters() -> dict[str, Path]:
    found = ensure_adapters()
    missing = sorted((set(VLLM_REASON) | set(ACCEPTED)) - set(found))
    if missing:
        pytest.fail(f"tests/support/adapters.py builds no fixture named {missing}", pytrace=False)
    return found


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client_for(server: VllmServer, session: aiohttp.ClientSession, key: str | None) -> VLLMClient:
    return VLLMClient(server.base_url, key, session, timeout=30)


async def complete(server: VllmServer, session: aiohttp.ClientSession, model: str) -> str:
    """A greedy completion through `model` (the base model's name or an adapter's)."""
    async with session.post(
        f"{server.base_url}/v1/completions",
        json={"model": model, "prompt": "The operator pushes", "max_tokens": 8, "temperature": 0},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        body = await response.text()
    assert response.status == 200, f"completion through {model}: {response.status} {body}"
    return str(json.loads(body)["choices"][0]["text"])


@dataclass(frozen=True)
class Verdict:
    """Accepted (reason None) or refused, with the reason and message it was refused under."""

    reason: Reason | None = None
    message: str = ""

    def __str__(self) -> str:
        return "accepts" if self.reason is None else f"refuses ({self.reason}: {self.message})"


def preflight_verdict(path: Path, model: str) -> Verdict:
    """What the agent decides before any load (agent/store.py): inspect, then validate against
    the base model's config.json, refusing on the first error."""
    facts = llama_base_facts(ensure_tiny_model(), max_lora_rank=MAX_LORA_RANK, model_name=model)
    try:
        found = errors(validate(inspect_adapter(path), facts))
    except AdapterInspectionError as e:
        return Verdict(e.reason, e.message)
    return Verdict(found[0].reason, found[0].message) if found else Verdict()


async def vllm_verdict(client: VLLMClient, name: str, path: Path) -> Verdict:
    """What vLLM does with a raw load of the same directory (unloaded again when accepted)."""
    try:
        await client.load_adapter(name, str(path))
    except AdapterRejected as e:
        return Verdict(e.reason, e.message)
    await client.unload_adapter(name)
    return Verdict()


def test_every_fixture_has_one_measured_verdict() -> None:
    assert set(VLLM_REASON).isdisjoint(ACCEPTED), set(VLLM_REASON) & set(ACCEPTED)
    assert sorted([*VLLM_REASON, *ACCEPTED]) == sorted(SPECS)
    assert sorted(ACCEPTED) == sorted(name for name, spec in SPECS.items() if spec.valid)


# Class-scoped, so each server stops when its class is done and the next one starts alone.
@pytest.fixture(scope="class")
def lora_server(adapters: dict[str, Path]) -> Iterator[VllmServer]:
    """A server as the operator runs it: --enable-lora, runtime updating on, an API key."""
    server = start_vllm(
        lora_args=[
            "--enable-lora",
            "--max-lora-rank", str(MAX_LORA_RANK),
            "--max-loras", "2",
            "--max-cpu-loras", "4",
        ],
        extra_args=["--api-key", API_KEY],
    )  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="class")
def plain_server() -> Iterator[VllmServer]:
    """The same server without VLLM_ALLOW_RUNTIME_LORA_UPDATING."""
    server = start_vllm(env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "false"})
    try:
        yield server
    finally:
        server.stop()


class TestContract:
    """A server as the operator runs it: --enable-lora, runtime updating on, an API key."""

    async def test_health_and_version(
        self, lora_server: VllmServer, session: aiohttp.ClientSession
    ) -> None:
        client = client_for(lora_server, session, None)  # /health and /version are not guarded
        assert await client.health()
        assert await client.version() == "0.32.0"

    async def test_a_request_before_any_adapter_load_is_served(
        self, lora_server: VllmServer, session: aiohttp.ClientSession
    ) -> None:
        # On a CPU with AMX, vLLM's attention kernel dies of SIGILL here unless the process
        # asked Linux for AMX state first: loraplane's plugin does (loraplane.plugin.amx).
        await complete(lora_server, session, lora_server.model)  # asserts a 200
        assert await client_for(lora_server, session, None).health()

    async def test_api_key_guards_the_runtime_routes(
        self, lora_server: VllmServer, session: aiohttp.ClientSession, adapters: dict[str, Path]
    ) -> None:
        for key in (None, "wrong"):
            client = client_for(lora_server, session, key)
            with pytest.raises(Unauthorized):
                await client.list_models()
            with pytest.raises(Unauthorized):
                await client.load_adapter("rank8", str(adapters["rank8"]))
            with pytest.raises(Unauthorized):
                await client.unload_adapter("rank8")

    async def test_load_reload_list_unload(
        self, lora_server: VllmServer, session: aiohttp.ClientSession, adapters: dict[str, Path]
    ) -> None:
        client = client_for(lora_server, session, API_KEY)
        path = str(adapters["rank8"])
        assert await client.load_adapter("chat", path) == LoadOutcome.LOADED
        assert await client.load_adapter("chat", path) == LoadOutcome.ALREADY_LOADED
        assert await client.load_adapter("chat", path + "/") == LoadOutcome.ALREADY_LOADED

        listed = await client.list_models()
        assert [c.id for c in listed.base_models] == [lora_server.model]
        card = listed.adapter("chat")
        assert card is not None
        assert card.root == path and card.parent == lora_server.model

        with pytest.raises(AdapterNameConflict) as info:
            await client.load_adapter("chat", str(adapters["rank8-v2"]))
        assert info.value.registered_path == path
        assert (await client.list_models()).adapter_paths["chat"] == path

        # A new version under the same name, swapped in place: the name never disappears.
        v2 = str(adapters["rank8-v2"])
        assert await client.load_adapter("chat", v2, inplace=True) == LoadOutcome.LOADED
        assert (await client.list_models()).adapter_paths["chat"] == v2
        with pytest.raises(AdapterRejected) as rejected:
            await client.load_adapter("chat", str(adapters["rank64"]), inplace=True)
        assert rejected.value.reason == Reason.RANK_EXCEEDS_MAX
        assert (await client.list_models()).adapter_paths["chat"] == v2

        assert await client.unload_adapter("chat") == UnloadOutcome.UNLOADED
        assert (await client.list_models()).adapter("chat") is None
        assert await client.unload_adapter("chat") == UnloadOutcome.NOT_LOADED
        assert await client.unload_adapter("never-loaded") == UnloadOutcome.NOT_LOADED
        assert await client.health()

    @pytest.mark.parametrize("name", ACCEPTED)
    async def test_valid_adapters_load(
        self,
        lora_server: VllmServer,
        session: aiohttp.ClientSession,
        adapters: dict[str, Path],
        name: str,
    ) -> None:
        client = client_for(lora_server, session, API_KEY)
        # Asked before the load: vLLM 0.32 can answer the base model with an lm_head LoRA's output
        # (measured: load and unload any adapter, load lm-head, ask it, then ask the base).
        base = await complete(lora_server, session, lora_server.model)
        assert await client.load_adapter(name, str(adapters[name])) == LoadOutcome.LOADED
        assert (await client.list_models()).adapter_paths[name] == str(adapters[name])
        # Served by the adapter, not silently by the base model.
        assert await complete(lora_server, session, name) != base
        assert await client.unload_adapter(name) == UnloadOutcome.UNLOADED

    @pytest.mark.parametrize("name", sorted(VLLM_REASON))
    async def test_broken_adapters_are_classified(
        self,
        lora_server: VllmServer,
        session: aiohttp.ClientSession,
        adapters: dict[str, Path],
        name: str,
    ) -> None:
        client = client_for(lora_server, session, API_KEY)
        with pytest.raises(AdapterRejected) as info:
            await client.load_adapter(name, str(adapters[name]))
        error = info.value
        assert error.reason == VLLM_REASON[name], error.raw_message
        assert error.permanent
        assert str(adapters[name]) not in error.message
        assert (await client.list_models()).adapter(name) is None
        assert await client.health(), f"vLLM unhealthy after loading {name}"

    async def test_missing_path(
        self, lora_server: VllmServer, session: aiohttp.ClientSession
    ) -> None:
        client = client_for(lora_server, session, API_KEY)
        with pytest.raises(AdapterRejected) as info:
            await client.load_adapter("nowhere", "/adapters/nowhere/0123")
        assert info.value.reason == Reason.ADAPTER_NOT_FOUND
        assert info.value.status == 404
        assert info.value.detail == "Loading lora nowhere failed: No adapter found for <path>"
        assert info.value.message.endswith(f"(vLLM: {info.value.detail})")

    async def test_name_of_the_base_model(
        self, lora_server: VllmServer, session: aiohttp.ClientSession, adapters: dict[str, Path]
    ) -> None:
        client = client_for(lora_server, session, API_KEY)
        with pytest.raises(AdapterRejected) as info:
            await client.load_adapter(lora_server.model, str(adapters["rank8"]))
        assert info.value.reason == Reason.NAME_CONFLICTS_WITH_BASE_MODEL

    @pytest.mark.parametrize("name", sorted(SPECS))
    async def test_preflight_agrees_with_vllm(
        self,
        lora_server: VllmServer,
        session: aiohttp.ClientSession,
        adapters: dict[str, Path],
        name: str,
    ) -> None:
        """Pre-flight is never stricter than vLLM nor more lenient: on every fixture both accept,
        or both refuse, under the same reason where vLLM's message has one."""
        preflight = preflight_verdict(adapters[name], lora_server.model)
        vllm = await vllm_verdict(client_for(lora_server, session, API_KEY), name, adapters[name])
        agree = (preflight.reason is None) == (vllm.reason is None) and vllm.reason in (
            None,
            Reason.ADAPTER_REJECTED,
            preflight.reason,
        )
        assert agree, f"fixture {name}: pre-flight {preflight}; vLLM {vllm}"


class TestWithoutRuntimeUpdating:
    """The same server started without VLLM_ALLOW_RUNTIME_LORA_UPDATING: the routes are missing."""

    async def test_load_and_unload_say_how_to_enable_it(
        self, plain_server: VllmServer, session: aiohttp.ClientSession, adapters: dict[str, Path]
    ) -> None:
        client = client_for(plain_server, session, None)
        assert await client.health()
        with pytest.raises(RuntimeLoRAUpdatingDisabled) as info:
            await client.load_adapter("rank8", str(adapters["rank8"]))
        assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in info.value.message
        assert info.value.reason == Reason.RUNTIME_UPDATING_DISABLED
        with pytest.raises(RuntimeLoRAUpdatingDisabled):
            await client.unload_adapter("rank8")
        assert (await client.list_models()).adapters == ()

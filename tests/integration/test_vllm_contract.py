"""VLLMClient against a real CPU vLLM 0.32 (DESIGN.md §4): idempotent load and unload, /v1/models,
the API key, every broken fixture adapter refused with its own reason while the server stays
healthy, pre-flight agreeing with vLLM, and a server without runtime LoRA updating.

One vLLM at a time: each class starts its own server and stops it when its tests are done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
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

pytestmark = pytest.mark.vllm

API_KEY = "contract-test-key"
MAX_LORA_RANK = 16

# What vLLM 0.32 answers for each broken fixture, as classified; None: vLLM accepts it.
VLLM_REASON: dict[str, Reason | None] = {
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
}
ACCEPTED = ["rank8", "rank16", "rank8-mlp", "rank8-embed", "other-base-name", "lm-head"]


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
        assert await client.load_adapter(name, str(adapters[name])) == LoadOutcome.LOADED
        assert (await client.list_models()).adapter_paths[name] == str(adapters[name])
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
        assert info.value.message == "Loading lora nowhere failed: No adapter found for <path>"

    async def test_name_of_the_base_model(
        self, lora_server: VllmServer, session: aiohttp.ClientSession, adapters: dict[str, Path]
    ) -> None:
        client = client_for(lora_server, session, API_KEY)
        with pytest.raises(AdapterRejected) as info:
            await client.load_adapter(lora_server.model, str(adapters["rank8"]))
        assert info.value.reason == Reason.NAME_CONFLICTS_WITH_BASE_MODEL

    @pytest.mark.parametrize("name", sorted(set(VLLM_REASON) | set(ACCEPTED)))
    async def test_preflight_agrees_with_vllm(
        self,
        lora_server: VllmServer,
        session: aiohttp.ClientSession,
        adapters: dict[str, Path],
        name: str,
    ) -> None:
        """Pre-flight refuses exactly what vLLM refuses, under the same reason (where vLLM gives
        one), and accepts what vLLM accepts."""
        facts = llama_base_facts(
            ensure_tiny_model(), max_lora_rank=MAX_LORA_RANK, model_name=lora_server.model
        )
        try:
            preflight = [f.reason for f in errors(validate(inspect_adapter(adapters[name]), facts))]
        except AdapterInspectionError as e:
            preflight = [e.reason]
        client = client_for(lora_server, session, API_KEY)
        vllm: Reason | None
        try:
            await client.load_adapter(name, str(adapters[name]))
        except AdapterRejected as e:
            vllm = e.reason
        else:
            vllm = None
            await client.unload_adapter(name)
        if vllm is None:
            assert preflight == []
        elif vllm == Reason.ADAPTER_REJECTED:
            assert preflight, "vLLM refused it: pre-flight must too"
        else:
            assert preflight[:1] == [vllm]


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

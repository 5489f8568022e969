"""VLLMClient over real HTTP, for what a healthy vLLM cannot be made to do on cue: refuse
connections, hang, answer 502 from a proxy, run without runtime routes, reject a key, or lose a
race between a 400 "already loaded" and /v1/models. The contract with a real vLLM is in
tests/integration/test_vllm_contract.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from loraplane.vllm import (
    AdapterNameConflict,
    LoadOutcome,
    Reason,
    RuntimeLoRAUpdatingDisabled,
    TransientVLLMError,
    Unauthorized,
    UnloadOutcome,
    VLLMClient,
)
from loraplane.vllm.client import ModelList, wait_until_healthy
from tests.support.vllm_server import free_port

Handler = Callable[[web.Request], Any]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def serve(routes: dict[tuple[str, str], Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def card(id_: str, root: str, parent: str | None) -> dict[str, Any]:
    return {"id": id_, "object": "model", "root": root, "parent": parent, "max_model_len": 512}


async def test_connection_refused_is_transient(session: aiohttp.ClientSession) -> None:
    client = VLLMClient(f"http://127.0.0.1:{free_port()}", None, session, timeout=2)
    assert await client.health() is False
    with pytest.raises(TransientVLLMError) as info:
        await client.list_models()
    assert info.value.reason == Reason.TRANSIENT
    assert not info.value.permanent
    with pytest.raises(TransientVLLMError):
        await client.load_adapter("a", "/adapters/a/1")
    with pytest.raises(TransientVLLMError):
        await wait_until_healthy(client, within=0.3, interval=0.1)


async def test_timeout_and_bad_gateway_are_transient(session: aiohttp.ClientSession) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(text="late")

    async def bad_gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>502 Bad Gateway</html>")

    runner, url = await serve(
        {("GET", "/v1/models"): slow, ("POST", "/v1/load_lora_adapter"): bad_gateway}
    )
    try:
        client = VLLMClient(url, None, session, timeout=0.3)
        with pytest.raises(TransientVLLMError, match=r"timed out after 0\.3s"):
            await client.list_models()
        with pytest.raises(TransientVLLMError) as info:
            await client.load_adapter("a", "/adapters/a/1")
        assert info.value.status == 502
    finally:
        await runner.cleanup()


async def test_bearer_key_is_sent_and_a_wrong_one_is_unauthorized(
    session: aiohttp.ClientSession,
) -> None:
    seen: list[str | None] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer right":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return web.json_response({"object": "list", "data": [card("base", "/m", None)]})

    runner, url = await serve({("GET", "/v1/models"): models})
    try:
        ok = await VLLMClient(url, "right", session).list_models()
        assert [c.id for c in ok.base_models] == ["base"]
        with pytest.raises(Unauthorized):
            await VLLMClient(url, "wrong", session).list_models()
        with pytest.raises(Unauthorized):
            await VLLMClient(url, None, session).list_models()
        assert seen == ["Bearer right", "Bearer wrong", None]
    finally:
        await runner.cleanup()


async def test_missing_runtime_routes(session: aiohttp.ClientSession) -> None:
    # aiohttp's 404 differs from FastAPI's; answer exactly what vLLM's FastAPI app does.
    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"detail": "Not Found"}, status=404)

    runner, url = await serve(
        {
            ("POST", "/v1/load_lora_adapter"): not_found,
            ("POST", "/v1/unload_lora_adapter"): not_found,
        }
    )
    try:
        client = VLLMClient(url, None, session)
        for call in (client.load_adapter("a", "/adapters/a/1"), client.unload_adapter("a")):
            with pytest.raises(RuntimeLoRAUpdatingDisabled) as info:
                await call
            assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in info.value.message
            assert url in info.value.message
    finally:
        await runner.cleanup()


async def test_already_loaded_resolved_through_models(session: aiohttp.ClientSession) -> None:
    """400 "already loaded": same path -> success; other path -> conflict; vanished -> retry."""
    registered: dict[str, str] = {"same": "/adapters/same/1/", "other": "/adapters/other/1"}
    loads: list[dict[str, Any]] = []
    vanish_once = {"gone"}

    async def load(request: web.Request) -> web.Response:
        body = await request.json()
        loads.append(body)
        name = body["lora_name"]
        if name in vanish_once:
            vanish_once.discard(name)
        elif name not in registered and name != "gone":
            registered[name] = body["lora_path"]
            return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")
        elif name == "gone":
            registered[name] = body["lora_path"]
            return web.Response(text="Success")
        message = f"The lora adapter '{name}' has already been loaded."
        return web.json_response(
            {"error": {"message": message, "type": "InvalidUserInput", "code": 400}}, status=400
        )

    async def models(request: web.Request) -> web.Response:
        data = [card("base", "/models/base", None)]
        data += [card(n, p, "base") for n, p in registered.items()]
        return web.json_response({"object": "list", "data": data})

    runner, url = await serve(
        {("POST", "/v1/load_lora_adapter"): load, ("GET", "/v1/models"): models}
    )
    try:
        client = VLLMClient(url, None, session)
        assert await client.load_adapter("new", "/adapters/new/1") == LoadOutcome.LOADED
        assert await client.load_adapter("same", "/adapters/same/1") == LoadOutcome.ALREADY_LOADED
        with pytest.raises(AdapterNameConflict) as info:
            await client.load_adapter("other", "/adapters/other/2")
        assert info.value.registered_path == "/adapters/other/1"
        assert info.value.reason == Reason.ADAPTER_NAME_CONFLICT
        assert not info.value.permanent
        assert await client.load_adapter("gone", "/adapters/gone/1") == LoadOutcome.LOADED
        assert [b["lora_name"] for b in loads].count("gone") == 2
        # load_inplace is sent only when asked (servers before vLLM 0.11 do not know it).
        assert all("load_inplace" not in b for b in loads)
        await client.load_adapter("fresh", "/adapters/fresh/2", inplace=True)
        assert loads[-1] == {
            "lora_name": "fresh",
            "lora_path": "/adapters/fresh/2",
            "load_inplace": True,
        }
        listed = await client.list_models()
        assert isinstance(listed, ModelList)
        assert listed.adapter_paths["new"] == "/adapters/new/1"
        assert listed.adapter("missing") is None
    finally:
        await runner.cleanup()


async def test_unload_unknown_and_version(session: aiohttp.ClientSession) -> None:
    async def unload(request: web.Request) -> web.Response:
        name = (await request.json())["lora_name"]
        if name == "known":
            return web.Response(text="Success")
        body = {"error": {"message": f"The lora adapter '{name}' cannot be found.",
                          "type": "NotFoundError", "param": None, "code": 404}}  # fmt: skip
        return web.Response(status=404, text=json.dumps(body), content_type="application/json")

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.32.0"})

    runner, url = await serve(
        {("POST", "/v1/unload_lora_adapter"): unload, ("GET", "/version"): version}
    )
    try:
        client = VLLMClient(url, None, session)
        assert await client.unload_adapter("known") == UnloadOutcome.UNLOADED
        assert await client.unload_adapter("ghost") == UnloadOutcome.NOT_LOADED
        assert await client.version() == "0.32.0"
        assert await client.health() is False  # no /health route: 404
    finally:
        await runner.cleanup()

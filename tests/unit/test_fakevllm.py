"""hack/fakevllm, the FAKE vLLM of the fleet benchmarks, driven by the operator's real client.

What it answers must be what vLLM 0.32 answers (DESIGN.md §4, tests/integration/
test_vllm_contract.py for the real server): these tests check that the client reaches the same
outcome, reason and message on the fake as on vLLM.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fakevllm import parse_args
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
from loraplane.vllm.errors import PERMANENT_REASONS
from tests.support.fake_vllm import BASE, FAST, MODEL, Fake, adapter_dir

KEY = "s3cret"


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = Fake([], FAST).start()
    yield server
    server.stop()


@pytest.fixture
def keyed() -> Iterator[Fake]:
    server = Fake(["--api-key", KEY, "--ignored-switch", "--ignored-value", "3"], FAST).start()
    yield server
    server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def client(server: Fake, session: aiohttp.ClientSession, key: str | None = None) -> VLLMClient:
    return VLLMClient(server.url, key, session, timeout=10)


async def test_health_version_and_models(fake: Fake, session: aiohttp.ClientSession) -> None:
    c = client(fake, session)
    assert await c.health()
    assert await c.version() == "0.32.0"
    status, body, _ = fake.get("/health")
    assert (status, body) == (200, b"")
    models = await c.list_models()
    assert [m.id for m in models.base_models] == [BASE]
    assert models.base_models[0].root == MODEL
    assert models.adapters == ()


async def test_load_lists_with_path_and_vllm_fields(
    fake: Fake, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = client(fake, session)
    path = str(adapter_dir(tmp_path, "a8"))
    assert await c.load_adapter("ad-1", path) == LoadOutcome.LOADED
    models = await c.list_models()
    assert models.adapter_paths == {"ad-1": path}
    _, body, headers = fake.get("/v1/models")
    assert headers["content-type"] == "application/json"
    data = json.loads(body)
    assert data["object"] == "list"
    base, card = data["data"]
    fields = ["id", "object", "created", "owned_by", "root", "parent", "max_model_len"]
    assert list(card) == [*fields, "permission"]
    assert {
        k: card[k] for k in ("id", "object", "owned_by", "root", "parent", "max_model_len")
    } == {
        "id": "ad-1",
        "object": "model",
        "owned_by": "vllm",
        "root": path,
        "parent": BASE,
        "max_model_len": None,
    }
    assert base["parent"] is None and base["max_model_len"] == 2048
    (perm,) = card["permission"]
    assert perm["object"] == "model_permission" and perm["id"].startswith("modelperm-")


async def test_plain_text_success_bodies(fake: Fake, tmp_path: Path) -> None:
    path = str(adapter_dir(tmp_path, "a8"))
    status, body, headers = fake.call(
        "POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path}
    )
    assert (status, body) == (200, b"Success: LoRA adapter 'x' added successfully.")
    assert "content-type" not in headers  # vLLM's Response(content=str) has none
    status, body, _ = fake.call("POST", "/v1/unload_lora_adapter", {"lora_name": "x"})
    assert (status, body) == (200, b"Success: LoRA adapter 'x' removed successfully.")


async def test_second_load_is_already_loaded(
    fake: Fake, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = client(fake, session)
    path = str(adapter_dir(tmp_path, "a8"))
    other = str(adapter_dir(tmp_path, "other"))
    await c.load_adapter("ad-1", path)
    # The raw answer is vLLM 0.32's 400 InvalidUserInput ...
    status, body, _ = fake.call(
        "POST", "/v1/load_lora_adapter", {"lora_name": "ad-1", "lora_path": path}
    )
    assert status == 400
    assert json.loads(body) == {
        "error": {
            "message": "The lora adapter 'ad-1' has already been loaded. If you want to load the "
            "adapter in place, set 'load_inplace' to True.",
            "type": "InvalidUserInput",
            "param": None,
            "code": 400,
        }
    }
    # ... which the client resolves through /v1/models.
    assert await c.load_adapter("ad-1", path) == LoadOutcome.ALREADY_LOADED
    with pytest.raises(AdapterNameConflict):
        await c.load_adapter("ad-1", other)


async def test_load_inplace_replaces_the_registration(
    fake: Fake, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = client(fake, session)
    await c.load_adapter("ad-1", str(adapter_dir(tmp_path, "v1")))
    v2 = str(adapter_dir(tmp_path, "v2"))
    assert await c.load_adapter("ad-1", v2, inplace=True) == LoadOutcome.LOADED
    assert (await c.list_models()).adapter_paths == {"ad-1": v2}


async def test_missing_path_and_missing_config(
    fake: Fake, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = client(fake, session)
    with pytest.raises(AdapterRejected) as info:
        await c.load_adapter("nowhere", "/adapters/nowhere/0123")
    # The same as tests/integration/test_vllm_contract.py::test_missing_path on vLLM 0.32.
    assert info.value.reason == Reason.ADAPTER_NOT_FOUND
    assert info.value.status == 404
    assert info.value.error_type == "NotFoundError"
    assert info.value.detail == "Loading lora nowhere failed: No adapter found for <path>"
    assert info.value.message.startswith("vLLM found no adapter_config.json at the adapter's path")
    # vLLM's sanitiser rewrites /tmp paths but not /adapters ones: the raw text says so.
    assert info.value.raw_message == (
        "Loading lora nowhere failed: No adapter found for /adapters/nowhere/0123"
    )
    empty = tmp_path / "no-config"
    empty.mkdir()
    with pytest.raises(AdapterRejected) as info:
        await c.load_adapter("no-config", str(empty))
    assert info.value.reason == Reason.ADAPTER_NOT_FOUND
    assert info.value.raw_message == "Loading lora no-config failed: No adapter found for <path>"
    assert (await c.list_models()).adapters == ()


@pytest.mark.parametrize(
    ("extra", "rank"),
    [({}, 64), ({"rank_pattern": {"q_proj": 32}}, 32)],
    ids=["r64", "rank-pattern"],
)
async def test_rank_above_max_is_permanent(
    fake: Fake, session: aiohttp.ClientSession, tmp_path: Path, extra: dict[str, Any], rank: int
) -> None:
    c = client(fake, session)
    path = adapter_dir(tmp_path, "big", r=rank if not extra else 8, **extra)
    with pytest.raises(AdapterRejected) as info:
        await c.load_adapter("big", str(path))
    error = info.value
    assert (error.status, error.error_type) == (500, "InternalServerError")
    assert error.reason == Reason.RANK_EXCEEDS_MAX and error.permanent
    assert error.reason in PERMANENT_REASONS
    assert error.detail == f"LoRA rank {rank} is greater than max_lora_rank 16."
    assert error.message == (
        f"the adapter's LoRA rank {rank} is above the base model's maxLoraRank 16: raise the "
        f"BaseModelDeployment's spec.lora.maxLoraRank to {rank} or more, or use an adapter of "
        f"rank 16 or less (vLLM: LoRA rank {rank} is greater than max_lora_rank 16.)"
    )
    assert error.raw_message == (
        "Call to add_lora method failed: Worker failed with error "
        f"'LoRA rank {rank} is greater than max_lora_rank 16.', please check the stack trace "
        "above for the root cause"
    )
    assert await c.health()  # vLLM stays healthy after a refusal


async def test_other_refusals_read_as_on_vllm(
    fake: Fake, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = client(fake, session)
    cases = {
        "dora": ({"use_dora": True}, Reason.DORA_NOT_SUPPORTED),
        "bias": ({"bias": "all"}, Reason.BIAS_NOT_SUPPORTED),
        "mts": ({"modules_to_save": ["lm_head"]}, Reason.MODULES_TO_SAVE_NOT_SUPPORTED),
    }
    for name, (extra, reason) in cases.items():
        with pytest.raises(AdapterRejected) as info:
            await c.load_adapter(name, str(adapter_dir(tmp_path, name, **extra)))
        assert info.value.reason == reason, name
    with pytest.raises(AdapterRejected) as info:
        await c.load_adapter(BASE, str(adapter_dir(tmp_path, "base-name")))
    assert info.value.reason == Reason.NAME_CONFLICTS_WITH_BASE_MODEL


async def test_unload(fake: Fake, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    c = client(fake, session)
    await c.load_adapter("ad-1", str(adapter_dir(tmp_path, "a8")))
    assert await c.unload_adapter("ad-1") == UnloadOutcome.UNLOADED
    assert (await c.list_models()).adapters == ()
    status, body, _ = fake.call("POST", "/v1/unload_lora_adapter", {"lora_name": "ad-1"})
    assert status == 404
    assert json.loads(body)["error"] == {
        "message": "The lora adapter 'ad-1' cannot be found.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    assert await c.unload_adapter("ad-1") == UnloadOutcome.NOT_LOADED


async def test_api_key_guards_v1_only(
    keyed: Fake, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    assert await client(keyed, session).health()
    assert await client(keyed, session).version() == "0.32.0"
    for key in (None, "wrong"):
        with pytest.raises(Unauthorized):
            await client(keyed, session, key).list_models()
        with pytest.raises(Unauthorized):
            await client(keyed, session, key).load_adapter("a", str(tmp_path))
        with pytest.raises(Unauthorized):
            await client(keyed, session, key).unload_adapter("a")
    status, body, _ = keyed.get("/v1/models")
    assert (status, json.loads(body)) == (401, {"error": "Unauthorized"})
    assert keyed.get("/metrics")[0] == 200
    good = client(keyed, session, KEY)
    assert await good.load_adapter("a", str(adapter_dir(tmp_path, "a8"))) == LoadOutcome.LOADED


async def test_vllm_api_key_env(session: aiohttp.ClientSession) -> None:
    server = Fake([], FAST | {"VLLM_API_KEY": KEY}).start()
    try:
        with pytest.raises(Unauthorized):
            await client(server, session).list_models()
        assert (await client(server, session, KEY).list_models()).adapters == ()
    finally:
        server.stop()


async def test_without_runtime_updating_the_routes_are_missing(
    session: aiohttp.ClientSession,
) -> None:
    server = Fake([], {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "false"}).start()
    try:
        status, body, _ = server.call("POST", "/v1/load_lora_adapter", {"lora_name": "a"})
        assert (status, json.loads(body)) == (404, {"detail": "Not Found"})
        with pytest.raises(RuntimeLoRAUpdatingDisabled):
            await client(server, session).load_adapter("a", "/x")
        with pytest.raises(RuntimeLoRAUpdatingDisabled):
            await client(server, session).unload_adapter("a")
    finally:
        server.stop()


async def test_restart_loses_every_adapter(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    server = Fake([], FAST).start()
    try:
        await client(server, session).load_adapter("ad-1", str(adapter_dir(tmp_path, "a8")))
        assert len((await client(server, session).list_models()).adapters) == 1
        server.stop()
        server.start()  # the same port
        assert (await client(server, session).list_models()).adapters == ()
    finally:
        server.stop()


async def test_completions(fake: Fake, tmp_path: Path) -> None:
    path = str(adapter_dir(tmp_path, "a8"))
    fake.call("POST", "/v1/load_lora_adapter", {"lora_name": "ad-1", "lora_path": path})
    for model in (BASE, "ad-1"):
        status, body, _ = fake.call("POST", "/v1/completions", {"model": model, "prompt": "hi"})
        answer = json.loads(body)
        assert status == 200 and answer["model"] == model
        assert answer["object"] == "text_completion"
        assert "fakevllm" in answer["choices"][0]["text"]
    status, body, _ = fake.call("POST", "/v1/completions", {"model": "nope", "prompt": "hi"})
    assert status == 404
    assert json.loads(body)["error"] == {
        "message": f"The model `nope` does not exist. Valid aliases: {BASE}.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


async def test_metrics_has_the_lora_gauge(fake: Fake) -> None:
    status, body, _ = fake.get("/metrics")
    assert status == 200
    (line,) = [ln for ln in body.decode().splitlines() if ln.startswith("vllm:lora_requests_info")]
    assert 'max_lora="2"' in line and 'running_lora_adapters=""' in line


async def test_stats_count_requests_per_route(
    fake: Fake, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    c = client(fake, session)
    for _ in range(3):
        await c.list_models()
    await c.load_adapter("ad-1", str(adapter_dir(tmp_path, "a8")))
    await c.load_adapter("ad-1", str(tmp_path / "a8"))  # 400, then /v1/models
    await c.unload_adapter("ad-1")
    status, body, _ = fake.get("/fakevllm/stats")
    stats = json.loads(body)
    assert status == 200 and stats["adapters"] == 0
    requests = stats["requests"]
    assert requests["GET /v1/models"] == 4
    assert requests["POST /v1/load_lora_adapter"] == 2
    assert requests["POST /v1/unload_lora_adapter"] == 1
    assert requests["GET /health"] >= 1  # the fixture's readiness poll


async def test_a_load_does_not_hold_up_other_requests(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = Fake([], FAST | {"FAKEVLLM_LOAD_SECONDS": "0.5,0.5"}).start()
    try:
        c = client(server, session)
        paths = [str(adapter_dir(tmp_path, f"a{i}")) for i in range(2)]
        start = time.monotonic()
        loads = [asyncio.create_task(c.load_adapter(f"ad-{i}", p)) for i, p in enumerate(paths)]
        await asyncio.sleep(0.1)
        await c.list_models()
        listed = time.monotonic() - start
        await asyncio.gather(*loads)
        loaded = time.monotonic() - start
        assert listed < 0.45  # not behind a load
        assert loaded >= 1.0  # the two loads ran one after the other, as in vLLM's engine
    finally:
        server.stop()


def test_unknown_flags_are_ignored() -> None:
    config = parse_args(
        [
            "serve",
            "org/model",
            "--dtype",
            "bfloat16",
            "--enforce-eager",
            "--max_lora_rank",
            "64",
            "--max-model-len=4k",
            "--served-model-name",
            "a",
            "b",
            "--api-key",
            "k",
            "--max-cpu-loras",
            "8",
        ],
        environ={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
    )
    assert config.model == "org/model"
    assert config.served_names == ["a", "b"]
    assert config.max_lora_rank == 64
    assert config.max_model_len == 4000
    assert config.max_cpu_loras == 8
    assert config.api_keys == ["k"]
    assert config.runtime_updating
    assert not config.enable_lora


def _series(fake: Fake, name: str) -> dict[str, float]:
    """One metric's series of /metrics: label text -> value."""
    status, body, _ = fake.get("/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            out[labels] = float(value)
    return out


def test_completions_name_the_server_that_answered(fake: Fake) -> None:
    status, _, headers = fake.call("POST", "/v1/completions", {"model": BASE, "prompt": "hi"})
    assert status == 200
    assert headers["x-fakevllm-address"] == f"127.0.0.1:{fake.port}"
    assert headers["x-fakevllm-pod"]  # the host name: the pod's name on the process node
    _, _, headers = fake.get("/v1/models")
    assert "x-fakevllm-pod" not in headers


def test_metrics_are_scriptable_per_server(fake: Fake) -> None:
    script = {
        "num_requests_waiting": 3,
        "num_requests_running": 1,
        "kv_cache_usage_perc": 0.25,
        "lora_residency_info": {"running": ["a", "b"], "waiting": ["c"]},
        "lora_requests_info": {"running": ["a"], "waiting": [], "max_lora": 4},
    }
    before = time.time()
    status, body, _ = fake.call("POST", "/fakevllm/metrics", script)
    assert status == 200, body
    labels = '{engine="0",model_name="tiny"}'
    assert _series(fake, "vllm:num_requests_waiting") == {labels[1:-1]: 3.0}
    assert _series(fake, "vllm:num_requests_running") == {labels[1:-1]: 1.0}
    assert _series(fake, "vllm:kv_cache_usage_perc") == {labels[1:-1]: 0.25}
    # max_lora defaults to --max-loras (2 in the fixture); the value is the scrape's time.
    residency = _series(fake, "loraplane:lora_residency_info")
    (current,) = residency
    assert current == 'max_lora="2",waiting_lora_adapters="c",running_lora_adapters="a,b"'
    assert residency[current] >= before
    # vLLM's gauge keeps the label set it had before (no adapters in flight) at an older time: the
    # reader takes the largest value.
    lora = _series(fake, "vllm:lora_requests_info")
    newest = max(lora, key=lambda k: lora[k])
    assert newest == 'max_lora="4",waiting_lora_adapters="",running_lora_adapters="a"'
    assert 'max_lora="2",waiting_lora_adapters="",running_lora_adapters=""' in lora
    # Keys not given keep their values; a new label set pushes the current one into history.
    fake.call("POST", "/fakevllm/metrics", {"lora_residency_info": {"running": ["c"]}})
    residency = _series(fake, "loraplane:lora_residency_info")
    assert len(residency) == 2
    newest = max(residency, key=lambda k: residency[k])
    assert newest == 'max_lora="2",waiting_lora_adapters="",running_lora_adapters="c"'
    assert _series(fake, "vllm:num_requests_waiting") == {labels[1:-1]: 3.0}
    # null removes a key's series, history included.
    status, body, _ = fake.call(
        "POST", "/fakevllm/metrics", {"lora_residency_info": None, "num_requests_waiting": None}
    )
    assert status == 200 and "lora_residency_info" not in json.loads(body)
    assert _series(fake, "loraplane:lora_residency_info") == {}
    assert _series(fake, "vllm:num_requests_waiting") == {}


def test_metrics_script_refuses_what_it_cannot_render(fake: Fake) -> None:
    for script in (
        {"num_requests_waitin": 1},
        {"num_requests_waiting": "3"},
        {"num_requests_waiting": True},
        {"lora_residency_info": {"running": "a"}},
        {"lora_residency_info": {"running": ["a"], "resident": ["b"]}},
        {"lora_residency_info": {"max_lora": "2"}},
        ["num_requests_waiting"],
    ):
        status, body, _ = fake.call("POST", "/fakevllm/metrics", script)
        assert status == 400, (script, body)
    # Nothing changed: the default line alone.
    status, body, _ = fake.get("/metrics")
    lines = [ln for ln in body.decode().splitlines() if not ln.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith("vllm:lora_requests_info{")

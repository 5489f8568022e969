"""What /metrics shows: each event on the right series, label sets, help texts, series removed.

Values are read from prometheus_client's default registry, as the operator serves it. Each test
uses its own namespace, so counters from other tests do not leak into its series.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kopf._cogs.clients import watching
from kopf._cogs.configs.configuration import OperatorSettings
from kopf._cogs.structs.references import Resource
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loraplane import fleet_gauges, metrics, metrics_http
from loraplane.agent import protocol
from loraplane.agent.apply import apply
from loraplane.agent.client import AgentClient, AgentError, AgentUnauthorized
from loraplane.agent.store import Rejected, VersionUnavailable
from loraplane.api import AdapterSummary, LoRAAdapterStatus
from loraplane.config import Settings
from loraplane.fleet import Fleet
from loraplane.status import adapter as adapter_status
from loraplane.sync import LoadNotDone, PodContext, Unload, register, unload
from loraplane.vllm.client import VLLMClient
from loraplane.vllm.errors import Reason, TransientVLLMError, VLLMError, classify

DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
BEGIN, END = "<!-- BEGIN GENERATED: python -m loraplane.metrics --doc -->", "<!-- END GENERATED -->"


def base_obj(ns: str, cap: int | None = None) -> dict[str, Any]:
    lora: dict[str, Any] = {"maxLoraRank": 16}
    if cap is not None:
        lora["maxAdaptersPerReplica"] = cap
    return {
        "metadata": {"namespace": ns, "name": "base", "uid": "u", "generation": 1},
        "spec": {"model": {"source": {"path": "/models/tiny"}}, "lora": lora, "replicas": 2},
    }


def lora_obj(ns: str, name: str, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> dict:
    return {
        "metadata": {"namespace": ns, "name": name, "generation": 1, "creationTimestamp": created},
        "spec": {"baseModel": "base", "source": {"path": f"/src/{name}"}, **spec},
    }


def pod_obj(ns: str, name: str, container: str = "c1", created: str = "2026-01-01T00:00:00Z"):
    return {
        "metadata": {
            "namespace": ns,
            "name": name,
            "creationTimestamp": created,
            "labels": {"loraplane.dev/base-model": "base"},
        },
        "status": {
            "podIP": "10.0.0.1",
            "containerStatuses": [
                {"name": "vllm", "ready": True, "state": {"running": {}}, "containerID": container}
            ],
        },
    }


def fleet_of(ns: str, *adapters: str, pods: int = 2, cap: int | None = None) -> Fleet:
    fleet = Fleet()
    fleet.observe_base(base_obj(ns, cap))
    for i in range(pods):
        fleet.observe_pod(pod_obj(ns, f"p{i}"))
    for i, name in enumerate(adapters):
        fleet.observe_adapter(lora_obj(ns, name, created=f"2026-01-0{i + 1}T00:00:00Z"))
    return fleet


def digest(c: str) -> str:
    return c * 64


def fetched(name: str, c: str = "a", rank: int = 8) -> protocol.Fetched:
    summary = AdapterSummary(rank=rank, size_bytes=1234, digest=f"sha256:{digest(c)}")
    return protocol.Fetched(path=f"/adapters/{name}/{digest(c)}", summary=summary)


@dataclass
class NoSecrets:
    forgotten: list[tuple[str, str, str]] = field(default_factory=list)

    async def value(self, namespace: str, name: str, key: str) -> str | None:
        return None

    def forget(self, namespace: str, name: str, key: str) -> None:
        self.forgotten.append((namespace, name, key))


@dataclass
class FakeRuntime:
    """What register and unload take from the runtime; kicks are not followed."""

    fleet: Fleet
    settings: Settings = field(default_factory=Settings)

    preflights: dict[Any, Any] = field(default_factory=dict)
    secrets: NoSecrets = field(default_factory=NoSecrets)

    def kick(self, pods: Iterable[Any]) -> None:
        pass


class FakeStore:
    """The agent's store answering every fetch the same: the files, or its refusal."""

    def __init__(self, answer: protocol.Fetched | Rejected | VersionUnavailable) -> None:
        self.answer = answer

    async def fetch(self, request: protocol.FetchRequest) -> protocol.Fetched:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeVLLM:
    def __init__(self, error: VLLMError | None = None) -> None:
        self.error = error

    async def load_adapter(self, name: str, path: str, *, inplace: bool = False) -> None:
        if self.error is not None:
            raise self.error

    async def unload_adapter(self, name: str) -> None:
        pass


class FakeAgent:
    """The agent's own apply over a fake store and vLLM; or no agent at all (an AgentError)."""

    def __init__(self, answer: protocol.Fetched | Exception, vllm: FakeVLLM | None = None) -> None:
        self.answer = answer
        self.vllm = vllm or FakeVLLM()
        self.requests: list[protocol.ApplyRequest] = []

    async def apply(
        self, request: protocol.ApplyRequest, line_timeout: float
    ) -> AsyncIterator[protocol.Applied]:
        self.requests.append(request)
        if isinstance(self.answer, AgentError):
            raise self.answer
        async for applied in apply(FakeStore(self.answer), self.vllm, request):  # type: ignore[arg-type]
            yield applied


def context(
    fleet: Fleet,
    pod: str,
    registered: dict[str, str | None] | None = None,
    agent: Any = None,
    vllm: Any = None,
) -> PodContext:
    view = fleet.pods[(next(iter(fleet.bases))[0], pod)]
    base = fleet.bases[(view.namespace, view.base_model)]
    return PodContext(view, base, vllm or FakeVLLM(), agent, registered or {})


def run_register(rt: Any, pc: PodContext, name: str) -> bool:
    """One adapter through `register`, as a pod's run takes it: True when a registration
    changed; the first trouble worth a retry raised, as the run raises it to its worker."""
    asyncio.run(register(rt, pc, [rt.fleet.adapters[(pc.pod.namespace, name)]]))
    if pc.errors:
        raise pc.errors[0]
    return bool(pc.changed)


def load_on(
    fleet: Fleet,
    pod: str,
    name: str,
    answer: protocol.Fetched | Exception | None = None,
    registered: dict[str, str | None] | None = None,
    vllm: Any = None,
) -> bool:
    agent = FakeAgent(answer if answer is not None else fetched(name), vllm)
    pc = context(fleet, pod, registered, agent, vllm)
    return run_register(FakeRuntime(fleet), pc, name)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def adapter(ns: str, name: str, **more: str) -> dict[str, str]:
    return {"namespace": ns, "base_model": "base", "adapter": name, **more}


def exposition() -> dict[str, Any]:
    """The families as the operator's endpoint renders them, family by family."""
    text = b"".join(metrics_http.chunks()).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def series_with(**labels: str) -> list[str]:
    return [
        f"{s.name}{s.labels}"
        for family in exposition().values()
        for s in family.samples
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]


# -- loads -----------------------------------------------------------------------------------


def test_a_first_load_counts_a_success_and_both_durations_and_no_reregistration() -> None:
    ns = "load-ok"
    fleet = fleet_of(ns, "a")
    assert load_on(fleet, "p0", "a") and load_on(fleet, "p1", "a")
    a = adapter(ns, "a")
    assert value("loraplane_adapter_loads_total", **a, result="success") == 2
    assert value("loraplane_adapter_fetch_duration_seconds_count", **a) == 2
    assert value("loraplane_adapter_vllm_load_duration_seconds_count", **a) == 2
    assert value("loraplane_adapter_vllm_load_duration_seconds_bucket", **a, le="120.0") == 2
    assert series_with(namespace=ns, adapter="a", cause="new_pod") == []
    assert not [s for s in series_with(namespace=ns) if "reregistrations" in s]


def test_a_rejection_is_one_validation_failure_however_many_pods_try() -> None:
    ns = "load-rejected"
    fleet = fleet_of(ns, "a")
    rejection = Rejected("DoRANotSupported", "x")
    for pod in ("p0", "p1"):
        assert not load_on(fleet, pod, "a", rejection)
    a = adapter(ns, "a")
    assert value("loraplane_adapter_loads_total", **a, result="rejected") == 2
    assert value("loraplane_adapter_validation_failures_total", **a, reason="DoRANotSupported") == 1
    assert value("loraplane_adapter_fetch_duration_seconds_count", **a) == 0
    # A new source is a new judgement: its rejection counts again.
    fleet.observe_adapter(lora_obj(ns, "a", source={"path": "/src/other"}))
    load_on(fleet, "p0", "a", rejection)
    assert value("loraplane_adapter_validation_failures_total", **a, reason="DoRANotSupported") == 2


def test_vllms_refusal_counts_its_classified_reason_and_a_retryable_error_counts_error() -> None:
    ns = "load-vllm"
    fleet = fleet_of(ns, "a", "b")
    refused = classify(
        500, b'{"error":{"message":"LoRA rank 32 is greater than max_lora_rank 16."}}'
    )
    assert not load_on(fleet, "p0", "a", vllm=FakeVLLM(refused))
    reason = {"reason": "RankExceedsMax"}
    assert value("loraplane_adapter_validation_failures_total", **adapter(ns, "a"), **reason) == 1
    with pytest.raises(LoadNotDone):
        load_on(fleet, "p0", "b", vllm=FakeVLLM(TransientVLLMError(Reason.TRANSIENT, "down")))
    assert value("loraplane_adapter_loads_total", **adapter(ns, "b"), result="error") == 1
    assert value("loraplane_adapter_vllm_load_duration_seconds_count", **adapter(ns, "b")) == 0
    with pytest.raises(AgentError):
        load_on(fleet, "p1", "b", AgentError("agent down"))
    assert value("loraplane_adapter_loads_total", **adapter(ns, "b"), result="error") == 2


def test_a_pods_adapters_go_to_its_agent_a_batch_at_a_time_fetched_then_loaded() -> None:
    ns = "load-batches"
    fleet = fleet_of(ns, "a", "b", "c", pods=1)
    agent = FakeAgent(fetched("a"))
    pc = context(fleet, "p0", agent=agent)
    rt = FakeRuntime(fleet, settings=Settings(agent_apply_batch=2))
    asyncio.run(register(rt, pc, [fleet.adapters[(ns, n)] for n in ("a", "b", "c")]))  # type: ignore[arg-type]
    asked = [[(i.name, i.load) for i in r.adapters] for r in agent.requests]
    # Each batch fetched (nothing pinned yet), then loaded once pinned, before the next batch.
    assert asked == [
        [("a", False), ("b", False)],
        [("a", True), ("b", True)],
        [("c", False)],
        [("c", True)],
    ]
    assert set(pc.changed) == {"a", "b", "c"} and not pc.errors


def test_a_refused_agent_token_is_read_again_at_the_next_run() -> None:
    ns = "load-token"
    fleet = fleet_of(ns, "a", pods=1)
    rt = FakeRuntime(fleet)
    with pytest.raises(AgentUnauthorized):
        run_register(rt, context(fleet, "p0", agent=FakeAgent(AgentUnauthorized("refused"))), "a")
    assert rt.secrets.forgotten == [(ns, "base-agent-token", "token")]
    state = fleet.state((ns, "p0"), "a")
    assert state is not None and state.state == "Loading" and "refused" in (state.last_error or "")


# -- unloads and evictions -------------------------------------------------------------------


def test_a_new_version_swapped_in_place_unloads_the_old_one_as_new_version() -> None:
    ns = "unload-new-version"
    fleet = Fleet()
    fleet.observe_base(base_obj(ns))
    fleet.observe_pod(pod_obj(ns, "p0"))
    fleet.observe_adapter(lora_obj(ns, "a", updatePolicy="Follow"))
    assert load_on(fleet, "p0", "a", fetched("a", "a"))
    old = fetched("a", "a").path
    assert load_on(fleet, "p0", "a", fetched("a", "b"), registered={"a": old})
    a = adapter(ns, "a")
    assert value("loraplane_adapter_unloads_total", **a, reason="new_version") == 1
    assert value("loraplane_adapter_loads_total", **a, result="success") == 2
    # Following with nothing new is no load: no fetch observed, nothing counted.
    assert not load_on(
        fleet, "p0", "a", fetched("a", "b"), registered={"a": fetched("a", "b").path}
    )
    assert value("loraplane_adapter_fetch_duration_seconds_count", **a) == 2
    assert not [s for s in series_with(namespace=ns) if "reregistrations" in s]


def test_a_capacity_unload_is_an_unload_and_a_server_eviction_and_an_orphan_has_no_name() -> None:
    ns = "unload-capacity"
    fleet = fleet_of(ns, "a", "b", cap=1)
    pc = context(fleet, "p0")
    rt = FakeRuntime(fleet)
    asyncio.run(unload(rt, pc, Unload("b", "b", "capacity")))  # type: ignore[arg-type]
    asyncio.run(unload(rt, pc, Unload("gone", "gone", "orphan")))  # type: ignore[arg-type]
    b = adapter(ns, "b")
    assert value("loraplane_adapter_unloads_total", **b, reason="capacity") == 1
    assert value("loraplane_adapter_evictions_total", **b, tier="server", reason="capacity") == 1
    assert value("loraplane_adapter_unloads_total", **adapter(ns, ""), reason="orphan") == 1
    assert series_with(namespace=ns, adapter="gone") == []


# -- re-registrations ------------------------------------------------------------------------


def test_a_restarted_vllm_container_reregisters_as_container_restart() -> None:
    ns = "rereg-restart"
    fleet = fleet_of(ns, "a", pods=1)
    load_on(fleet, "p0", "a")
    fleet.lost_registrations((ns, "p0"))  # vLLM not ready for a moment
    fleet.observe_pod(pod_obj(ns, "p0", container="c2"))
    assert load_on(fleet, "p0", "a")
    a = adapter(ns, "a")
    assert value("loraplane_adapter_reregistrations_total", **a, cause="container_restart") == 1
    # Also when the sync never saw the server down: the container ID tells.
    fleet.observe_pod(pod_obj(ns, "p0", container="c3"))
    assert load_on(fleet, "p0", "a")
    assert value("loraplane_adapter_reregistrations_total", **a, cause="container_restart") == 2
    assert value("loraplane_adapter_reregistrations_total", **a, cause="drift") == 0


def test_a_registration_missing_from_the_same_container_reregisters_as_drift() -> None:
    ns = "rereg-drift"
    fleet = fleet_of(ns, "a", pods=1)
    load_on(fleet, "p0", "a")
    with pytest.raises(LoadNotDone):  # a failed attempt in between keeps what was lost
        load_on(fleet, "p0", "a", vllm=FakeVLLM(TransientVLLMError(Reason.TRANSIENT, "busy")))
    assert load_on(fleet, "p0", "a")
    assert value("loraplane_adapter_reregistrations_total", **adapter(ns, "a"), cause="drift") == 1


def test_a_return_after_a_capacity_eviction_is_no_reregistration() -> None:
    ns = "rereg-evicted"
    fleet = fleet_of(ns, "a", pods=1)
    load_on(fleet, "p0", "a")
    asyncio.run(unload(FakeRuntime(fleet), context(fleet, "p0"), Unload("a", "a", "capacity")))  # type: ignore[arg-type]
    assert load_on(fleet, "p0", "a")
    assert not [s for s in series_with(namespace=ns) if "reregistrations" in s]


def test_a_replacement_pod_registering_after_its_predecessor_went_is_new_pod() -> None:
    ns = "rereg-new-pod-after"
    fleet = fleet_of(ns, "a")
    load_on(fleet, "p0", "a")
    load_on(fleet, "p1", "a")
    fleet.forget_pod((ns, "p1"))
    a = adapter(ns, "a")
    assert value("loraplane_adapter_unloads_total", **a, reason="pod_gone") == 1
    fleet.observe_pod(pod_obj(ns, "p2", created="2026-06-01T00:00:00Z"))
    assert load_on(fleet, "p2", "a")
    assert value("loraplane_adapter_reregistrations_total", **a, cause="new_pod") == 1
    fleet.observe_pod(pod_obj(ns, "p3", created="2026-06-01T00:00:00Z"))  # a scale-up
    assert load_on(fleet, "p3", "a")
    assert value("loraplane_adapter_reregistrations_total", **a, cause="new_pod") == 1


def test_a_surge_pod_registering_before_its_predecessor_goes_is_new_pod_when_it_goes() -> None:
    ns = "rereg-new-pod-surge"
    fleet = fleet_of(ns, "a")
    load_on(fleet, "p0", "a")
    load_on(fleet, "p1", "a")  # an initial pod: never counted, whichever pod goes
    fleet.observe_pod(pod_obj(ns, "p2", created="2099-01-01T00:00:00Z"))
    load_on(fleet, "p2", "a")
    a = adapter(ns, "a")
    assert value("loraplane_adapter_reregistrations_total", **a, cause="new_pod") == 0
    fleet.forget_pod((ns, "p0"))
    assert value("loraplane_adapter_reregistrations_total", **a, cause="new_pod") == 1
    fleet.forget_pod((ns, "p1"))  # its replacement has not come yet
    assert value("loraplane_adapter_reregistrations_total", **a, cause="new_pod") == 1
    assert value("loraplane_adapter_unloads_total", **a, reason="pod_gone") == 2


# -- gauges ----------------------------------------------------------------------------------


def test_gauges_show_what_the_status_shows_and_the_version_in_info() -> None:
    ns = "gauges"
    fleet = fleet_of(ns, "a", "b")
    fleet.observe_adapter(
        lora_obj(ns, "hf", source={"huggingface": {"repo": "o/r", "revision": "v2"}})
    )
    fleet_gauges.watch_fleet(fleet)
    load_on(fleet, "p0", "a")
    for pod in ("p0", "p1"):
        fleet.record_registrations((ns, pod), {})  # both pods looked at
    a = adapter(ns, "a")
    assert value("loraplane_adapter_desired_replicas", **a) == 2
    assert value("loraplane_adapter_registered_replicas", **a) == 1
    assert value("loraplane_adapter_ready", **a) == 0
    assert value("loraplane_adapter_registered", **a, pod="p0") == 1
    assert value("loraplane_adapter_registered", **a, pod="p1") == 0
    info = {"served_name": "a", "rank": "8", "digest": f"sha256:{digest('a')}", "revision": ""}
    assert value("loraplane_adapter_info", **a, **info) == 1
    assert value("loraplane_adapter_size_bytes", **a) == 1234
    load_on(fleet, "p1", "a")
    assert value("loraplane_adapter_ready", **a) == 1
    hf = {"served_name": "hf", "rank": "", "digest": "", "revision": "v2"}
    assert value("loraplane_adapter_info", **adapter(ns, "hf"), **hf) == 1
    assert value("loraplane_adapter_size_bytes", **adapter(ns, "b")) == 0  # no version yet
    # The numbers are the status module's own.
    status = adapter_status.compute(fleet, fleet.adapters[(ns, "a")], LoRAAdapterStatus(), 32)
    assert status.replicas is not None and status.replicas.registered == 2


def test_info_is_one_series_per_adapter_whose_digest_follows_the_pinned_version() -> None:
    ns = "gauges-rollout"
    fleet = Fleet()
    fleet.observe_base(base_obj(ns))
    fleet.observe_pod(pod_obj(ns, "p0"))
    fleet.observe_adapter(lora_obj(ns, "a", updatePolicy="Follow"))
    fleet_gauges.watch_fleet(fleet)
    load_on(fleet, "p0", "a", fetched("a", "a"))
    load_on(fleet, "p0", "a", fetched("a", "b", rank=16), registered={"a": fetched("a", "a").path})
    infos = [
        (s.labels["digest"], s.labels["rank"])
        for s in exposition()["loraplane_adapter_info"].samples
        if s.labels["namespace"] == ns
    ]
    assert infos == [(f"sha256:{digest('b')}", "16")]


def test_waiting_for_the_first_look_after_a_restart_publishes_no_replica_counts() -> None:
    ns = "gauges-first-look"
    fleet = fleet_of(ns, "a")
    fleet_gauges.watch_fleet(fleet)
    assert REGISTRY.get_sample_value("loraplane_adapter_desired_replicas", adapter(ns, "a")) is None
    fleet.record_registrations((ns, "p0"), {})
    fleet.record_registrations((ns, "p1"), {})
    assert value("loraplane_adapter_desired_replicas", **adapter(ns, "a")) == 2


# -- series go with their adapter, pod and base model ----------------------------------------


def test_no_series_of_a_deleted_adapter_or_a_gone_pod_remains() -> None:
    ns = "removal"
    fleet = fleet_of(ns, "a", "b")
    fleet_gauges.watch_fleet(fleet)
    rejection = Rejected("CorruptWeights", "x")
    load_on(fleet, "p0", "a")
    load_on(fleet, "p1", "a")
    load_on(fleet, "p0", "b", rejection)
    fleet.lost_registrations((ns, "p0"))
    fleet.observe_pod(pod_obj(ns, "p0", container="c2"))
    load_on(fleet, "p0", "a")
    rt, pc = FakeRuntime(fleet), context(fleet, "p1")
    asyncio.run(unload(rt, pc, Unload("a", "a", "capacity")))  # type: ignore[arg-type]
    for pod in ("p0", "p1"):
        fleet.record_registrations((ns, pod), {})
    families = {s.split("{")[0] for s in series_with(namespace=ns, adapter="a")}
    assert {
        "loraplane_adapter_loads_total",
        "loraplane_adapter_fetch_duration_seconds_count",
        "loraplane_adapter_vllm_load_duration_seconds_bucket",
        "loraplane_adapter_reregistrations_total",
        "loraplane_adapter_unloads_total",
        "loraplane_adapter_evictions_total",
        "loraplane_adapter_registered",
        "loraplane_adapter_info",
        "loraplane_adapter_ready",
    } <= families
    assert series_with(namespace=ns, adapter="b", reason="CorruptWeights")
    fleet.forget_pod((ns, "p1"))
    assert series_with(namespace=ns, pod="p1") == []
    fleet.forget_adapter((ns, "a"))
    assert series_with(namespace=ns, adapter="a") == []
    assert series_with(namespace=ns, adapter="b")  # the other adapter keeps its series
    fleet.forget_adapter((ns, "b"))
    assert series_with(namespace=ns, adapter="b") == []


def test_a_gone_base_model_takes_its_pod_sync_and_orphan_series() -> None:
    ns = "removal-base"
    fleet = fleet_of(ns)
    rt, pc = FakeRuntime(fleet), context(fleet, "p0")
    asyncio.run(unload(rt, pc, Unload("x", "x", "orphan")))  # type: ignore[arg-type]
    with metrics.pod_sync(ns, "base"):
        pass
    assert series_with(namespace=ns, base_model="base")
    fleet.forget_base((ns, "base"))
    assert series_with(namespace=ns) == []


# -- the operator's health -------------------------------------------------------------------


def test_a_pod_sync_is_timed_counted_by_result_and_in_flight_while_it_runs() -> None:
    ns = "pod-sync"
    labels = {"namespace": ns, "base_model": "base"}
    with metrics.pod_sync(ns, "base"):
        assert value("loraplane_work_in_flight", kind="pod_sync") >= 1
    with pytest.raises(RuntimeError), metrics.pod_sync(ns, "base"):
        raise RuntimeError("boom")

    async def sync_then_cancel() -> None:
        async def long_sync() -> None:
            with metrics.pod_sync(ns, "base"):
                await asyncio.sleep(10)

        task = asyncio.create_task(long_sync())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(sync_then_cancel())
    assert value("loraplane_pod_syncs_total", **labels, result="ok") == 1
    assert value("loraplane_pod_syncs_total", **labels, result="error") == 1
    assert value("loraplane_pod_sync_duration_seconds_count", **labels) == 3
    assert value("loraplane_work_in_flight", kind="pod_sync") == 0


class FakeResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    async def read(self) -> bytes:
        return self.body

    async def json(self, content_type: str | None = None) -> Any:
        return json.loads(self.body)


class FakeSession:
    """Answers each request with the next of `answers` (a response, or an exception to raise)."""

    def __init__(self, *answers: FakeResponse | Exception) -> None:
        self.answers = list(answers)

    @asynccontextmanager
    async def request(self, method: str, url: str, **_: Any) -> AsyncIterator[FakeResponse]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        yield answer


def api_errors(family: str, endpoint: str, class_: str) -> float:
    return value(family, endpoint=endpoint, **{"class": class_})


VLLM_REJECTED = json.dumps(
    {
        "error": {
            "message": "Call to add_lora method failed: vLLM does not yet support DoRA.",
            "type": "InternalServerError",
        }
    }
).encode()
VLLM_NOT_LOADED = json.dumps(
    {"error": {"message": "The lora adapter x cannot be found.", "type": "NotFoundError"}}
).encode()


def test_vllm_errors_are_counted_by_endpoint_and_class_and_benign_answers_are_not() -> None:
    session = FakeSession(
        TimeoutError(),
        aiohttp.ClientConnectionError("refused"),
        FakeResponse(500, VLLM_REJECTED),
        FakeResponse(404, VLLM_NOT_LOADED),
        FakeResponse(500, b'{"error":{"message":"odd","type":"Boom"}}'),
    )
    client = VLLMClient("http://x", None, session)  # type: ignore[arg-type]
    keys = [
        ("models", "timeout"),
        ("health", "unreachable"),
        ("load", "rejected"),
        ("unload", "client_error"),
        ("models", "server_error"),
    ]
    family = "loraplane_vllm_api_errors_total"
    before = {k: api_errors(family, *k) for k in keys}

    async def calls() -> None:
        with pytest.raises(TransientVLLMError):
            await client.list_models()
        assert not await client.health()
        with pytest.raises(VLLMError):
            await client.load_adapter("x", "/adapters/x/1")
        await client.unload_adapter("x")  # an unknown name is unloaded: an answer, not an error
        with pytest.raises(VLLMError):
            await client.list_models()

    asyncio.run(calls())
    assert {k: api_errors(family, *k) - before[k] for k in keys} == {
        ("models", "timeout"): 1,
        ("health", "unreachable"): 1,
        ("load", "rejected"): 1,
        ("unload", "client_error"): 0,
        ("models", "server_error"): 1,
    }


def test_agent_errors_are_counted_by_endpoint_and_class() -> None:
    item = protocol.ApplyItem(
        name="a",
        source={"path": "/src/a"},  # type: ignore[arg-type]
        max_lora_rank=16,
        served_name="a",
        load=True,
    )
    request = protocol.ApplyRequest(adapters=[item], concurrency=1, load_timeout_seconds=1)
    session = FakeSession(
        FakeResponse(500, b'{"error":"boom"}'),
        TimeoutError(),
        aiohttp.ClientConnectionError("refused"),
        FakeResponse(500, b'{"error":"boom"}'),
    )
    client = AgentClient("http://x", "t", session, timeout=1)  # type: ignore[arg-type]
    keys = [
        ("apply", "server_error"),
        ("apply", "timeout"),
        ("required", "unreachable"),
        ("prune", "server_error"),
    ]
    family = "loraplane_agent_api_errors_total"
    before = {k: api_errors(family, *k) for k in keys}

    async def calls() -> None:
        for _ in range(2):
            with pytest.raises(AgentError):
                _ = [a async for a in client.apply(request, line_timeout=1)]
        with pytest.raises(AgentError):
            await client.set_required(["a"])
        with pytest.raises(AgentError):
            await client.prune({})

    asyncio.run(calls())
    assert {k: api_errors(family, *k) - before[k] for k in keys} == dict.fromkeys(keys, 1)


def test_a_watch_restart_by_kopf_is_counted_and_its_debug_record_stays_quiet() -> None:
    logger = logging.getLogger(metrics.WATCH_LOGGER)
    level, filters = logger.level, list(logger.filters)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    resource = Resource("loraplane.dev", "v1alpha1", "loraadapters", namespaced=True)

    async def listed(**_: Any) -> AsyncIterator[tuple[list[Any], str]]:
        yield [], "1"

    async def gone(**_: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "ERROR", "object": {"code": 410}}

    async def run_kopf() -> None:
        pause: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream = watching.continuous_watch(
            settings=OperatorSettings(),
            resource=resource,
            namespace=None,
            operator_pause_waiter=pause,
        )
        assert [e async for e in stream] == [watching.Bookmark.LISTED]  # then it restarts

    mp = pytest.MonkeyPatch()
    try:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        # kopf's own watch loop, fed a list then a 410 Gone instead of an API server.
        mp.setattr(watching.fetching, "fetch_objs", listed)
        mp.setattr(watching, "watch_objs", gone)
        metrics.count_watch_restarts()
        metrics.count_watch_restarts()  # idempotent: one filter, one count
        before = value("loraplane_watch_restarts_total", resource=str(resource))
        asyncio.run(run_kopf())
        assert value("loraplane_watch_restarts_total", resource=str(resource)) == before + 1
        assert seen == [], "a debug record got past the level the logger had"
    finally:
        mp.undo()
        logger.removeHandler(handler)
        logger.filters[:] = filters
        logger.setLevel(level)


# -- help texts and docs/metrics.md ----------------------------------------------------------


def exported_name(family: metrics.Family) -> str:
    """The parser names a counter family without its _total suffix."""
    return family.name.removesuffix("_total") if family.type == "counter" else family.name


def test_every_family_is_exported_with_its_help_and_labels() -> None:
    ns = "families"
    fleet = fleet_of(ns, "a", pods=1)
    fleet_gauges.watch_fleet(fleet)
    load_on(fleet, "p0", "a")
    fleet.record_registrations((ns, "p0"), {})
    exported = {n: f for n, f in exposition().items() if n.startswith("loraplane_")}
    assert not [n for n in exported if n.endswith("_created")], "a series per child, unread"
    ours = [f for f in metrics.FAMILIES if f.exporter == "operator"]
    assert set(exported) == {exported_name(f) for f in ours}
    for family in ours:
        assert exported[exported_name(family)].documentation == family.help
        assert exported[exported_name(family)].type == family.type
    loads = next(
        s for s in exported["loraplane_adapter_loads"].samples if s.labels.get("namespace") == ns
    )
    assert set(loads.labels) == {"namespace", "base_model", "adapter", "result"}
    registered = exported["loraplane_adapter_registered"].samples[0]
    assert set(registered.labels) == {"namespace", "base_model", "adapter", "pod"}


def test_docs_list_exactly_the_families_the_module_defines() -> None:
    text = DOC.read_text()
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert generated == metrics.doc_table(), "run: python -m loraplane.metrics --doc"


def test_a_scaled_up_pod_that_goes_again_replaced_nobody() -> None:
    ns = "rereg-scale-down"
    fleet = fleet_of(ns, "a", pods=1)
    load_on(fleet, "p0", "a")
    fleet.observe_pod(pod_obj(ns, "p1", created="2099-01-01T00:00:00Z"))
    load_on(fleet, "p1", "a")
    fleet.forget_pod((ns, "p1"))  # the newest pod goes first on a scale-down
    a = adapter(ns, "a")
    assert value("loraplane_adapter_reregistrations_total", **a, cause="new_pod") == 0
    assert value("loraplane_adapter_unloads_total", **a, reason="pod_gone") == 1


def loraplane_lines(text: bytes) -> list[bytes]:
    return [line for line in text.splitlines() if line.startswith(b"loraplane_")]


def test_the_endpoint_serves_the_registry_plain_or_gzipped_and_nothing_else() -> None:
    ns, other = "endpoint", "endpoint-2"
    fleet = fleet_of(ns, "a", "b", pods=2)
    fleet.observe_base(base_obj(other))  # a second base model: families sent in two parts
    fleet.observe_pod(pod_obj(other, "p0"))
    fleet.observe_adapter(lora_obj(other, "c"))
    fleet_gauges.watch_fleet(fleet)
    load_on(fleet, "p0", "a")
    metrics.ADAPTER_LOADS.labels(other, "base", "c", "error").inc()
    server = metrics_http.serve(0, "127.0.0.1")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            plain = resp.read()
        gzipped = urllib.request.Request(f"{url}/metrics", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(gzipped, timeout=10) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            unzipped = gzip.decompress(resp.read())
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/other", timeout=10)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
    # The samples prometheus_client's whole-registry rendering has, line for line (its own gc
    # and process series move between two scrapes; ours do not here).
    whole = loraplane_lines(generate_latest(REGISTRY))
    assert loraplane_lines(plain) == whole == loraplane_lines(unzipped)
    assert any(line.startswith(b"loraplane_adapter_registered{") for line in whole)
    # Families sent in parts (a base model each) have one HELP and one TYPE line each, before
    # their first sample, so a parser (and Prometheus) reads each as one family.
    types = [line.split()[2] for line in plain.splitlines() if line.startswith(b"# TYPE")]
    assert len(types) == len(set(types))
    families = {f.name: f for f in text_string_to_metric_families(plain.decode())}
    for name in ("loraplane_adapter_registered", "loraplane_adapter_loads"):
        assert {s.labels["namespace"] for s in families[name].samples} >= {ns, other}, name

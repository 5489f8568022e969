"""Engine residency without vLLM: the snapshot contract, hook detection, the pods' plugin env,
the agent's metrics and answer, the per-pod tier in a LoRAAdapter's status, and the residency
feed on vLLM's /metrics."""

from __future__ import annotations

import multiprocessing
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from loraplane.agent.engine import Engine
from loraplane.api import BaseModelDeploymentSpec, LoRAAdapterStatus
from loraplane.api.adapter import MAX_STATUS_PODS
from loraplane.builders.deployment import PodContext as BuildContext
from loraplane.builders.deployment import deployment
from loraplane.config import AgentSettings, env_name
from loraplane.plugin import feed, residency, snapshot
from loraplane.status import adapter as adapter_status
from tests.unit.test_builders import SPECS, owner
from tests.unit.test_metrics import fetched, fleet_of, load_on

HEX = "b" * 64


def snap(**adapters: snapshot.AdapterResidency) -> snapshot.Snapshot:
    return snapshot.Snapshot(
        vllm_version="0.32.0",
        pid=1,
        written_at=time.time(),
        gpu_slots=1,
        cpu_slots=2,
        adapters=adapters,
    )


def test_env_dir_is_the_agents_setting() -> None:
    assert env_name("residency_dir") == snapshot.ENV_DIR


def test_a_snapshot_reads_back_and_goes_stale(tmp_path: Path) -> None:
    written = snap(a=snapshot.AdapterResidency(path="/adapters/a/x", tier="gpu", activations=3))
    snapshot.write(tmp_path, written)
    assert snapshot.read(tmp_path) == written
    later = written.written_at + snapshot.STALE_SECONDS + 1
    assert snapshot.read(tmp_path, now=later) is None
    assert list(tmp_path.iterdir()) == [tmp_path / snapshot.FILE_NAME]  # no temporary left


def test_no_or_a_corrupt_snapshot_is_none(tmp_path: Path) -> None:
    assert snapshot.read(tmp_path) is None
    snapshot.path_in(tmp_path).write_text('{"vllm_version": "0.32.0", "pid"')
    assert snapshot.read(tmp_path) is None


# -- hook detection ------------------------------------------------------------------------


def fake_vllm(monkeypatch: pytest.MonkeyPatch, activate: Any) -> list[residency.Hook]:
    module = types.ModuleType("fake_vllm_lora")

    class Manager:
        def remove_oldest_adapter(self) -> bool:
            return True

    Manager.activate_adapter = activate  # type: ignore[attr-defined]
    module.Manager = Manager  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_vllm_lora", module)
    return [
        residency.Hook("fake_vllm_lora", "Manager", "remove_oldest_adapter", ("self",)),
        residency.Hook("fake_vllm_lora", "Manager", "activate_adapter", ("self", "lora_id")),
    ]


def test_detection_finds_hooks_with_their_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    def activate(self: Any, lora_id: int) -> bool:
        return True

    hooks = fake_vllm(monkeypatch, activate)
    assert {h.method for h in residency.resolve(tuple(hooks))} == {
        "remove_oldest_adapter",
        "activate_adapter",
    }


def test_detection_names_a_changed_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    def activate(self: Any, lora_id: int, slot: int = 0) -> bool:
        return True

    hooks = fake_vllm(monkeypatch, activate)
    with pytest.raises(residency.Unsupported, match=r"Manager.activate_adapter\(self, lora_id, "):
        residency.resolve(tuple(hooks))


def test_detection_names_a_missing_hook_or_class(monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = fake_vllm(monkeypatch, lambda self, lora_id: True)
    gone = residency.Hook("fake_vllm_lora", "Manager", "pin_adapter", ("self",))
    with pytest.raises(residency.Unsupported, match=r"no Manager\.pin_adapter"):
        residency.resolve((*hooks, gone))
    other = residency.Hook("fake_vllm_lora", "Other", "x", ("self",))
    with pytest.raises(residency.Unsupported, match=r"no fake_vllm_lora\.Other"):
        residency.resolve((other,))


def test_outside_a_pod_of_ours_the_plugin_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(snapshot.ENV_DIR, raising=False)
    assert residency.install() is None


# -- the pods' plugin env --------------------------------------------------------------------


def vllm_env(user_env: list[dict[str, Any]], engine_plugin: bool = True) -> dict[str, Any]:
    body = dict(SPECS["tiny-cpu"])
    body["engine"] = {**body["engine"], "env": user_env}
    spec = BaseModelDeploymentSpec.from_k8s(body)
    ctx = BuildContext(agent_image="loraplane:test", engine_plugin=engine_plugin)
    pod = deployment(owner("tiny-cpu"), spec, "tiny", ctx)["spec"]["template"]["spec"]
    env = pod["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), names
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def test_the_plugin_is_named_first_with_the_users_own_after_it() -> None:
    assert vllm_env([])["VLLM_PLUGINS"] == "loraplane"
    mine = [{"name": "VLLM_PLUGINS", "value": "lora_resolver, loraplane,x"}]
    assert vllm_env(mine)["VLLM_PLUGINS"] == "loraplane,lora_resolver,x"
    assert vllm_env([])[snapshot.ENV_DIR] == "/run/loraplane"


def test_a_plugin_list_from_a_secret_stands_alone_and_the_setting_turns_it_off() -> None:
    ref = {"secretKeyRef": {"name": "s", "key": "plugins"}}
    env = vllm_env([{"name": "VLLM_PLUGINS", "valueFrom": ref}])
    assert env["VLLM_PLUGINS"] == ref and snapshot.ENV_DIR not in env
    off = vllm_env([], engine_plugin=False)
    assert "VLLM_PLUGINS" not in off and snapshot.ENV_DIR not in off


# -- the agent -------------------------------------------------------------------------------


@pytest.fixture()
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setenv("POD_NAME", "tiny-0")
    monkeypatch.setenv("POD_NAMESPACE", "team")
    store, run = tmp_path / "adapters", tmp_path / "run"
    (store / "sql" / HEX).mkdir(parents=True)
    run.mkdir()
    cfg = AgentSettings(adapter_root=store, residency_dir=run, base_model="tiny")
    snapshot.write(
        run,
        snap(
            # served as "sql-v2": labelled by the LoRAAdapter, from its path in the store
            **{
                "sql-v2": snapshot.AdapterResidency(
                    path=f"{store}/sql/{HEX}",
                    tier="gpu",
                    activations=2,
                    gpu_evictions=1,
                    cpu_evictions=1,
                    disk_loads=2,
                    disk_load_seconds=0.5,
                ),
                # pruned from the store: its counts went with its files
                "old": snapshot.AdapterResidency(path=f"{store}/old/{HEX}", tier="cpu"),
                # registered by someone else (--lora-modules): not ours to label
                "theirs": snapshot.AdapterResidency(path="/models/lora", tier="disk"),
            }
        ),
    )
    return Engine(cfg)


def scrape(engine: Engine) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(engine)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_the_agent_exports_the_engines_residency_per_adapter(agent: Engine) -> None:
    got = scrape(agent)
    labels = {"namespace": "team", "base_model": "tiny", "adapter": "sql", "pod": "tiny-0"}
    assert sorted(got["loraplane_adapter_resident"], key=lambda s: s[0]["tier"]) == [
        ({**labels, "tier": "cpu"}, 0.0),
        ({**labels, "tier": "gpu"}, 1.0),
    ]
    assert got["loraplane_adapter_activations_total"] == [(labels, 2.0)]
    evictions = {s[0]["tier"]: s[1] for s in got["loraplane_adapter_evictions_total"]}
    assert evictions == {"gpu": 1.0, "cpu": 1.0}
    assert {s[0]["reason"] for s in got["loraplane_adapter_evictions_total"]} == {"lru"}
    assert got["loraplane_adapter_disk_loads_total"] == [(labels, 2.0)]
    assert got["loraplane_adapter_disk_load_seconds_total"] == [(labels, 0.5)]
    slots = {s[0]["tier"]: s[1] for s in got["loraplane_engine_lora_slots"]}
    assert slots == {"gpu": 1.0, "cpu": 2.0}


def test_the_agent_answers_the_tiers_by_served_name(agent: Engine) -> None:
    answer = agent.residency()
    assert answer.available and answer.tiers == {"sql-v2": "gpu", "old": "cpu"}


def test_without_a_live_snapshot_the_agent_says_so(tmp_path: Path) -> None:
    engine = Engine(AgentSettings(adapter_root=tmp_path, residency_dir=tmp_path))
    assert not engine.residency().available
    assert scrape(engine) == {}


# -- the status ------------------------------------------------------------------------------


def tiers_in_status(fleet: Any, name: str) -> dict[str, str | None]:
    ad = fleet.adapters[("tiers", name)]
    status = adapter_status.compute(fleet, ad, LoRAAdapterStatus(), MAX_STATUS_PODS)
    return {p.name: p.tier for p in status.pods or []}


def test_each_pod_of_the_status_tells_where_its_engine_holds_the_adapter() -> None:
    fleet = fleet_of("tiers", "a", "b", pods=2)
    for pod in ("p0", "p1"):
        for name in ("a", "b"):
            load_on(fleet, pod, name, fetched(name))
    assert tiers_in_status(fleet, "a") == {"p0": None, "p1": None}  # no engine reported yet
    changed = fleet.adapter_changed(("tiers", "a"))
    changed.clear()
    fleet.record_residency(("tiers", "p0"), {"a": "gpu", "b": "cpu"}, 0.0)
    fleet.record_residency(("tiers", "p1"), {"b": "gpu"}, 0.0)
    assert changed.is_set()
    assert tiers_in_status(fleet, "a") == {"p0": "gpu", "p1": "disk"}
    assert tiers_in_status(fleet, "b") == {"p0": "cpu", "p1": "gpu"}
    changed.clear()
    fleet.record_residency(("tiers", "p1"), {"b": "gpu"}, 0.0)
    assert not changed.is_set()  # a resync that found the same: nothing to recompute
    fleet.record_residency(("tiers", "p0"), None, 0.0)
    assert tiers_in_status(fleet, "a")["p0"] is None


def test_after_a_restart_the_held_tier_stands_until_the_engine_is_read_again() -> None:
    fleet = fleet_of("tiers", "a", pods=1)
    load_on(fleet, "p0", "a", fetched("a"))
    ad = fleet.adapters[("tiers", "a")]
    held = adapter_status.compute(fleet, ad, LoRAAdapterStatus(), MAX_STATUS_PODS)
    assert held.pods is not None
    held.pods[0].tier = "gpu"  # what the API holds, written before the operator restarted
    again = adapter_status.compute(fleet, ad, held, MAX_STATUS_PODS)
    assert again.to_k8s() == held.to_k8s()  # nothing to rewrite before the first reading
    fleet.record_residency(("tiers", "p0"), {"a": "cpu"}, 0.0)
    assert tiers_in_status(fleet, "a") == {"p0": "cpu"}
    fleet.record_residency(("tiers", "p0"), None, 0.0)  # read: the engine no longer says
    assert adapter_status.compute(fleet, ad, held, MAX_STATUS_PODS).pods[0].tier is None  # type: ignore[index]


def test_a_pod_that_does_not_serve_the_adapter_reports_no_tier() -> None:
    fleet = fleet_of("tiers", "a", pods=1)
    fleet.record_residency(("tiers", "p0"), {"a": "gpu"}, 0.0)
    assert tiers_in_status(fleet, "a") == {"p0": None}


def test_a_server_says_the_plugin_is_off_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from loraplane import plugin

    monkeypatch.delenv(plugin.SAID_OFF_ENV, raising=False)
    with caplog.at_level("WARNING", logger="vllm.plugins.loraplane"):
        plugin.say_off("vLLM 9.9: no LRUCacheWorkerLoRAManager")
        plugin.say_off("vLLM 9.9: no LRUCacheWorkerLoRAManager")  # a child process, inheriting
    assert [r.getMessage() for r in caplog.records] == [
        "loraplane residency off: vLLM 9.9: no LRUCacheWorkerLoRAManager"
    ]


def test_an_error_of_the_plugin_never_reaches_the_engine(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from loraplane import plugin

    monkeypatch.delenv(plugin.SAID_OFF_ENV, raising=False)
    state = residency.Residency(str(tmp_path), "0.32.0")
    activate = residency._wrappers(state)["activate_adapter"](lambda self, lora_id: True)

    class Changed:  # a manager whose internals moved: the bookkeeping cannot read them
        pass

    with caplog.at_level("WARNING", logger="vllm.plugins.loraplane"):
        assert activate(Changed(), 3) is True  # vLLM's own answer, unchanged
        assert activate(Changed(), 4) is True
    assert state.off
    assert len(caplog.records) == 1
    assert "stopped after an unexpected error: AttributeError" in caplog.records[0].getMessage()


# -- the residency feed on vLLM's /metrics ----------------------------------------------------


def exposed(collector: feed.ResidencyCollector) -> str:
    registry = CollectorRegistry(auto_describe=True)  # as prometheus_client's REGISTRY
    registry.register(collector)
    return generate_latest(registry).decode()


def feed_samples(text: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == feed.NAME
    ]


def written(tmp_path: Path, **tiers: snapshot.Tier) -> Path:
    adapters = {
        n: snapshot.AdapterResidency(path=f"/adapters/{n}/{HEX}", tier=t) for n, t in tiers.items()
    }
    snapshot.write(tmp_path, snap(**adapters).model_copy(update={"gpu_slots": 2}))
    return tmp_path


def as_vllm_writes_it(labels: dict[str, str], value: float) -> str:
    """The line prometheus_client writes for vLLM's own gauge with these labels (loggers.py)."""
    registry = CollectorRegistry()
    gauge = Gauge(
        "vllm:lora_requests_info",
        "Running stats on lora requests.",
        labelnames=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        registry=registry,
    )
    gauge.labels(**labels).set(value)
    lines = generate_latest(registry).decode().splitlines()
    return next(x for x in lines if x.startswith("vllm:")).replace(
        "vllm:lora_requests_info", feed.NAME
    )


def test_the_feed_names_gpu_adapters_running_and_cpu_only_ones_waiting(tmp_path: Path) -> None:
    run = written(tmp_path, sql="gpu", chat="gpu", b="cpu", a="cpu", cold="disk")
    now = time.time()
    text = exposed(feed.ResidencyCollector(run, clock=lambda: now))
    labels = {"max_lora": "2", "waiting_lora_adapters": "a,b", "running_lora_adapters": "chat,sql"}
    assert feed_samples(text) == [(labels, now)]
    assert as_vllm_writes_it(labels, now) in text.splitlines()  # byte for byte vLLM's shape
    assert f"# TYPE {feed.NAME} gauge" in text


def test_the_feed_of_an_engine_holding_nothing_still_says_its_slots(tmp_path: Path) -> None:
    run = written(tmp_path, cold="disk")
    now = time.time()
    labels = {"max_lora": "2", "waiting_lora_adapters": "", "running_lora_adapters": ""}
    text = exposed(feed.ResidencyCollector(run, clock=lambda: now))
    assert feed_samples(text) == [(labels, now)]
    assert as_vllm_writes_it(labels, now) in text.splitlines()


def test_each_scrape_is_one_series_valued_at_its_own_time(tmp_path: Path) -> None:
    run = written(tmp_path, sql="gpu")
    collector = feed.ResidencyCollector(run)
    first = feed_samples(exposed(collector))
    snapshot.write(run, snap(sql=snapshot.AdapterResidency(path="/x", tier="cpu")))
    second = feed_samples(exposed(collector))
    assert len(first) == len(second) == 1
    assert first[0][0]["running_lora_adapters"] == "sql"
    assert second[0][0]["waiting_lora_adapters"] == "sql"
    assert first[0][1] <= second[0][1] <= time.time()  # the EPP keeps the largest: the latest


def test_names_that_need_escaping_read_back_as_they_are(tmp_path: Path) -> None:
    odd = 'say "hi"\\now'
    tiers: dict[str, snapshot.Tier] = {odd: "gpu"}
    run = written(tmp_path, **tiers)
    text = exposed(feed.ResidencyCollector(run))
    ((labels, value),) = feed_samples(text)
    assert labels["running_lora_adapters"] == odd
    assert as_vllm_writes_it(labels, value) in text.splitlines()


def test_no_live_snapshot_no_feed_and_the_scrape_still_answers(tmp_path: Path) -> None:
    assert feed_samples(exposed(feed.ResidencyCollector(tmp_path))) == []  # none written
    run = written(tmp_path, sql="gpu")
    stale = time.time() + snapshot.STALE_SECONDS + 1
    assert feed_samples(exposed(feed.ResidencyCollector(run, clock=lambda: stale))) == []
    snapshot.path_in(run).write_text("{")
    assert feed_samples(exposed(feed.ResidencyCollector(run))) == []

    def broken() -> float:
        raise RuntimeError("clock")

    assert exposed(feed.ResidencyCollector(written(tmp_path, sql="gpu"), clock=broken)) == ""


def registered_in_child(run: str, queue: Any) -> None:
    queue.put(feed.register(run, CollectorRegistry(auto_describe=True)) is not None)


def test_the_feed_is_registered_once_and_only_where_metrics_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(feed.MULTIPROC_ENV, raising=False)
    monkeypatch.delenv(snapshot.ENV_DIR, raising=False)
    registry = CollectorRegistry(auto_describe=True)
    assert feed.register(None, registry) is None  # not a pod of ours
    assert feed.register(str(tmp_path), registry) is not None  # no snapshot read to register
    assert feed.register(str(tmp_path), registry) is None  # plugins may load twice
    monkeypatch.setenv(feed.MULTIPROC_ENV, str(tmp_path))  # /metrics serves another registry
    assert feed.register(str(tmp_path), CollectorRegistry(auto_describe=True)) is None
    monkeypatch.delenv(feed.MULTIPROC_ENV)
    # vLLM's engine core and workers are multiprocessing children of the API server
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=registered_in_child, args=(str(tmp_path), queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) is False

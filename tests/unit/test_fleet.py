"""The fleet's rules and the adapter status computed from it, fed objects as the API shows."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from loraplane.api import AdapterSummary, LoRAAdapterStatus
from loraplane.config import Settings
from loraplane.fleet import Fleet, Version, serves
from loraplane.fleet_gauges import FleetCollector
from loraplane.status import Kept, whole
from loraplane.status import adapter as adapter_status
from loraplane.sync import plan

NS = "ns"


def bmd(name: str = "base", max_lora_rank: int = 16, cap: int | None = None) -> dict[str, Any]:
    lora: dict[str, Any] = {"maxLoraRank": max_lora_rank}
    if cap is not None:
        lora["maxAdaptersPerReplica"] = cap
    return {
        "apiVersion": "loraplane.dev/v1alpha1",
        "kind": "BaseModelDeployment",
        "metadata": {"namespace": NS, "name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": {"model": {"source": {"path": "/models/tiny"}}, "lora": lora, "replicas": 2},
    }


def lora(
    name: str,
    path: str | None = None,
    generation: int = 1,
    priority: int = 0,
    created: str = "2026-01-01T00:00:00Z",
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "loraplane.dev/v1alpha1",
        "kind": "LoRAAdapter",
        "metadata": {
            "namespace": NS,
            "name": name,
            "generation": generation,
            "creationTimestamp": created,
        },
        "spec": {
            "baseModel": "base",
            "source": {"path": path or f"/src/{name}"},
            "priority": priority,
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def pod(name: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": NS,
            "name": name,
            "labels": {"loraplane.dev/base-model": "base"},
        },
        "status": {
            "podIP": "10.0.0.1",
            "containerStatuses": [
                {"name": "vllm", "ready": ready, "state": {"running": {}}, "containerID": "c1"}
            ],
        },
    }


def fleet_with(*adapters: str, pods: int = 2, cap: int | None = None) -> Fleet:
    fleet = Fleet()
    fleet.observe_base(bmd(cap=cap))
    for i in range(pods):
        fleet.observe_pod(pod(f"p{i}"))
    for i, name in enumerate(adapters):
        fleet.observe_adapter(lora(name, created=f"2026-01-0{i + 1}T00:00:00Z"))
    return fleet


def verified(fleet: Fleet, name: str) -> Version:
    key = (NS, name)
    judged = fleet.judgement(key)
    assert judged is not None
    digest = "sha256:" + "a" * 64
    version = Version(
        judged, f"/adapters/{name}/{'a' * 64}", AdapterSummary(rank=8, size_bytes=10, digest=digest)
    )
    assert fleet.record_version(key, judged, version) is not None
    return version


def register(fleet: Fleet, name: str, pods: int = 2) -> None:
    version = verified(fleet, name)
    for i in range(pods):
        fleet.record_registrations((NS, f"p{i}"), {name: version.path})
        fleet.set_state((NS, f"p{i}"), name, "Registered", path=version.path)


def status_of(fleet: Fleet, name: str, old: LoRAAdapterStatus | None = None) -> LoRAAdapterStatus:
    ad = fleet.adapters[(NS, name)]
    return adapter_status.compute(fleet, ad, old or LoRAAdapterStatus(), 32)


def test_a_rejection_holds_for_its_source_and_rank_only() -> None:
    fleet = fleet_with("a")
    key = (NS, "a")
    judged = fleet.judgement(key)
    assert judged is not None
    kicks = fleet.record_failure(key, judged, "RankExceedsMax", "rank 64 exceeds 16")
    assert kicks == {(NS, "p0"), (NS, "p1")}
    assert status_of(fleet, "a").phase == "Failed"
    fleet.observe_adapter(lora("a", generation=2, priority=5))  # not about the files
    assert fleet.failure(key) is not None
    fleet.observe_base(bmd(max_lora_rank=64))  # a verdict against the old limit
    assert fleet.failure(key) is None
    fleet.observe_base(bmd(max_lora_rank=16))
    assert fleet.failure(key) is not None
    fleet.observe_adapter(lora("a", path="/src/fixed", generation=3))
    assert fleet.failure(key) is None and fleet.placement(NS, "base").placed == ("a",)


def test_a_version_fetched_for_an_older_spec_is_not_kept() -> None:
    fleet = fleet_with("a")
    key = (NS, "a")
    before = fleet.judgement(key)
    assert before is not None
    fleet.observe_adapter(lora("a", path="/src/new", generation=2))
    stale = Version(before, "/adapters/a/old", AdapterSummary(rank=8))
    assert fleet.record_version(key, before, stale) is None
    assert fleet.version(key) is None


def test_priority_change_keeps_the_adapter_ready() -> None:
    fleet = fleet_with("a")
    register(fleet, "a")
    fleet.observe_adapter(lora("a", generation=2, priority=3))
    status = status_of(fleet, "a")
    assert (status.phase, status.observed_generation, status.ready) == ("Ready", 2, "2/2")


def test_new_source_is_not_ready_on_the_old_version() -> None:
    fleet = fleet_with("a")
    register(fleet, "a")
    fleet.observe_adapter(lora("a", path="/src/v2", generation=2))
    status = status_of(fleet, "a")
    assert status.phase == "Loading" and status.ready == "0/2"
    assert status.adapter is None
    # Both pods still serve the first version: shown and counted as such.
    assert {p.state for p in status.pods or []} == {"Outdated"}
    assert status.replicas is not None and status.replicas.outdated == 2


def test_whole_status_clears_what_the_new_generation_lacks() -> None:
    """kopf's merge patch keeps keys it does not name: a new generation must null `adapter`."""
    fleet = fleet_with("a")
    register(fleet, "a")
    fleet.observe_adapter(lora("a", path="/src/v2", generation=2))
    body = whole(status_of(fleet, "a"))
    assert "adapter" in body and body["adapter"] is None


def test_restart_trusts_a_recorded_version_only_for_its_own_generation() -> None:
    path = "/adapters/a/" + "b" * 64
    recorded = {"observedGeneration": 2, "adapter": {"path": path, "maxLoraRank": 16, "rank": 8}}
    fleet = Fleet()
    fleet.observe_base(bmd())
    fleet.observe_adapter(lora("a", generation=2, status=recorded))
    version = fleet.version((NS, "a"))
    assert version is not None and version.path == path
    # A status written for generation 1 says nothing of generation 2's files.
    fleet = Fleet()
    fleet.observe_base(bmd())
    fleet.observe_adapter(lora("a", generation=2, status={**recorded, "observedGeneration": 1}))
    assert fleet.version((NS, "a")) is None
    # Verified against another maxLoraRank: judged again.
    fleet = Fleet()
    fleet.observe_base(bmd(max_lora_rank=8))
    fleet.observe_adapter(lora("a", generation=2, status=recorded))
    assert fleet.version((NS, "a")) is None


def test_capacity_and_failure_free_places() -> None:
    fleet = fleet_with("a", "b", "c", cap=2)
    assert fleet.placement(NS, "base").placed == ("a", "b")
    c = status_of(fleet, "c")
    ready = next(x for x in c.conditions if x.type == "Ready")
    assert c.phase == "Pending" and ready.reason == "CapacityExceeded"
    judged = fleet.judgement((NS, "a"))
    assert judged is not None
    fleet.record_failure((NS, "a"), judged, "DoRANotSupported", "DoRA")
    assert fleet.placement(NS, "base").placed == ("b", "c")


def test_one_event_per_transition() -> None:
    fleet = fleet_with("a")
    loading = status_of(fleet, "a")
    register(fleet, "a")
    ready = status_of(fleet, "a", loading)
    assert [(e.type, e.reason) for e in adapter_status.events(loading, ready)] == [
        ("Normal", "Ready")
    ]
    assert adapter_status.events(ready, status_of(fleet, "a", ready)) == []


def test_pod_entries_keep_their_since_across_a_recompute() -> None:
    fleet = fleet_with("a")
    register(fleet, "a")
    first = status_of(fleet, "a")
    fresh = Fleet()  # an operator restart: the states are new, the status is not
    fresh.observe_base(bmd())
    for i in range(2):
        fresh.observe_pod(pod(f"p{i}"))
    fresh.observe_adapter(lora("a"))
    register(fresh, "a")
    again = status_of(fresh, "a", first)
    assert [p.since for p in again.pods or []] == [p.since for p in first.pods or []]


def test_a_kept_status_is_the_same_status_in_a_fraction_of_the_memory() -> None:
    fleet = fleet_with("a", pods=10)
    register(fleet, "a", pods=10)
    status = status_of(fleet, "a")
    kept = Kept.of(status)
    assert kept.model(LoRAAdapterStatus) == status
    assert Kept.of(kept.model(LoRAAdapterStatus)) == kept, "the text a write compares is stable"
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    models = [status_of(fleet, "a") for _ in range(20)]
    typed = (tracemalloc.get_traced_memory()[0] - before) / len(models)
    tracemalloc.stop()
    assert len(kept.text) * 4 < typed, f"{len(kept.text)} chars against {typed:.0f} bytes"


def test_deletion_waits_for_the_adapters_own_registration_only() -> None:
    fleet = fleet_with("a", "b")
    register(fleet, "a")
    assert [p.name for p in fleet.holders((NS, "a"))] == ["p0", "p1"]
    # Another adapter's weights under the same served name are not this adapter's to wait for.
    fleet.record_registrations((NS, "p0"), {"a": "/adapters/b/" + "c" * 64})
    fleet.record_registrations((NS, "p1"), {})
    assert fleet.holders((NS, "a")) == []


def test_pod_status_cap_cannot_exceed_what_the_crd_allows() -> None:
    assert Settings.from_env({"LORAPLANE_POD_STATUS_CAP": "32"}).pod_status_cap == 32
    with pytest.raises(ValidationError, match="32"):
        Settings.from_env({"LORAPLANE_POD_STATUS_CAP": "33"})


def test_registered_series_go_with_their_pod_and_adapter() -> None:
    fleet = fleet_with("a", "b")
    register(fleet, "a")
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet))

    def series() -> set[str]:
        text = generate_latest(registry).decode()
        return {
            line for line in text.splitlines() if line.startswith("loraplane_adapter_registered{")
        }

    assert (
        'loraplane_adapter_registered{adapter="a",base_model="base",namespace="ns",pod="p1"} 1.0'
        in series()
    )
    assert (
        'loraplane_adapter_registered{adapter="b",base_model="base",namespace="ns",pod="p1"} 0.0'
        in series()
    )
    fleet.forget_pod((NS, "p1"))
    assert not any('pod="p1"' in s for s in series())
    fleet.forget_adapter((NS, "b"))
    assert not any('adapter="b"' in s for s in series())
    assert len(series()) == 1


def test_judgement_is_none_without_a_base() -> None:
    fleet = Fleet()
    fleet.observe_adapter(lora("a"))
    assert fleet.judgement((NS, "a")) is None
    status = status_of(fleet, "a")
    ready = next(x for x in status.conditions if x.type == "Ready")
    assert status.phase == "Pending" and ready.reason == "BaseModelNotFound"


def test_a_served_name_has_one_owner_the_oldest() -> None:
    fleet = fleet_with("first")
    intruder = lora("second", created="2026-02-01T00:00:00Z")
    intruder["spec"]["servedName"] = "first"
    fleet.observe_adapter(intruder)
    assert fleet.placement(NS, "base").placed == ("first",)
    status = status_of(fleet, "second")
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (status.phase, ready.reason) == ("Failed", "ServedNameConflict")
    assert "'first'" in (ready.message or "")
    assert {p.state for p in status.pods or []} == {"NotAttempted"}
    assert {p.last_error for p in status.pods or []} == {
        "nothing is registered under 'first' on this pod"
    }
    fleet.mark_deleting((NS, "first"))
    assert fleet.placement(NS, "base").placed == ("second",)
    taken = status_of(fleet, "second", status)
    assert ("Normal", "ServedNameTaken") in [
        (e.type, e.reason) for e in adapter_status.events(status, taken)
    ]


def test_pinned_keeps_the_first_version_and_follow_moves_to_the_new_one() -> None:
    fleet = fleet_with("a")
    key = (NS, "a")
    first = verified(fleet, "a")
    judged = first.judged
    newer = Version(
        judged, "/adapters/a/" + "f" * 64, AdapterSummary(rank=8, digest="sha256:" + "f" * 64)
    )
    assert fleet.record_version(key, judged, newer) is None
    assert fleet.version(key) == first
    follow = lora("a", generation=2)
    follow["spec"]["updatePolicy"] = "Follow"
    fleet.observe_adapter(follow)
    for i in range(2):
        fleet.set_state((NS, f"p{i}"), "a", "Registered", path=first.path)
    before = status_of(fleet, "a")
    assert fleet.record_version(key, judged, newer) == {(NS, "p0"), (NS, "p1")}
    during = status_of(fleet, "a", before)
    assert during.phase == "Loading" and during.ready == "0/2"
    assert during.replicas is not None and during.replicas.outdated == 2
    progressing = next(c for c in during.conditions if c.type == "Progressing")
    assert progressing.status == "True" and "2 on sha256:aaaaaaaaaaaa" in (
        progressing.message or ""
    )
    reasons = [e.reason for e in adapter_status.events(before, during)]
    assert "NewVersion" in reasons
    fleet.set_state((NS, "p0"), "a", "Registered", path=newer.path)
    mixed = status_of(fleet, "a", during)
    assert mixed.phase != "Ready", "Ready with pods on two versions"
    fleet.set_state((NS, "p1"), "a", "Registered", path=newer.path)
    assert status_of(fleet, "a", mixed).phase == "Ready"


def test_a_refused_adapter_is_not_attempted_on_pods_that_never_tried() -> None:
    fleet = fleet_with("a")
    judged = fleet.judgement((NS, "a"))
    assert judged is not None
    fleet.record_failure((NS, "a"), judged, "DoRANotSupported", "DoRA")
    fleet.set_state((NS, "p0"), "a", "Failed", "DoRA")
    entries = {p.name: p for p in status_of(fleet, "a").pods or []}
    assert entries["p0"].state == "Failed"
    assert (entries["p1"].state, entries["p1"].last_error) == ("NotAttempted", "DoRANotSupported")


def test_the_sync_plan_unloads_only_what_is_ours_to_unload() -> None:
    fleet = fleet_with("keep", "gone", "extra", "bad", cap=2)
    fleet.mark_deleting((NS, "gone"))
    judged = fleet.judgement((NS, "bad"))
    assert judged is not None
    fleet.record_failure((NS, "bad"), judged, "RankExceedsMax", "rank 64")
    registered = {
        "keep": "/adapters/keep/" + "a" * 64,
        "gone": "/adapters/gone/" + "a" * 64,
        "bad": "/adapters/bad/" + "a" * 64,  # its earlier version keeps serving
        "static": "/models/static-lora",  # --lora-modules: not ours
        "orphan": "/adapters/orphan/" + "a" * 64,  # in our store, owned by nobody now
    }
    steps = plan(fleet, fleet.bases[(NS, "base")], registered)
    assert [a.name for a in steps.wanted] == ["keep", "extra"]
    assert [(u.served_name, u.reason) for u in steps.unloads] == [
        ("gone", "deleted"),
        ("orphan", "orphan"),
    ]
    fleet.observe_base(bmd(cap=1))
    steps = plan(fleet, fleet.bases[(NS, "base")], {**registered, "extra": "/adapters/extra/x"})
    assert ("extra", "capacity") in [(u.served_name, u.reason) for u in steps.unloads]


def test_forgetting_an_adapter_leaves_its_namesake_in_another_namespace() -> None:
    fleet = fleet_with("a")
    fleet.set_state(("other", "p9"), "a", "Registered", path="/adapters/a/x")
    fleet.forget_adapter((NS, "a"))
    assert fleet.state(("other", "p9"), "a") is not None


def test_a_restarted_vllm_stays_looked_at_so_its_reload_is_a_recovery() -> None:
    fleet = fleet_with("a")
    register(fleet, "a")
    fleet.lost_registrations((NS, "p0"))
    assert fleet.looked_at((NS, "p0")) and fleet.registrations[(NS, "p0")] == {}
    assert fleet.state((NS, "p0"), "a").state == "Pending"  # type: ignore[union-attr]
    assert fleet.holders((NS, "a")) == [fleet.pods[(NS, "p1")]]


def test_the_sync_plan_finds_the_owner_of_a_registration_by_its_path() -> None:
    fleet = fleet_with("holder", "other", cap=1)
    intruder = lora("intruder", created="2026-03-01T00:00:00Z")
    intruder["spec"]["servedName"] = "holder"
    fleet.observe_adapter(intruder)
    renamed = lora("other")
    renamed["spec"]["servedName"] = "other-v2"
    fleet.observe_adapter(renamed)
    # cap 1: the oldest, holder, is placed; other is displaced; the intruder is placed nowhere.
    registered = {"holder": "/adapters/holder/" + "a" * 64, "other": "/adapters/other/" + "a" * 64}
    placed = fleet.placement(NS, "base")
    steps = plan(fleet, fleet.bases[(NS, "base")], registered)
    assert placed.placed == ("holder",) and placed.displaced == ("other",)
    assert [(u.served_name, u.adapter, u.reason) for u in steps.unloads] == [
        ("other", "other", "capacity")
    ]
    fleet.observe_base(bmd())  # room for both: the old served name of `other` goes as renamed
    steps = plan(fleet, fleet.bases[(NS, "base")], registered)
    assert [(u.served_name, u.reason) for u in steps.unloads] == [("other", "renamed")]


def test_a_pod_state_change_wakes_its_base_model_and_a_repeat_wakes_nothing() -> None:
    fleet = fleet_with("a")
    woke = fleet.base_progress((NS, "base"))
    woke.clear()
    fleet.base_changed((NS, "base")).clear()
    fleet.set_state(
        (NS, "p0"), "a", "Loading", "SourceUnavailable: gone", reason="SourceUnavailable"
    )
    assert woke.is_set(), "the base model's Degraded would wait for its slow resync"
    woke.clear()
    fleet.adapter_changed((NS, "a")).clear()
    fleet.set_state(
        (NS, "p0"), "a", "Loading", "SourceUnavailable: gone", reason="SourceUnavailable"
    )
    assert not woke.is_set() and not fleet.adapter_changed((NS, "a")).is_set()
    # Progress, not a change of the base model's own picture: its reconcile may coalesce it.
    assert not fleet.base_changed((NS, "base")).is_set()


# -- which statuses an event wakes (the status writer's queue) ------------------------------


def test_a_new_adapter_wakes_its_own_status_not_its_neighbours() -> None:
    fleet = fleet_with("a", "b")
    fleet.stale.clear()
    kicks = fleet.observe_adapter(lora("c", created="2026-01-03T00:00:00Z"))
    assert list(fleet.stale) == [(NS, "c")], "a burst would recompute every other adapter"
    assert kicks == {(NS, "p0"), (NS, "p1")}


def test_a_new_adapter_wakes_the_holder_of_its_served_name() -> None:
    fleet = fleet_with("a")
    fleet.stale.clear()
    twin = lora("twin", created="2026-01-05T00:00:00Z")
    twin["spec"]["servedName"] = "a"
    fleet.observe_adapter(twin)
    assert set(fleet.stale) == {(NS, "twin"), (NS, "a")}


def test_with_a_cap_a_new_adapter_wakes_every_adapter_of_its_base() -> None:
    fleet = fleet_with("a", "b", cap=2)
    fleet.stale.clear()
    fleet.observe_adapter(lora("c", created="2026-01-03T00:00:00Z", priority=5))
    assert set(fleet.stale) == {(NS, "a"), (NS, "b"), (NS, "c")}, "placement ranks them all"
    assert fleet.placement(NS, "base").displaced == ("b",)


def test_the_placement_follows_a_failure_and_a_cap_change() -> None:
    fleet = fleet_with("a", "b", cap=1)
    assert fleet.placement(NS, "base").placed == ("a",)
    judged = fleet.judgement((NS, "a"))
    assert judged is not None
    fleet.record_failure((NS, "a"), judged, "RankTooHigh", "rank 64")
    assert fleet.placement(NS, "base").placed == ("b",)
    fleet.observe_base(bmd(cap=2))
    assert fleet.placement(NS, "base").placed == ("b",)  # `a` failed: placed nowhere


def test_a_changed_registration_wakes_only_the_adapters_under_that_name() -> None:
    fleet = fleet_with("a", "b")
    fleet.record_registrations((NS, "p0"), {})
    fleet.stale.clear()
    fleet.record_registrations((NS, "p0"), {"a": "/adapters/a/x"})
    assert list(fleet.stale) == [(NS, "a")]


def test_a_renamed_adapter_is_woken_under_its_new_served_name_only() -> None:
    fleet = fleet_with("a", "b")
    renamed = lora("a", generation=2)
    renamed["spec"]["servedName"] = "alpha"
    fleet.observe_adapter(renamed)
    fleet.record_registrations((NS, "p0"), {})
    fleet.stale.clear()
    fleet.record_registrations((NS, "p0"), {"a": "/adapters/b/x"})
    assert list(fleet.stale) == [], "nobody claims the old name any more"
    fleet.record_registrations((NS, "p0"), {"alpha": "/adapters/a/x"})
    assert list(fleet.stale) == [(NS, "a")]
    fleet.forget_adapter((NS, "a"))
    fleet.stale.clear()
    fleet.record_registrations((NS, "p0"), {})
    assert list(fleet.stale) == []


def test_the_first_look_at_a_pod_wakes_every_adapter_of_its_base() -> None:
    fleet = fleet_with("a", "b")
    fleet.stale.clear()
    fleet.record_registrations((NS, "p0"), {})
    assert set(fleet.stale) == {(NS, "a"), (NS, "b")}, "their statuses waited for this look"


def test_the_writer_takes_the_oldest_change_that_is_not_being_written() -> None:
    fleet = fleet_with("a", "b", "c")
    fleet.stale.clear()
    for name in ("b", "a", "c", "b"):
        fleet.wake((NS, name))
    assert fleet.take_stale(busy={(NS, "b")}) == (NS, "a")
    assert fleet.take_stale(busy=set()) == (NS, "b")
    assert fleet.take_stale(busy={(NS, "c")}) is None
    assert list(fleet.stale) == [(NS, "c")]


def test_a_forgotten_adapter_leaves_the_queue_and_the_index() -> None:
    fleet = fleet_with("a", "b")
    fleet.forget_adapter((NS, "a"))
    assert (NS, "a") not in fleet.stale
    assert [a.name for a in fleet.adapters_of(NS, "base")] == ["b"]


def test_an_adapter_moved_to_another_base_is_indexed_under_it() -> None:
    fleet = fleet_with("a")
    fleet.observe_base(bmd("other"))
    moved = lora("a", generation=2)
    moved["spec"]["baseModel"] = "other"
    fleet.observe_adapter(moved)
    assert [a.name for a in fleet.adapters_of(NS, "other")] == ["a"]
    assert list(fleet.adapters_of(NS, "base")) == []
    assert fleet.placement(NS, "base").placed == ()


# -- progress is coalesced, transitions are not ----------------------------------------------


def test_one_more_pod_registered_is_progress_and_the_last_one_a_transition() -> None:
    fleet = fleet_with("a", pods=3)
    version = verified(fleet, "a")
    fleet.set_state((NS, "p0"), "a", "Registered", path=version.path)
    one = status_of(fleet, "a")
    fleet.set_state((NS, "p1"), "a", "Registered", path=version.path)
    two = status_of(fleet, "a")
    fleet.set_state((NS, "p2"), "a", "Registered", path=version.path)
    three = status_of(fleet, "a")
    assert (one.ready, two.ready, three.phase) == ("1/3", "2/3", "Ready")
    assert not adapter_status.transition(one, two), "progress within Loading may wait"
    assert adapter_status.transition(two, three), "Ready may not wait"


def test_a_rejection_is_a_transition() -> None:
    fleet = fleet_with("a")
    before = status_of(fleet, "a")
    judged = fleet.judgement((NS, "a"))
    assert judged is not None
    fleet.record_failure((NS, "a"), judged, "RankTooHigh", "rank 64 > 16")
    assert adapter_status.transition(before, status_of(fleet, "a"))


# -- the base model's counts are kept, not recounted -----------------------------------------


def _everywhere_from_scratch(fleet: Fleet, adapter: str) -> bool:
    version = fleet.version((NS, adapter))
    pods = fleet.pods_of(NS, "base")
    return bool(pods) and all(serves(fleet.state(p.key, adapter), version) for p in pods)


def test_served_everywhere_stays_what_a_recount_says_through_any_change() -> None:
    """Every way a state, a version, a pod or the base can change, in a random order."""
    rng = random.Random(13)
    names = ["a", "b", "c"]
    fleet = fleet_with(*names, pods=3)
    for step in range(3000):
        name, p = rng.choice(names), f"p{rng.randrange(4)}"
        op = rng.randrange(9)
        if op == 0:
            verified(fleet, name) if fleet.version((NS, name)) is None else None
        elif op in (1, 2):
            version = fleet.version((NS, name))
            path = version.path if version and rng.random() < 0.8 else "/adapters/x/y"
            fleet.set_state((NS, p), name, "Registered", path=path)
        elif op == 3:
            fleet.set_state((NS, p), name, "Loading", "SourceUnavailable: gone", reason="x")
        elif op == 4:
            fleet.clear_state((NS, p), name)
        elif op == 5:
            fleet.observe_pod(pod(p, ready=rng.random() < 0.5))
        elif op == 6:
            gone = pod(p)
            gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            fleet.observe_pod(gone) if rng.random() < 0.5 else fleet.forget_pod((NS, p))
        elif op == 7:
            fleet.observe_base(bmd(max_lora_rank=rng.choice((16, 32))))
        else:
            fleet.observe_adapter(lora(name, path=f"/src/{rng.randrange(3)}", generation=step))
        for n in names:
            assert fleet.served_everywhere(NS, "base", n) == _everywhere_from_scratch(fleet, n), (
                f"step {step}, op {op}, adapter {n}"
            )
        assert fleet.with_reason((NS, p)) == sorted(
            (a, st) for a, st in fleet.pod_states.get((NS, p), {}).items() if st.reason
        )


def pod_on_rank(name: str, rank: int) -> dict[str, Any]:
    obj = pod(name)
    obj["spec"] = {"containers": [{"name": "vllm", "args": ["--max-lora-rank", str(rank)]}]}
    return obj


def test_a_refusal_by_a_pod_still_on_the_old_rank_is_no_verdict_on_the_new_one() -> None:
    fleet = Fleet()
    fleet.observe_base(bmd(max_lora_rank=16))
    fleet.observe_pod(pod_on_rank("old", 16))
    fleet.observe_adapter(lora("big"))
    key = (NS, "big")
    fleet.observe_base(bmd(max_lora_rank=64))  # the rollout has not replaced "old" yet
    judged = fleet.judgement(key)
    assert judged is not None and judged.max_lora_rank == 64
    old = fleet.pods[(NS, "old")]
    assert old.max_lora_rank == 16
    fleet.record_failure(key, fleet.judged_on(old, judged), "RankExceedsMax", "rank 64 > 16")
    assert fleet.failure(key) is None, "a pod on the old flags judged the new spec"
    assert fleet.placement(NS, "base").placed == ("big",)
    fleet.observe_pod(pod_on_rank("new", 64))
    new = fleet.pods[(NS, "new")]
    fleet.record_failure(key, fleet.judged_on(new, judged), "DoRANotSupported", "DoRA")
    assert fleet.failure(key) is not None, "a pod on the spec's flags gives a verdict"


def test_a_pod_waiting_for_the_rollout_is_rolling_out_not_degraded() -> None:
    fleet = fleet_with("a")
    version = verified(fleet, "a")
    fleet.set_state((NS, "p0"), "a", "Registered", path=version.path)
    fleet.set_state((NS, "p1"), "a", "Loading", "runs --max-lora-rank 8", None, "WaitsForRollout")
    status = status_of(fleet, "a")
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (status.phase, ready.reason) == ("Loading", "RollingOut")
    assert "being replaced by the base model's rollout" in (status.message or "")


def same_second(name: str, served: str) -> dict[str, Any]:
    obj = lora(name, created="2026-03-01T00:00:00Z")
    obj["spec"]["servedName"] = served
    return obj


def test_a_same_second_tie_goes_to_the_claimant_already_in_place_and_stays() -> None:
    fleet = fleet_with(pods=2)
    fleet.observe_adapter(same_second("zeta", "shared"))
    assert fleet.placement(NS, "base").placed == ("zeta",)
    fleet.set_state((NS, "p0"), "zeta", "Loading")  # the first pod began loading it
    fleet.observe_adapter(same_second("alpha", "shared"))  # first by name, but too late
    assert fleet.placement(NS, "base").placed == ("zeta",)
    path = "/adapters/zeta/" + "c" * 64
    fleet.record_registrations((NS, "p0"), {"shared": path})
    fleet.set_state((NS, "p0"), "zeta", "Registered", path=path)
    loser = status_of(fleet, "alpha")
    assert "created in the same second and registered first" in (loser.message or "")
    entries = {p.name: p for p in loser.pods or []}
    assert entries["p0"].state == "NotAttempted"
    assert "serves LoRAAdapter 'zeta' (sha256:cccccccccccc) under 'shared'" in (
        entries["p0"].last_error or ""
    )
    assert fleet.name_losers(NS, "base") == ["alpha"]
    fleet.forget_pod((NS, "p0"))  # its replacement has nothing in place: the name stays
    fleet.clear_state((NS, "p1"), "zeta")
    assert fleet.placement(NS, "base").placed == ("zeta",)


def test_a_same_second_tie_with_nothing_in_place_goes_by_name() -> None:
    fleet = fleet_with(pods=1)
    fleet.observe_adapter(same_second("zeta", "shared"))
    fleet.observe_adapter(same_second("alpha", "shared"))
    assert fleet.placement(NS, "base").placed == ("alpha",)
    assert "created in the same second and first by name" in (
        status_of(fleet, "zeta").message or ""
    )


def test_a_failed_adapter_says_why_and_names_an_earlier_version_only_when_one_serves() -> None:
    fleet = fleet_with("a")
    judged = fleet.judgement((NS, "a"))
    assert judged is not None
    fleet.record_failure((NS, "a"), judged, "RankExceedsMax", "the adapter's rank 64 is too big")
    fresh = status_of(fleet, "a")
    assert fresh.message == "the adapter's rank 64 is too big"
    events = adapter_status.events(LoRAAdapterStatus(), fresh)
    assert [e.message for e in events] == ["the adapter's rank 64 is too big"]
    fleet.set_state((NS, "p0"), "a", "Failed", "refused", path="/adapters/a/" + "b" * 64)
    kept = status_of(fleet, "a")
    assert (kept.message or "").startswith("the adapter's rank 64 is too big; ")
    assert "version registered before keeps serving" in (kept.message or "")
    assert "sha256:bbbbbbbbbbbb on 1 pod(s)" in (kept.message or "")

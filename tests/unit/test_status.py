"""Status computed from what pods and the fleet really show (pure functions)."""

from __future__ import annotations

from typing import Any

from loraplane import adapter_status, base_model_status, conditions
from loraplane.base_model_status import Observed
from loraplane.conditions import Cond
from loraplane.fleet import AdapterView, BaseView, Failure, Fleet, PodView, Version
from loraplane.pod_health import pod_problems
from loraplane.subset import is_subset
from loraplane.sync import store_versions


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def deployment(replicas: int, ready: int, updated: int, generation: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "status": {
            "observedGeneration": generation,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
        },
    }


def by_type(conds: list[Cond]) -> dict[str, Cond]:
    return {c.type: c for c in conds}


def test_crash_loop_is_degraded_with_the_exit_and_restarts() -> None:
    crashing = pod(
        "p1",
        containerStatuses=[
            {
                "name": "vllm",
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }
        ],
    )
    conds = by_type(base_model_status.conditions(Observed(1, deployment(1, 0, 1), [crashing])))
    assert conds["Degraded"].status is True and conds["Degraded"].reason == "CrashLoopBackOff"
    assert "last exit code 1" in conds["Degraded"].message
    assert "4 restarts" in conds["Degraded"].message
    assert conds["Available"].status is False and "back-off" in conds["Available"].message


def test_unschedulable_gpu_request_is_degraded_with_the_scheduler_message() -> None:
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    pending = pod(
        "p1",
        phase="Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}
        ],
    )
    degraded = by_type(base_model_status.conditions(Observed(1, deployment(1, 0, 1), [pending])))[
        "Degraded"
    ]
    assert degraded.reason == "Unschedulable" and msg in degraded.message


def test_missing_secret_is_degraded() -> None:
    waiting = pod(
        "p1",
        containerStatuses=[
            {
                "name": "vllm",
                "state": {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": 'secret "vllm-key" not found',
                    }
                },
            }
        ],
    )
    problems = pod_problems(waiting)
    assert problems[0].reason == "CreateContainerConfigError"
    assert 'secret "vllm-key" not found' in problems[0].message


def test_rollout_states() -> None:
    done = by_type(base_model_status.conditions(Observed(2, deployment(2, 2, 2), [])))
    assert done["Progressing"].status is False and done["Progressing"].reason == "RolloutComplete"
    assert done["Available"].status is True and done["Degraded"].status is False
    rolling = by_type(base_model_status.conditions(Observed(2, deployment(3, 2, 1), [])))
    assert rolling["Progressing"].status is True and rolling["Progressing"].reason == "RollingOut"
    zero = by_type(base_model_status.conditions(Observed(0, deployment(0, 0, 0), [])))
    assert zero["Available"].reason == "ScaledToZero"


def test_spec_error_keeps_availability_and_stops_progress() -> None:
    conds = by_type(
        base_model_status.conditions(
            Observed(2, deployment(2, 2, 2), [], ("InvalidEngineArgs", "extraArgs ..."))
        )
    )
    assert conds["Degraded"].reason == "InvalidEngineArgs"
    assert conds["Available"].status is True
    assert conds["Progressing"].reason == "SpecRejected"


def test_transition_time_moves_only_when_status_flips() -> None:
    first = conditions.merge(None, [Cond("Ready", True, "A", "x")], 1, now="T1")
    same = conditions.merge(first, [Cond("Ready", True, "B", "y")], 2, now="T2")
    flipped = conditions.merge(same, [Cond("Ready", False, "C", "z")], 3, now="T3")
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["reason"] == "B"
    assert flipped[0]["lastTransitionTime"] == "T3"
    unknown = conditions.merge(None, [Cond("Validated", None, "Pending", "")], 1, now="T")
    assert unknown[0]["status"] == "Unknown"


def test_subset_ignores_server_defaults_but_sees_edits() -> None:
    desired = {"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "image": "x"}]}}}
    live = {
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {"containers": [{"name": "a", "image": "x", "tty": False}]},
        }
    }
    assert is_subset(desired, live)
    live["spec"]["template"]["containers"][0]["image"] = "y"  # type: ignore[index]
    assert not is_subset(desired, live)
    assert is_subset({"port": 8000}, {"port": "8000"})
    # The API server drops empty maps and lists; that is no drift.
    assert is_subset(
        {"metadata": {"annotations": {}, "labels": {"a": "b"}}},
        {"metadata": {"labels": {"a": "b"}}},
    )


def test_store_versions_keeps_only_paths_in_the_store() -> None:
    assert store_versions(["/adapters/a/abc", "/elsewhere/b/def", None, "/adapters/c"]) == {
        "a": "abc"
    }


def fleet_with(n_pods: int, states: dict[str, str], cap: int | None = None) -> Fleet:
    fleet = Fleet()
    fleet.bases[("ns", "base")] = BaseView("ns", "base", 16, cap, None)
    for i in range(n_pods):
        fleet.pods[("ns", f"p{i}")] = PodView(
            "ns", f"p{i}", "base", f"10.0.0.{i}", "c", True, True, False, True
        )
    for i, (name, state) in enumerate(states.items()):
        fleet.adapters[("ns", name)] = AdapterView(
            "ns", name, "base", name, {"path": "/x"}, -i, f"2026-01-0{i + 1}T00:00:00Z", 1
        )
        fleet.versions[("ns", name)] = Version(1, f"/adapters/{name}/d", {"rank": 8}, [])
        for p in range(n_pods):
            fleet.set_state(("ns", f"p{p}"), name, state)
    return fleet


def test_adapter_ready_loading_and_capacity() -> None:
    fleet = fleet_with(2, {"a": "Registered", "b": "Loading", "c": "Registered"}, cap=2)
    a = adapter_status.report(fleet, fleet.adapters[("ns", "a")], 32)
    assert (a.phase, a.registered, a.desired) == ("Ready", 2, 2)
    b = adapter_status.report(fleet, fleet.adapters[("ns", "b")], 32)
    assert b.phase == "Loading"
    c = adapter_status.report(fleet, fleet.adapters[("ns", "c")], 32)
    assert c.phase == "Pending"
    assert c.conditions[1].reason == "CapacityExceeded" and "maxAdaptersPerReplica 2" in c.message


def test_failed_adapter_reports_its_reason_and_frees_its_place() -> None:
    fleet = fleet_with(1, {"a": "Registered", "b": "Registered", "c": "Registered"}, cap=2)
    fleet.failures[("ns", "a")] = Failure(1, "RankExceedsMax", "rank 64 exceeds maxLoraRank 16")
    a = adapter_status.report(fleet, fleet.adapters[("ns", "a")], 32)
    assert a.phase == "Failed" and a.conditions[0].reason == "RankExceedsMax"
    assert fleet.placement("ns", "base").placed == ("b", "c")
    # A new generation (the user fixed the spec) clears the failure.
    fleet.adapters[("ns", "a")].generation = 2
    assert fleet.failure(("ns", "a")) is None

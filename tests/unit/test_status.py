"""Status computed from what pods and the fleet really show (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loraplane.pod_health import pod_problems
from loraplane.status import base_model as base_model_status
from loraplane.status import conditions
from loraplane.status.base_model import Observed
from loraplane.status.conditions import Cond
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
    conds = by_type(
        base_model_status.conditions(Observed(1, deployment(1, 0, 1), pod_problems(crashing)))
    )
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
    degraded = by_type(
        base_model_status.conditions(Observed(1, deployment(1, 0, 1), pod_problems(pending)))
    )["Degraded"]
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
    t1, t2, t3 = (datetime(2026, 1, 1, 0, 0, s, tzinfo=UTC) for s in (1, 2, 3))
    first = conditions.merge([], [Cond("Ready", True, "A", "x")], 1, stamp=t1)
    same = conditions.merge(first, [Cond("Ready", True, "B", "y")], 2, stamp=t2)
    flipped = conditions.merge(same, [Cond("Ready", False, "C", "z")], 3, stamp=t3)
    assert same[0].last_transition_time == t1 and same[0].reason == "B"
    assert flipped[0].last_transition_time == t3
    unknown = conditions.merge([], [Cond("Validated", None, "Pending", "")], 1, stamp=t1)
    assert unknown[0].status == "Unknown"
    assert first[0].to_k8s()["lastTransitionTime"] == "2026-01-01T00:00:01Z"


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


def _routed(deployment: dict[str, Any] | None, error: tuple[str, str] | None = None) -> Any:
    from loraplane.api import RouterSpec
    from loraplane.children import RouterOutcome

    return RouterOutcome(RouterSpec.from_k8s({"replicas": 2}), deployment, error)


def test_routed_condition_follows_the_router_pods() -> None:
    none_ready = _routed({"metadata": {}, "status": {"readyReplicas": 0}})
    one_ready = _routed({"metadata": {}, "status": {"readyReplicas": 1}})
    assert base_model_status.routed_condition(None) is None  # no spec.router, no condition
    assert base_model_status.routed_condition(_routed(None)) == Cond(
        "Routed", False, "RouterCreating", "creating the router"
    )
    unready = base_model_status.routed_condition(none_ready)
    assert unready is not None and unready.reason == "RouterNotReady"
    cond = base_model_status.routed_condition(one_ready)
    assert cond is not None and cond.status is True and cond.message.startswith("1/2 router pods")
    missing = _routed(None, ("InferencePoolNotInstalled", "install the CRD"))
    assert base_model_status.routed_condition(missing) == Cond(
        "Routed", False, "InferencePoolNotInstalled", "install the CRD"
    )
    owner = {"metadata": {"name": "m", "namespace": "ns"}}
    status = base_model_status.router_status(one_ready, owner)
    assert status is not None
    assert (status.mode, status.endpoint, status.ready) == (
        "Envoy",
        "http://m-router.ns.svc:8000/v1",
        "1/2",
    )


def test_routed_events_say_when_routing_starts_and_stops() -> None:
    def cond(status: str, reason: str) -> Any:
        from loraplane.api import Condition

        return Condition(type="Routed", status=status, reason=reason, message=reason)

    start = base_model_status.events([], [cond("True", "RouterReady")])
    assert [(e.type, e.reason) for e in start] == [("Normal", "Routed")]
    lost = base_model_status.events(
        [cond("True", "RouterReady")], [cond("False", "RouterNotReady")]
    )
    assert [(e.type, e.reason) for e in lost] == [("Warning", "RouterNotReady")]
    assert base_model_status.events([], [cond("False", "RouterCreating")]) == []

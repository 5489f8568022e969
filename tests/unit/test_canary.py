"""Canaries between adapters: the split each adapter reports and the rewrite the router gets."""

from __future__ import annotations

from typing import Any

from loraplane import canary
from loraplane.builders import router
from loraplane.fleet import adapter_view


def view(name: str, canary_spec: dict[str, Any] | None = None, **spec: Any) -> Any:
    body: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": name, "generation": 1},
        "spec": {"baseModel": "llama", "source": {"path": f"/a/{name}"}, **spec},
    }
    if canary_spec is not None:
        body["spec"]["canary"] = canary_spec
    return adapter_view(body)


def test_a_ready_canary_splits_by_weight_and_both_adapters_say_so() -> None:
    adapters = [view("sql", {"adapter": "sql-v2", "weight": 10}), view("sql-v2"), view("chat")]
    splits = canary.plan(adapters, lambda name: True, routed=True)
    assert set(splits) == {"sql", "sql-v2"}
    assert splits["sql"] == splits["sql-v2"]
    split = splits["sql"]
    assert split.active and split.reason == "Split"
    assert [(s.adapter, s.weight) for s in split.shares] == [("sql", 90), ("sql-v2", 10)]
    assert canary.rewrite_rules(splits) == [("sql", [("sql", 90), ("sql-v2", 10)])]


def test_served_names_are_what_the_router_rewrites_to() -> None:
    adapters = [
        view("sql", {"adapter": "sql-v2", "weight": 100}, servedName="sql-expert"),
        view("sql-v2", servedName="sql-expert-2"),
    ]
    rules = canary.rewrite_rules(canary.plan(adapters, lambda name: True, routed=True))
    # A weight of 0 is left out: the Inference Extension takes weights from 1.
    assert rules == [("sql-expert", [("sql-expert-2", 100)])]


def test_no_traffic_for_a_canary_that_is_not_ready() -> None:
    adapters = [view("sql", {"adapter": "sql-v2", "weight": 10}), view("sql-v2")]
    splits = canary.plan(adapters, lambda name: name != "sql-v2", routed=True)
    assert not splits["sql"].active and splits["sql"].reason == "CanaryNotReady"
    assert [s.weight for s in splits["sql"].shares] == [100, 0]
    assert canary.rewrite_rules(splits) == []


def test_without_a_router_or_a_target_nothing_is_split() -> None:
    adapters = [view("sql", {"adapter": "sql-v2", "weight": 10}), view("sql-v2")]
    unrouted = canary.plan(adapters, lambda name: True, routed=False)
    assert unrouted["sql"].reason == "NoRouter" and not canary.rewrite_rules(unrouted)
    alone = canary.plan(adapters[:1], lambda name: True, routed=True)
    assert alone["sql"].reason == "CanaryNotFound"
    assert [s.adapter for s in alone["sql"].shares] == ["sql"]


def test_a_missing_rewrite_api_unsplits_with_its_reason() -> None:
    adapters = [view("sql", {"adapter": "sql-v2", "weight": 30}), view("sql-v2")]
    split = canary.plan(adapters, lambda name: True, routed=True)["sql"]
    off = canary.unsplit(split, "InferenceModelRewriteNotInstalled", "no API")
    assert not off.active and [s.weight for s in off.shares] == [100, 0]


def test_rewrite_golden_shape() -> None:
    owner = {
        "apiVersion": "loraplane.dev/v1alpha1",
        "kind": "BaseModelDeployment",
        "metadata": {"name": "llama", "namespace": "ns", "uid": "u"},
    }
    obj = router.model_rewrite(owner, [("sql", [("sql", 90), ("sql-v2", 10)])])
    assert obj["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
    assert obj["spec"] == {
        "poolRef": {
            "group": "inference.networking.k8s.io",
            "kind": "InferencePool",
            "name": "llama",
        },
        "rules": [
            {
                "matches": [{"model": {"type": "Exact", "value": "sql"}}],
                "targets": [
                    {"modelRewrite": "sql", "weight": 90},
                    {"modelRewrite": "sql-v2", "weight": 10},
                ],
            }
        ],
    }

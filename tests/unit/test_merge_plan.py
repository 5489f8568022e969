"""Which merged version a base model's pods serve (merge/plan.py), from its pods as the merge
book reads them (merge/book.py), and what the status says (status/merge.py). Pure."""

from __future__ import annotations

from typing import Any

from loraplane.api import BaseModelDeploymentSpec
from loraplane.builders import naming
from loraplane.fleet import Fleet
from loraplane.merge.book import MergeBook, pod_state
from loraplane.merge.inputs import ANNOTATION, MergeInputs
from loraplane.merge.plan import plan
from loraplane.status import merge as merge_status

BASE = ("ns", "merged")
OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def inputs(digest: str) -> MergeInputs:
    return MergeInputs(adapter="merged", source={"path": "/a"}, digest=digest, served_name="ad")


def spec(digest: str) -> BaseModelDeploymentSpec:
    merge = {"source": {"path": "/a"}, "digest": digest, "servedName": "ad"}
    return BaseModelDeploymentSpec.from_k8s({"model": {"source": {"path": "/m"}, "merge": merge}})


def pod(name: str, digest: str, init: dict[str, Any], ready: bool = False) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "labels": {naming.LABEL_BASE_MODEL: "merged"},
            "annotations": {ANNOTATION: inputs(digest).canonical()},
        },
        "status": {
            "initContainerStatuses": [{"name": "merge", **init}],
            "containerStatuses": [{"name": "vllm", "ready": ready}],
        },
    }


DONE = {"state": {"terminated": {"exitCode": 0}}}
RUNNING = {"state": {"running": {}}}
FAILED = {"state": {"terminated": {"exitCode": 1, "message": "SourceChanged: gone"}}}
LOOPING = {
    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
}


def test_pod_states_as_the_kubelet_reports_them() -> None:
    assert pod_state(pod("p", OLD, RUNNING)) == ("Merging", None)
    assert pod_state(pod("p", OLD, DONE)) == ("Starting", None)
    assert pod_state(pod("p", OLD, DONE, ready=True)) == ("Serving", None)
    assert pod_state(pod("p", OLD, FAILED)) == ("Failed", ("SourceChanged", "gone"))
    assert pod_state(pod("p", OLD, LOOPING)) == ("Failed", ("OOMKilled", "exit code 137"))


def test_a_new_version_is_rolled_to() -> None:
    book = MergeBook()
    book.observe(pod("old", OLD, DONE, ready=True))
    chosen = plan(Fleet(), book, BASE, 1, spec(NEW), inputs(OLD))
    assert chosen.inputs == inputs(NEW) and chosen.failed is None


def test_a_failed_merge_puts_the_serving_version_back_until_the_spec_changes() -> None:
    book = MergeBook()
    book.observe(pod("old", OLD, DONE, ready=True))
    book.observe(pod("new", NEW, FAILED))
    chosen = plan(Fleet(), book, BASE, 1, spec(NEW), inputs(NEW))
    assert chosen.inputs == inputs(OLD) and chosen.wanted == inputs(NEW)
    assert chosen.failed is not None and chosen.failed.reason == "SourceChanged"
    pods = book.pods_of(*BASE)
    cond = merge_status.condition(chosen, pods, 1)
    assert cond is not None and (cond.status, cond.reason) == (False, "MergeFailed")
    assert "keeps serving" in cond.message
    # The failed pod is gone; the failure is still remembered for this generation...
    book.observe(pod("new", NEW, FAILED), deleted=True)
    assert plan(Fleet(), book, BASE, 1, spec(NEW), inputs(OLD)).inputs == inputs(OLD)
    # ... and a new generation tries again.
    assert plan(Fleet(), book, BASE, 2, spec(NEW), inputs(OLD)).inputs == inputs(NEW)


def test_no_good_version_leaves_nothing_to_serve() -> None:
    book = MergeBook()
    book.observe(pod("new", NEW, FAILED))
    assert plan(Fleet(), book, BASE, 1, spec(NEW), inputs(NEW)).inputs is None


def test_a_deleted_adapter_keeps_the_last_version() -> None:
    named = BaseModelDeploymentSpec.from_k8s(
        {"model": {"source": {"path": "/m"}, "merge": {"adapter": "ad"}}}
    )
    book = MergeBook()
    book.observe(pod("old", OLD, DONE, ready=True))
    chosen = plan(Fleet(), book, BASE, 1, named, inputs(OLD))
    assert chosen.inputs == inputs(OLD) and chosen.why is not None
    assert chosen.why[0] == "AdapterDeleted"
    cond = merge_status.condition(chosen, book.pods_of(*BASE), 1)
    assert cond is not None and cond.reason == "AdapterDeleted" and "keeps serving" in cond.message

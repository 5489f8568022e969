"""The CRDs on the real API server: bad objects are refused at create time with a usable message."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Cluster
from tests.integration.manifests import lora_adapter, tiny_base_model
from tests.unit.test_api_validation import BAD_OBJECTS, Bad

GOOD_BMD = tiny_base_model("good", Path("/var/lib/loraplane"))


def bmd_with(**spec_changes: Any) -> dict[str, Any]:
    obj = copy.deepcopy(GOOD_BMD)
    for dotted, value in spec_changes.items():
        node = obj["spec"]
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return obj


@pytest.mark.parametrize(
    ("manifest", "needle"),
    [
        (
            bmd_with(lora__maxLoras=4, lora__maxCpuLoras=2),
            "maxCpuLoras must be greater than or equal to maxLoras",
        ),
        (bmd_with(lora__maxLoraRank=7), "maxLoraRank must be one of"),
        (bmd_with(model__source={"path": "/m", "huggingface": {"repo": "a/b"}}), "exactly one"),
        (bmd_with(model__source={}), "exactly one"),
        (bmd_with(model__servedName="bad name!"), "servedName must be a valid model name"),
        (bmd_with(engine__tensorParallelSize=3), "power of two"),
        (bmd_with(lora__maxLoras=0), "spec.lora.maxLoras"),
    ],
    ids=[
        "cpu-below-gpu-slots",
        "rank-7",
        "two-sources",
        "no-source",
        "served-name",
        "tp-3",
        "max-loras-0",
    ],
)
def test_bad_base_model_is_refused(
    crds: Cluster, namespace: str, manifest: dict[str, Any], needle: str
) -> None:
    proc = crds.try_create(manifest, namespace)
    assert proc.returncode != 0, "the API server accepted a bad object"
    assert needle in proc.stderr, proc.stderr


def test_good_base_model_gets_defaults(crds: Cluster, namespace: str) -> None:
    obj = bmd_with(lora={})
    assert crds.try_create(obj, namespace).returncode == 0
    got = crds.get("bmd", "good", namespace)
    assert got is not None
    lora = got["spec"]["lora"]
    assert lora["maxLoras"] == 1 and lora["maxLoraRank"] == 16
    assert got["spec"]["engine"]["image"].startswith("vllm/vllm-openai")
    # kubectl explain shows the models' descriptions.
    explain = crds.kubectl("explain", "bmd.spec.lora.maxCpuLoras").stdout
    assert "--max-cpu-loras" in explain


def test_adapter_rules(crds: Cluster, namespace: str) -> None:
    bad_name = lora_adapter("a1", "base", "/adapters/x")
    bad_name["spec"]["servedName"] = "no spaces please"
    proc = crds.try_create(bad_name, namespace)
    assert proc.returncode != 0 and "servedName" in proc.stderr
    relative = lora_adapter("a2", "base", "relative/path")
    proc = crds.try_create(relative, namespace)
    assert proc.returncode != 0 and "absolute" in proc.stderr
    good = lora_adapter("a3", "base", "/adapters/x")
    assert crds.try_create(good, namespace).returncode == 0
    proc = crds.kubectl(
        "patch",
        "lora",
        "a3",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"baseModel":"other"}}',
        check=False,
    )
    assert proc.returncode != 0 and "immutable" in proc.stderr
    assert "lora" in crds.kubectl("get", "loraplane", "-n", namespace).stdout.lower()


@pytest.mark.parametrize("case", BAD_OBJECTS, ids=lambda c: c.id)
def test_every_unit_bad_object_is_refused_by_the_server(
    crds: Cluster, namespace: str, case: Bad
) -> None:
    """The same bad objects the pydantic models refuse, refused by the real API server."""
    proc = crds.try_create(case.body, namespace)
    assert proc.returncode != 0, "the API server accepted a bad object"
    assert case.expected_from_server in proc.stderr, proc.stderr

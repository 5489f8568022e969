"""The resource and verb a write is counted under, as the API server's own metrics name them."""

from __future__ import annotations

import pytest

from loraplane.kube import _resource, _verb, collection_path


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        (collection_path("apps/v1", "Deployment", "ns") + "/base", "deployments"),
        (collection_path("v1", "Service", "ns"), "services"),
        (
            collection_path("loraplane.dev/v1alpha1", "LoRAAdapter", "ns") + "/a/status",
            "loraadapters/status",
        ),
        (collection_path("v1", "Pod", None), "pods"),
    ],
)
def test_resource_of_a_path(path: str, resource: str) -> None:
    assert _resource(path) == resource


def test_server_side_apply_is_counted_apart_from_other_patches() -> None:
    assert _verb("PATCH", "application/apply-patch+yaml") == "apply"
    assert _verb("PATCH", "application/merge-patch+json") == "patch"
    assert _verb("PUT", "application/json") == "update"

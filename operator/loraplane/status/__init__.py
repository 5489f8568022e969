"""Each kind's whole status, computed from the fleet as the API's typed status model.

One module per kind: `compute` (the status), `changed` (is it worth a write), `event` (the one
Event a transition deserves). Conditions are recomputed whole on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from loraplane.api.common import StatusModel


@dataclass(frozen=True)
class Event:
    """The one Event a status transition deserves."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def whole(status: StatusModel) -> dict[str, Any]:
    """The status as a merge patch that replaces it whole: a field now empty is deleted.

    kopf patches status with a JSON merge patch, which keeps every key it does not name; left
    out, a field of an earlier state (the previous version's summary, say) would outlive it.
    """
    body = status.to_k8s()
    for name, info in type(status).model_fields.items():
        body.setdefault(info.alias or name, None)
    return body

"""Each kind's whole status, computed from the fleet as the API's typed status model.

One module per kind: `compute` (the status), `changed` (is it worth a write), `event` (the one
Event a transition deserves). Conditions are recomputed whole on every run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from loraplane.api.common import StatusModel

S = TypeVar("S", bound=StatusModel)


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


@dataclass(frozen=True)
class Kept:
    """A status held in memory as its canonical JSON, for each of thousands of adapters.

    A typed status with ten pods takes about 25 KB of objects; its JSON about 3 KB. The text is
    what a write is compared against; the model is parsed again only when a write needs it.
    """

    text: str

    @classmethod
    def of(cls, status: StatusModel) -> Kept:
        return cls(canonical(status.to_k8s()))

    def model(self, kind: type[S]) -> S:
        return kind.from_k8s(json.loads(self.text))


def canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))

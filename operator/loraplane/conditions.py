"""Kubernetes-style status conditions, recomputed whole on every reconcile."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    previous: Sequence[Mapping[str, Any]] | None,
    current: Iterable[Cond],
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """The new condition list; lastTransitionTime moves only when a status flips."""
    old = {c.get("type"): c for c in previous or []}
    stamp = now or now_rfc3339()
    out: list[dict[str, Any]] = []
    for cond in current:
        status = {True: "True", False: "False", None: "Unknown"}[cond.status]
        before = old.get(cond.type)
        since = stamp
        if before is not None and before.get("status") == status:
            since = before.get("lastTransitionTime") or stamp
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": since,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def same_ignoring_time(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    def strip(conds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conds]

    return strip(a) == strip(b)

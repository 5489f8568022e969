"""Kubernetes-style status conditions, recomputed whole on every run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from loraplane.api import Condition, ConditionStatus


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str


def now() -> datetime:
    # Kubernetes stores second precision: a finer stamp would differ from what it reads back.
    return datetime.now(UTC).replace(microsecond=0)


def now_rfc3339() -> str:
    return now().strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(value: bool | None) -> ConditionStatus:
    return "Unknown" if value is None else "True" if value else "False"


def merge(
    previous: Sequence[Condition],
    current: Iterable[Cond],
    generation: int | None,
    stamp: datetime | None = None,
) -> list[Condition]:
    """The new condition list; lastTransitionTime moves only when a status flips."""
    old = {c.type: c for c in previous}
    at = stamp or now()
    out: list[Condition] = []
    for cond in current:
        status = _status(cond.status)
        before = old.get(cond.type)
        since = at
        if before is not None and before.status == status and before.last_transition_time:
            since = before.last_transition_time
        out.append(
            Condition(
                type=cond.type,
                status=status,
                reason=cond.reason,
                message=cond.message,
                last_transition_time=since,
                observed_generation=generation,
            )
        )
    return out


def find(conditions: Sequence[Condition], ctype: str) -> Condition | None:
    return next((c for c in conditions if c.type == ctype), None)

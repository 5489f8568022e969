"""Which adapters a base model's pods serve, under the operator's per-pod cap. Pure.

Every pod of a base model serves the same set (clients may land on any pod behind the Service),
so placement is per base model: under `maxAdaptersPerReplica`, higher priority wins, then the
older adapter, then the name (for a stable answer).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str  # the LoRAAdapter's metadata.name
    priority: int
    created: str  # RFC 3339 creationTimestamp: sorts as time


@dataclass(frozen=True)
class Placement:
    placed: tuple[str, ...]
    displaced: tuple[str, ...]


def rank_order(c: Candidate) -> tuple[int, str, str]:
    return (-c.priority, c.created, c.name)


def place(candidates: Iterable[Candidate], cap: int | None) -> Placement:
    ordered = sorted(candidates, key=rank_order)
    keep = ordered if cap is None else ordered[:cap]
    drop = [] if cap is None else ordered[cap:]
    return Placement(tuple(c.name for c in keep), tuple(c.name for c in drop))

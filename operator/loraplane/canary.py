"""Canaries between adapters (spec.canary): which share of a served name's requests goes where,
judged per base model from the fleet's picture. Pure.

A canary is in force when its base model has a router and the adapter it names exists on the same
base model, is not being deleted, and is served by every pod (Ready): only then does the router
rewrite a share of the requests to it. Otherwise every request stays with the adapter clients
asked for, and both adapters say why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from loraplane.api import TrafficShare
from loraplane.fleet import AdapterView


@dataclass(frozen=True)
class Split:
    """What one adapter's status says of a canary it takes part in."""

    shares: tuple[TrafficShare, ...]
    active: bool
    reason: str
    message: str


def _shares(
    source: AdapterView, target: AdapterView | None, weight: int
) -> tuple[TrafficShare, ...]:
    out = [TrafficShare(adapter=source.name, served_name=source.served_name, weight=100 - weight)]
    if target is not None:
        out.append(TrafficShare(adapter=target.name, served_name=target.served_name, weight=weight))
    return tuple(out)


def plan(
    adapters: Iterable[AdapterView],
    ready: Callable[[str], bool],
    routed: bool,
) -> dict[str, Split]:
    """The split of every adapter of one base model that has a canary or is one, by name.

    `ready(name)`: every pod serves that adapter's version.
    """
    by_name = {a.name: a for a in adapters}
    out: dict[str, Split] = {}
    for source in sorted(by_name.values(), key=lambda a: a.name):
        if source.canary is None or source.deleting:
            continue
        name, weight = source.canary
        target = by_name.get(name)
        if target is None or target.deleting:
            split = Split(
                _shares(source, None, 0),
                False,
                "CanaryNotFound",
                f"the canary {name!r} is not a LoRAAdapter of base model {source.base_model!r} "
                "in this namespace: every request stays here",
            )
        elif not routed:
            split = Split(
                _shares(source, target, 0),
                False,
                "NoRouter",
                f"base model {source.base_model!r} has no router (spec.router): requests are not "
                f"split with {name!r}",
            )
        elif not ready(name):
            split = Split(
                _shares(source, target, 0),
                False,
                "CanaryNotReady",
                f"{name!r} gets {weight}% of the requests for {source.served_name!r} once it is "
                "Ready; until then every request stays here",
            )
        else:
            split = Split(
                _shares(source, target, weight),
                True,
                "Split",
                f"{100 - weight}% of the requests for {source.served_name!r} stay with "
                f"{source.name!r}, {weight}% go to {name!r}",
            )
        out[source.name] = split
        if target is not None and target.name not in out:
            out[target.name] = split
    return out


def unsplit(split: Split, reason: str, message: str) -> Split:
    """A split the router cannot carry: every request stays with the adapter asked for."""
    if not split.active:
        return split
    first = split.shares[0]
    rest = (s.model_copy(update={"weight": 0}) for s in split.shares[1:])
    shares = (first.model_copy(update={"weight": 100}), *rest)
    return Split(shares, False, reason, message)


def rewrite_rules(splits: Mapping[str, Split]) -> list[tuple[str, list[tuple[str, int]]]]:
    """(served name, [(rewritten name, weight)]) of each split in force; a weight of 0 is left
    out (the Inference Extension takes weights from 1)."""
    rules: dict[str, list[tuple[str, int]]] = {}
    for split in splits.values():
        if not split.active:
            continue
        source = split.shares[0].served_name
        rules[source] = [(s.served_name, s.weight) for s in split.shares if s.weight > 0]
    return sorted(rules.items())

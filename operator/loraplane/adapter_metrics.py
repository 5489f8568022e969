"""Counters and histograms labelled by adapter, held as plain numbers per base model.

prometheus_client keeps a child object per label set, with a lock and a value object per
number: two histograms and a counter per adapter took 73 MB for 10,000 adapters, and its
collect() renders a family's samples for all adapters at once (120,000 for one histogram).
These hold a float per counter and an array of bucket counts per histogram, indexed by base
model then adapter, so an adapter's series go in one step and a scrape collects one base
model's part of a family at a time (the endpoint, `metrics_http`, joins the parts).

The operator observes them from its event loop; the /metrics thread reads them. A read takes a
copy of one base model's entries first (a C-level copy that the GIL keeps whole).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

Part = tuple[str, str]  # (namespace, base model)
Rest = tuple[str, ...]  # the values of the labels after the adapter's
V = TypeVar("V")


class AdapterFamily(Collector, Generic[V]):
    """A family whose first labels are (namespace, base_model, adapter)."""

    type = ""

    def __init__(
        self,
        name: str,
        help_: str,
        labels: tuple[str, ...],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name, self.help, self.label_names = name, help_, labels
        # base model -> adapter -> rest of the labels -> value
        self._parts: dict[Part, dict[str, dict[Rest, V]]] = {}
        registry.register(self)

    def _entry(self, values: tuple[str, ...]) -> dict[Rest, V]:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name}: {len(values)} label values for {self.label_names}")
        namespace, base, adapter = values[:3]
        return self._parts.setdefault((namespace, base), {}).setdefault(adapter, {})

    def forget(self, namespace: str, adapter: str, base_model: str | None = None) -> None:
        """Drop the adapter's series: under `base_model`, or under every base model."""
        for (ns, base), part in list(self._parts.items()):
            if ns == namespace and base_model in (None, base):
                part.pop(adapter, None)
                if not part:
                    self._parts.pop((ns, base), None)

    def _samples(self) -> Iterator[list[tuple[list[str], V]]]:
        """Each base model's series in turn: their label values and values."""
        for (namespace, base), part in sorted(self._parts.items()):
            yield [
                ([namespace, base, adapter, *rest], value)
                for adapter, entry in list(part.items())
                for rest, value in list(entry.items())
            ]

    def describe(self) -> Iterator[Metric]:
        return iter(())


class AdapterCounter(AdapterFamily[float]):
    type = "counter"

    def labels(self, *values: str) -> _Count:
        return _Count(self, values)

    def collect(self) -> Iterator[Metric]:
        for samples in self._samples():
            family = CounterMetricFamily(self.name, self.help, labels=list(self.label_names))
            for labels, value in samples:
                family.add_metric(labels, value)
            yield family


@dataclass(frozen=True, slots=True)
class _Count:
    family: AdapterCounter
    values: tuple[str, ...]

    def inc(self, amount: float = 1.0) -> None:
        entry = self.family._entry(self.values)
        rest = self.values[3:]
        entry[rest] = entry.get(rest, 0.0) + amount


class AdapterHistogram(AdapterFamily["array[float]"]):
    """Bucket counts (not cumulative), then the sum of the observations."""

    type = "histogram"

    def __init__(
        self,
        name: str,
        help_: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        super().__init__(name, help_, labels, registry)
        self.bounds = tuple(sorted(buckets))
        self._le = [*(floatToGoString(b) for b in self.bounds), "+Inf"]  # type: ignore[no-untyped-call]

    def labels(self, *values: str) -> _Observe:
        return _Observe(self, values)

    def collect(self) -> Iterator[Metric]:
        for samples in self._samples():
            family = HistogramMetricFamily(self.name, self.help, labels=list(self.label_names))
            for labels, counts in samples:
                buckets, cumulative = [], 0.0
                for le, n in zip(self._le, counts, strict=False):  # the sum comes last
                    cumulative += n
                    buckets.append((le, cumulative))
                family.add_metric(labels, buckets, counts[-1])
            yield family


@dataclass(frozen=True, slots=True)
class _Observe:
    family: AdapterHistogram
    values: tuple[str, ...]

    def observe(self, amount: float) -> None:
        h = self.family
        entry = h._entry(self.values)
        rest = self.values[3:]
        counts = entry.get(rest)
        if counts is None:
            counts = entry[rest] = array("d", bytes(8 * (len(h.bounds) + 2)))
        counts[bisect.bisect_left(h.bounds, amount)] += 1  # the first bound >= amount: its le
        counts[-1] += amount

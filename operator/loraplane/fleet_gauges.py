"""The fleet's current-state gauges, read at each scrape from values kept current.

Each adapter's replica counts and phase are the status module's own, computed again only for
the adapters the fleet woke since the last scrape (the status writer is woken by the same
changes, so the two cannot disagree): a scrape of a settled fleet of 10,000 adapters computes
nothing, where computing every status took seconds. A series exists exactly while its adapter
and pod do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from loraplane.api import LoRAAdapterStatus
from loraplane.api.adapter import MAX_STATUS_PODS
from loraplane.fleet import AdapterView, Fleet, Key, serves
from loraplane.metrics import (
    DESIRED_REPLICAS,
    INFO,
    READY,
    REGISTERED,
    REGISTERED_REPLICAS,
    SIZE_BYTES,
    Family,
)
from loraplane.status import adapter as adapter_status


@dataclass(frozen=True, slots=True)
class AdapterGauges:
    """One adapter's gauges as its status last computed them."""

    replicas: tuple[int, int] | None  # (desired, registered); None: not published yet
    ready: bool
    rank: int | None
    digest: str | None
    size_bytes: int | None


def gauges_of(fleet: Fleet, ad: AdapterView) -> AdapterGauges:
    status = adapter_status.compute(fleet, ad, LoRAAdapterStatus(), MAX_STATUS_PODS)
    replicas = status.replicas
    summary = status.adapter
    # Until every pod was looked at, the status is not published: neither are its counts.
    published = not adapter_status.waiting_for_first_look(fleet, ad)
    return AdapterGauges(
        ((replicas.desired, replicas.registered) if replicas else (0, 0)) if published else None,
        status.phase == "Ready",
        summary.rank if summary else None,
        summary.digest if summary else None,
        summary.size_bytes if summary else None,
    )


def _family(spec: Family) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


class FleetCollector(Collector):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.kept: dict[Key, AdapterGauges] = {}

    def current(self) -> dict[Key, AdapterGauges]:
        """Every adapter's gauges, computed again for those woken since the last scrape."""
        fleet = self.fleet
        for key in fleet.take_unscraped():
            ad = fleet.adapters.get(key)
            if ad is not None:
                self.kept[key] = gauges_of(fleet, ad)
        for key in self.kept.keys() - fleet.adapters.keys():
            del self.kept[key]
        for key in fleet.adapters.keys() - self.kept.keys():
            self.kept[key] = gauges_of(fleet, fleet.adapters[key])
        return self.kept

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fleet = self.fleet
        # A series per adapter per pod, the largest family by far: in parts, a base model each
        # (metrics_http sends one before the next is built).
        for (ns, base), _view in sorted(fleet.bases.items()):
            registered = _family(REGISTERED)
            pods = fleet.pods_of(ns, base)
            for name in fleet.placement(ns, base).placed:
                version = fleet.version((ns, name))
                for pod in pods:
                    value = 1.0 if serves(fleet.state(pod.key, name), version) else 0
                    registered.add_metric([ns, base, name, pod.name], value)
            yield registered
        families = {
            spec.name: _family(spec)
            for spec in (DESIRED_REPLICAS, REGISTERED_REPLICAS, READY, INFO, SIZE_BYTES)
        }
        current = self.current()
        for key, ad in sorted(fleet.adapters.items()):
            labels = [ad.namespace, ad.base_model, ad.name]
            g = current[key]
            if g.replicas is not None:
                families[DESIRED_REPLICAS.name].add_metric(labels, g.replicas[0])
                families[REGISTERED_REPLICAS.name].add_metric(labels, g.replicas[1])
                families[READY.name].add_metric(labels, 1.0 if g.ready else 0.0)
            info = [ad.served_name, _text(g.rank), _text(g.digest), revision(ad)]
            families[INFO.name].add_metric([*labels, *info], 1.0)
            if g.size_bytes is not None:
                families[SIZE_BYTES.name].add_metric(labels, g.size_bytes)
        yield from families.values()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def _text(value: object) -> str:
    return "" if value is None else str(value)


def revision(ad: AdapterView) -> str:
    hf = ad.source.huggingface if ad.source is not None else None
    return hf.revision if hf is not None else ""


_collector: FleetCollector | None = None


def watch_fleet(fleet: Fleet) -> None:
    """Export `fleet`'s gauges from the default registry (one fleet per process)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = FleetCollector(fleet)
    REGISTRY.register(_collector)

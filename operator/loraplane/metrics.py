"""Every Prometheus metric loraplane exports, defined in one place.

Counters and histograms are observed where their event happens (one event, one counter). Gauges
of current state are read from the fleet at scrape time by `FleetCollector`: a series exists
exactly while its adapter and pod do, with no bookkeeping that could leave one behind.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from loraplane.fleet import Fleet

ADAPTER = ("namespace", "base_model", "adapter")

ADAPTER_LOADS = Counter(
    "loraplane_adapter_loads_total",
    "Adapter load calls to vLLM servers, by result (success, rejected, error).",
    [*ADAPTER, "result"],
)
ADAPTER_UNLOADS = Counter(
    "loraplane_adapter_unloads_total",
    "Adapters unregistered from a vLLM server, by reason (deleted, renamed, failed, orphan); "
    "capacity evictions are counted in loraplane_adapter_evictions_total only.",
    [*ADAPTER, "reason"],
)
ADAPTER_EVICTIONS = Counter(
    "loraplane_adapter_evictions_total",
    "Adapters displaced from a server by the per-replica cap (reason CapacityExceeded).",
    [*ADAPTER, "reason"],
)
ADAPTER_RECOVERIES = Counter(
    "loraplane_adapter_recoveries_total",
    "Adapters registered again on a server that had them and lost them (a restart or drift); "
    "first loads and returns after a capacity eviction are not counted.",
    list(ADAPTER),
)
ADAPTER_LOAD_SECONDS = Histogram(
    "loraplane_adapter_load_duration_seconds",
    "Time of one adapter load: agent fetch and verify, then the vLLM load call.",
    ["namespace", "base_model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
POD_SYNCS = Counter(
    "loraplane_pod_syncs_total",
    "Per-pod convergence runs (desired adapters vs /v1/models), by result.",
    ["result"],
)


class FleetCollector(Collector):
    """Current-state gauges, read from the fleet at each scrape."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from loraplane.status.adapter import serves  # status imports the fleet, as we do

        registered = GaugeMetricFamily(
            "loraplane_adapter_registered",
            "1 when the pod's vLLM server serves the adapter's current version, else 0; one "
            "series per adapter placed on a base model and pod of that base model.",
            labels=[*ADAPTER, "pod"],
        )
        fleet = self.fleet
        for (ns, base), _view in sorted(fleet.bases.items()):
            pods = fleet.pods_of(ns, base)
            for name in fleet.placement(ns, base).placed:
                version = fleet.version((ns, name))
                for pod in pods:
                    value = 1.0 if serves(fleet.state(pod.key, name), version) else 0.0
                    registered.add_metric([ns, base, name, pod.name], value)
        yield registered

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


_collector: FleetCollector | None = None


def watch_fleet(fleet: Fleet) -> None:
    """Export `fleet`'s gauges from the default registry (one fleet per process)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = FleetCollector(fleet)
    REGISTRY.register(_collector)

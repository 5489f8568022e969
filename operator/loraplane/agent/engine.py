"""The engine's residency as the agent serves it: `/metrics` for Prometheus and
`/v1/residency` for the operator, both read from the snapshot of loraplane's vLLM plugin."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from loraplane import metrics
from loraplane.agent.protocol import Residency
from loraplane.builders import naming
from loraplane.config import AgentSettings
from loraplane.plugin import snapshot

TIERS = ("gpu", "cpu")


def _gauge(spec: metrics.Family) -> GaugeMetricFamily:
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def engine_metrics(
    snap: snapshot.Snapshot,
    namespace: str,
    base_model: str,
    pod: str,
    adapter_of: Callable[[str], str | None],
) -> Iterator[Metric]:
    """The families of one engine's snapshot; `adapter_of` maps an adapter's path to its
    LoRAAdapter's name (None: not one of ours, left out)."""
    m = metrics
    resident = _gauge(m.ENGINE_RESIDENT)
    counted = (m.ENGINE_ACTIVATIONS, m.ENGINE_EVICTIONS, m.ENGINE_DISK_LOADS)
    counters = {
        spec.name: CounterMetricFamily(spec.name, spec.help, labels=list(spec.labels))
        for spec in (*counted, m.ENGINE_DISK_LOAD_SECONDS)
    }
    for served in sorted(snap.adapters):
        a = snap.adapters[served]
        adapter = adapter_of(a.path)
        if adapter is None:
            continue
        labels = [namespace, base_model, adapter, pod]
        for tier in TIERS:
            resident.add_metric([*labels, tier], 1.0 if a.tier == tier else 0.0)
        counters[m.ENGINE_ACTIVATIONS.name].add_metric(labels, a.activations)
        counters[m.ENGINE_EVICTIONS.name].add_metric([*labels, "gpu", "lru"], a.gpu_evictions)
        counters[m.ENGINE_EVICTIONS.name].add_metric([*labels, "cpu", "lru"], a.cpu_evictions)
        counters[m.ENGINE_DISK_LOADS.name].add_metric(labels, a.disk_loads)
        counters[m.ENGINE_DISK_LOAD_SECONDS.name].add_metric(labels, a.disk_load_seconds)
    slots = _gauge(m.ENGINE_SLOTS)
    slots.add_metric([namespace, base_model, pod, "gpu"], snap.gpu_slots)
    slots.add_metric([namespace, base_model, pod, "cpu"], snap.cpu_slots)
    yield resident
    yield from counters.values()
    yield slots


class Engine(Collector):
    def __init__(self, cfg: AgentSettings) -> None:
        self.cfg = cfg
        # The downward API's facts about this pod, which the operator sets in every pod it builds.
        self.pod = os.environ.get("POD_NAME", "")
        self.namespace = os.environ.get("POD_NAMESPACE", "")

    def snapshot(self) -> snapshot.Snapshot | None:
        directory = self.cfg.residency_dir
        return snapshot.read(directory) if directory is not None else None

    def residency(self) -> Residency:
        snap = self.snapshot()
        if snap is None:
            return Residency(available=False)
        return Residency(
            available=True, tiers={n: t for n, t in snap.tiers().items() if t != "disk"}
        )

    def adapter_of(self, path: str) -> str | None:
        """The LoRAAdapter whose stored version `path` is, while its files are in the store: a
        pruned version's counts go with its files."""
        entry = naming.store_entry(path, str(self.cfg.adapter_root))
        if entry is None or not (self.cfg.adapter_root / entry[0] / entry[1]).is_dir():
            return None
        return entry[0]

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        if snap is None:
            return
        yield from engine_metrics(
            snap, self.namespace, self.cfg.base_model, self.pod, self.adapter_of
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())

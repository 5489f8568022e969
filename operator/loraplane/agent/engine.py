"""The engine's residency as the agent serves it: `/metrics` for Prometheus and
`/v1/residency` for the operator, both read from the snapshot of loraplane's vLLM plugin."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from loraplane import metrics
from loraplane.agent.protocol import Residency
from loraplane.builders import naming
from loraplane.config import AgentSettings
from loraplane.plugin import snapshot


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
        yield from metrics.engine_metrics(
            snap, self.namespace, self.cfg.base_model, self.pod, self.adapter_of
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())

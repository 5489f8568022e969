"""The residency feed: engine residency on vLLM's own /metrics, shaped like vLLM's LoRA gauge.

The Endpoint Picker of the Gateway API Inference Extension scores a pod for an adapter from one
gauge it scrapes off the pod's /metrics (its `loraSpec`). vLLM's own, `vllm:lora_requests_info`,
names the adapters with requests in flight: an idle adapter in a GPU slot is invisible to it.
This module serves the same shape from real residency, read at scrape time off the snapshot the
engine's worker writes (`loraplane.plugin.snapshot`):

    loraplane:lora_residency_info{max_lora="<--max-loras>",
        waiting_lora_adapters="<CPU-cached, not in a GPU slot>",
        running_lora_adapters="<in a GPU slot>"} <unix time of the scrape>

Names are sorted and comma-joined, as the EPP splits them. The value is a time because the
EPP keeps, of the series of that name, the one with the largest value (vLLM's is a timestamp
and each label set is a new series that never goes away); this collector has one series per
scrape, whose time is always the latest. A missing or stale snapshot emits nothing.

Served only where vLLM serves /metrics: the process vLLM was started as (the API server; see
`serves_metrics`), from prometheus_client's default registry, which is what vLLM's /metrics
exposes while PROMETHEUS_MULTIPROC_DIR is unset (`vllm.v1.metrics.prometheus`
`get_prometheus_registry`; vLLM sets it only for several API servers, which runtime LoRA
updating forbids).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from loraplane.plugin import snapshot

NAME: Final = "loraplane:lora_residency_info"
HELP: Final = (
    "Engine LoRA residency in vllm:lora_requests_info's shape: running_lora_adapters in GPU "
    "slots, waiting_lora_adapters in the CPU cache only; value the time of the scrape."
)
# vLLM's labels (v1/metrics/loggers.py); the text exposition sorts them by name, as it does vLLM's.
LABELS: Final = ("max_lora", "waiting_lora_adapters", "running_lora_adapters")
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


def family(snap: snapshot.Snapshot, now: float) -> GaugeMetricFamily:
    """The one sample for a live snapshot."""
    tiers = snap.tiers()
    running = sorted(name for name, tier in tiers.items() if tier == "gpu")
    waiting = sorted(name for name, tier in tiers.items() if tier == "cpu")
    out = GaugeMetricFamily(NAME, HELP, labels=LABELS)
    out.add_metric([str(snap.gpu_slots), ",".join(waiting), ",".join(running)], now)
    return out


class ResidencyCollector:
    """Reads the snapshot at each scrape; never raises (see `collect`)."""

    def __init__(self, directory: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.clock = clock

    def describe(self) -> list[Metric]:
        # Given, the registry takes the name from here at registration instead of collecting.
        return [GaugeMetricFamily(NAME, HELP, labels=LABELS)]

    def collect(self) -> Iterator[Metric]:
        # An exception here fails the whole scrape: vLLM's /metrics would answer 500 and the EPP
        # would lose the pod's queue and KV-cache metrics with ours. No feed instead.
        try:
            now = self.clock()
            snap = snapshot.read(self.directory, now=now)
            found = None if snap is None else family(snap, now)
        except Exception:
            return
        if found is not None:
            yield found


def serves_metrics() -> bool:
    """Whether this process serves vLLM's /metrics from the default registry.

    vLLM starts its engine core and workers (and, with several API servers, those too) through
    multiprocessing; the process it was started as, the only one without a multiprocessing
    parent, runs the API server with --api-server-count 1, which runtime LoRA updating needs.
    Registering everywhere would be harmless too (nothing else exposes the default registry,
    and the collector reads nothing until collected and never raises); the check keeps it to
    the one process whose registry is served.
    """
    return multiprocessing.parent_process() is None and not os.environ.get(MULTIPROC_ENV)


def register(
    directory: str | None = None, registry: CollectorRegistry = REGISTRY
) -> ResidencyCollector | None:
    """Add the collector to vLLM's registry in the API server, once; None elsewhere."""
    directory = directory or os.environ.get(snapshot.ENV_DIR)
    if not directory or not serves_metrics():
        return None  # not a pod of ours, or not the process that serves /metrics
    collector = ResidencyCollector(directory)
    try:
        registry.register(collector)
    except ValueError:
        return None  # registered already: plugins may load twice in one process
    # No "on" line: vLLM loads plugins in the API server before it configures logging, so an
    # info line there goes nowhere (its warnings reach stderr unformatted). /metrics shows it.
    return collector

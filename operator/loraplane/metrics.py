"""Every Prometheus metric loraplane exports, defined in one place."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ADAPTER = ("namespace", "base_model", "adapter")

ADAPTER_LOADS = Counter(
    "loraplane_adapter_loads_total",
    "Adapter load calls to vLLM servers, by result (success, rejected, error).",
    [*ADAPTER, "result"],
)
ADAPTER_UNLOADS = Counter(
    "loraplane_adapter_unloads_total",
    "Adapters unregistered from a vLLM server, by reason (deleted, capacity, failed, orphan).",
    [*ADAPTER, "reason"],
)
ADAPTER_EVICTIONS = Counter(
    "loraplane_adapter_evictions_total",
    "Adapters displaced from a server by the per-replica cap (reason CapacityExceeded).",
    [*ADAPTER, "reason"],
)
ADAPTER_RECOVERIES = Counter(
    "loraplane_adapter_recoveries_total",
    "Adapters registered again on a server that had lost them (a restart or drift).",
    list(ADAPTER),
)
ADAPTER_REGISTERED = Gauge(
    "loraplane_adapter_registered",
    "1 when the adapter is registered on the pod's vLLM server (as of the last sync).",
    [*ADAPTER, "pod"],
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

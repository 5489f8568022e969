"""Every Prometheus metric loraplane exports, defined in one place: a leaf vocabulary of series.

Counters and histograms are observed where their event happens (one event, one counter). Gauges
of current state are read from the fleet at scrape time by `fleet_gauges` rather than kept by
set/remove bookkeeping, so a series exists exactly while its adapter and pod do, with no remove
that a code path could forget; the engine's by each pod's agent (`agent.engine`).

Counters and histograms labelled by adapter are removed with their adapter (`forget_adapter`) or
base model (`forget_base`); no counter carries a `pod` label, so a pod leaves nothing behind.

`python -m loraplane.metrics --doc` prints the table of docs/metrics.md.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

from loraplane.adapter_metrics import AdapterCounter, AdapterFamily, AdapterHistogram

M = TypeVar("M", bound=MetricWrapperBase)
A = TypeVar("A", bound=AdapterFamily[Any])

# A `_created` sample beside every counter and histogram child is one more series per adapter
# (three per adapter, 30,000 in a fleet of 10,000) that no query or dashboard of ours reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

ADAPTER = ("namespace", "base_model", "adapter")
BASE = ("namespace", "base_model")

# CPU vLLM loads a LoRA in 10-20 ms; a GPU pod downloading a large adapter from a hub takes a
# minute or two (the agent's timeout is 120 s by default). Few buckets: each one is a series per
# adapter.
LOAD_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 120.0)
# A converged pod's sync is one GET /v1/models (milliseconds); one with loads lasts as they do.
SYNC_BUCKETS = (0.005, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 120.0)
# A reconcile computes a status and, at most, writes a few objects.
RECONCILE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclass(frozen=True)
class Family:
    """What docs/metrics.md says about one metric family."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    exporter: str = "operator"


FAMILIES: list[Family] = []
# Families labelled by adapter: removed when their adapter goes.
_PER_ADAPTER: list[AdapterFamily[Any]] = []
# Families labelled by base model, with their label names: removed when their base model goes.
_PER_BASE: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []


def _metric(cls: type[M], name: str, help_: str, labels: tuple[str, ...], **kw: Any) -> M:
    metric = cls(name, help_, labels, **kw)
    FAMILIES.append(Family(name, cls.__name__.lower(), labels, help_))
    if labels[: len(BASE)] == BASE:
        _PER_BASE.append((metric, labels))
    return metric


def _per_adapter(cls: type[A], name: str, help_: str, labels: tuple[str, ...], *args: Any) -> A:
    """A family with a series (or a histogram) per adapter: see adapter_metrics."""
    family = cls(name, help_, labels, *args)
    FAMILIES.append(Family(name, family.type, labels, help_))
    _PER_ADAPTER.append(family)
    return family


def _gauge(name: str, help_: str, labels: tuple[str, ...]) -> Family:
    """A gauge the fleet collector reads at scrape time."""
    family = Family(name, "gauge", labels, help_)
    FAMILIES.append(family)
    return family


# -- adapters: events ------------------------------------------------------------------------

ADAPTER_LOADS = _per_adapter(
    AdapterCounter,
    "loraplane_adapter_loads_total",
    "Attempts to register a version of the adapter on a vLLM server that does not serve it yet, "
    "by result: success (vLLM loaded it), rejected (the agent's checks or vLLM refused the "
    "files), error (the agent or vLLM failed for a reason worth a retry).",
    (*ADAPTER, "result"),
)
FETCH_SECONDS = _per_adapter(
    AdapterHistogram,
    "loraplane_adapter_fetch_duration_seconds",
    "Duration of the agent's fetch and verify of the adapter's files (from its store, the "
    "source or a peer), when it found them, as the agent timed it in its apply.",
    ADAPTER,
    LOAD_BUCKETS,
)
VLLM_LOAD_SECONDS = _per_adapter(
    AdapterHistogram,
    "loraplane_adapter_vllm_load_duration_seconds",
    "Duration of a successful vLLM load call (POST /v1/load_lora_adapter, the agent's on "
    "loopback, as it timed it).",
    ADAPTER,
    LOAD_BUCKETS,
)
ADAPTER_UNLOADS = _per_adapter(
    AdapterCounter,
    "loraplane_adapter_unloads_total",
    "Registrations of the adapter that ended on a vLLM server, by reason: deleted (the "
    "LoRAAdapter is being deleted), new_version (a new version replaced it in place), capacity "
    "(maxAdaptersPerReplica displaced it; also counted in loraplane_adapter_evictions_total), "
    "renamed (its servedName changed), failed (its placement ended for another reason), "
    "pod_gone (its pod was deleted or replaced while it was registered), orphan (files under "
    'the adapter store that no LoRAAdapter owns; counted with adapter=""). An eviction by the '
    "operator is also an unload: the sum over reasons is every unregistration.",
    (*ADAPTER, "reason"),
)
ADAPTER_EVICTIONS = _per_adapter(
    AdapterCounter,
    "loraplane_adapter_evictions_total",
    "Evictions of the adapter, by tier and reason: tier server, reason capacity: the operator "
    "unregistered it from a vLLM server under maxAdaptersPerReplica (also an unload, reason "
    "capacity). Tiers gpu and cpu, reason lru, with a pod label: the engine's own evictions, "
    "from each pod's agent (see loraplane_adapter_evictions_total from the agent).",
    (*ADAPTER, "tier", "reason"),
)
ADAPTER_REREGISTRATIONS = _per_adapter(
    AdapterCounter,
    "loraplane_adapter_reregistrations_total",
    "Registrations of the adapter that replace one that was lost, by cause: container_restart "
    "(registered on this pod before, missing now, and the pod's vLLM container ID changed), "
    "drift (registered on this pod before, same vLLM container, and /v1/models no longer lists "
    "it), new_pod (a first registration on a pod created after another pod of the base model "
    "had it registered, counted once per such pod that went, when the later of the two "
    "happens). First loads on the initial pods, scale-ups with no pod gone, and returns after a "
    "capacity eviction or an unload are not counted.",
    (*ADAPTER, "cause"),
)
VALIDATION_FAILURES = _per_adapter(
    AdapterCounter,
    "loraplane_adapter_validation_failures_total",
    "Versions of the adapter judged invalid, by reason (the Validated=False reason: the agent's "
    "or vLLM's rejection): once per verdict, not per pod or status computation.",
    (*ADAPTER, "reason"),
)

# -- adapters: current state, read from the fleet at scrape time -----------------------------

REGISTERED = _gauge(
    "loraplane_adapter_registered",
    "1 when the pod's vLLM server serves the adapter's current version, else 0; one series per "
    "adapter placed on a base model and pod of that base model.",
    (*ADAPTER, "pod"),
)
DESIRED_REPLICAS = _gauge(
    "loraplane_adapter_desired_replicas",
    "Pods that should serve the adapter (status.replicas.desired).",
    ADAPTER,
)
REGISTERED_REPLICAS = _gauge(
    "loraplane_adapter_registered_replicas",
    "Pods that serve the adapter's current version (status.replicas.registered).",
    ADAPTER,
)
READY = _gauge(
    "loraplane_adapter_ready",
    "1 when the adapter's status phase is Ready, else 0.",
    ADAPTER,
)
INFO = _gauge(
    "loraplane_adapter_info",
    "Always 1: the adapter's served name and its current version's rank and digest, and the "
    "source's revision (empty when the source has none or the version is not verified yet).",
    (*ADAPTER, "served_name", "rank", "digest", "revision"),
)
SIZE_BYTES = _gauge(
    "loraplane_adapter_size_bytes",
    "Size of the files of the adapter's current version.",
    ADAPTER,
)

# -- the operator's own health ---------------------------------------------------------------

RECONCILE_SECONDS = _metric(
    Histogram,
    "loraplane_reconcile_duration_seconds",
    "Duration of one reconcile after a change woke it, by kind (BaseModelDeployment: "
    "converging its Deployment, Service and Secret; LoRAAdapter: computing its status).",
    ("kind",),
    buckets=RECONCILE_BUCKETS,
)
STATUS_COMPUTATIONS = _metric(
    Counter,
    "loraplane_status_computations_total",
    "Statuses computed after a change woke them, by kind and outcome: written (the API held "
    "another), unchanged (it held this one), deferred (progress held back to be written within "
    "statusProgressSeconds).",
    ("kind", "outcome"),
)
POD_SYNC_SECONDS = _metric(
    Histogram,
    "loraplane_pod_sync_duration_seconds",
    "Duration of one pod sync that reached the pod's vLLM (desired adapters vs /v1/models, then "
    "loads and unloads).",
    BASE,
    buckets=SYNC_BUCKETS,
)
POD_SYNCS = _metric(
    Counter,
    "loraplane_pod_syncs_total",
    "Pod syncs that reached the pod's vLLM, by result (ok, error).",
    (*BASE, "result"),
)
VLLM_API_CALLS = _metric(
    Counter,
    "loraplane_vllm_api_calls_total",
    "Calls made to vLLM servers, by endpoint (models, load, unload, health, version): by the "
    "operator, and loads by each pod's agent on its behalf. A converged fleet costs one "
    "models call per pod per resync.",
    ("endpoint",),
)
AGENT_API_CALLS = _metric(
    Counter,
    "loraplane_agent_api_calls_total",
    "Calls the operator made to pods' agents, by endpoint (apply: fetch and load a pod's "
    "adapters in one call; required, prune, residency).",
    ("endpoint",),
)
KUBE_API_WRITES = _metric(
    Counter,
    "loraplane_kube_api_writes_total",
    "Write requests the operator sent to the Kubernetes API itself, refused ones included, by "
    "resource (deployments, loraadapters/status, ...) and verb (apply, create, update, patch, "
    "delete): flat while nothing changes. kopf's own patches (finalizers, base model status) and "
    "Events are not in it.",
    ("resource", "verb"),
)
VLLM_API_ERRORS = _metric(
    Counter,
    "loraplane_vllm_api_errors_total",
    "Calls to a vLLM server that failed, by endpoint (models, load, unload, health, version) "
    "and class (timeout, unreachable, rejected, client_error, server_error). A second load of "
    "a registered name and the unload of an unknown one are answers, not errors. Health checks "
    "fail while a server starts.",
    ("endpoint", "class"),
)
AGENT_API_ERRORS = _metric(
    Counter,
    "loraplane_agent_api_errors_total",
    "Calls to a pod's agent that failed, by endpoint (apply, required, prune, residency) and "
    "class (timeout, unreachable, client_error, server_error). An adapter the agent refuses is "
    "no failed call: loraplane_adapter_loads_total counts it.",
    ("endpoint", "class"),
)
WORK_IN_FLIGHT = _metric(
    Gauge,
    "loraplane_work_in_flight",
    "Work running now, by kind (pod_sync; agent_apply: a pod's agent fetching and loading).",
    ("kind",),
)
WATCH_RESTARTS = _metric(
    Counter,
    "loraplane_watch_restarts_total",
    "Watch streams kopf restarted with a fresh list, by resource (kopf's name of it), after the "
    "API server answered 410 Gone (the resource version expired).",
    ("resource",),
)


@contextmanager
def pod_sync(namespace: str, base_model: str) -> Iterator[None]:
    """Time, count and track one pod sync; an exception is an error, a cancel is neither."""
    with (
        WORK_IN_FLIGHT.labels("pod_sync").track_inprogress(),
        POD_SYNC_SECONDS.labels(namespace, base_model).time(),
    ):
        try:
            yield
        except Exception:
            POD_SYNCS.labels(namespace, base_model, "error").inc()
            raise
    POD_SYNCS.labels(namespace, base_model, "ok").inc()


def _children(metric: MetricWrapperBase, labels: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The label values of every child of a labelled metric (through its public samples)."""
    return {
        tuple(sample.labels[name] for name in labels)
        for family in metric.collect()
        for sample in family.samples
    }


def _remove(
    families: list[tuple[MetricWrapperBase, tuple[str, ...]]], match: dict[str, str]
) -> None:
    for metric, labels in families:
        where = {labels.index(name): value for name, value in match.items()}
        for values in _children(metric, labels):
            if all(values[i] == value for i, value in where.items()):
                metric.remove(*values)


def forget_adapter(namespace: str, adapter: str) -> None:
    """Remove every series of the adapter, under whichever base model it was counted."""
    for family in _PER_ADAPTER:
        family.forget(namespace, adapter)


def forget_base(namespace: str, base_model: str) -> None:
    """Remove the base model's own series (its pod syncs, its orphan unloads)."""
    _remove(_PER_BASE, {"namespace": namespace, "base_model": base_model})
    for family in _PER_ADAPTER:
        family.forget(namespace, "", base_model)


# kopf has no hook for a watch restart; its own debug record is the one place it shows
# (kopf/_cogs/clients/watching.py, continuous_watch, on 410 Gone). A test drives that code.
WATCH_LOGGER = "kopf._cogs.clients.watching"
_RESTART = re.compile(r"^Restarting the watch-stream for (?P<resource>\S+) ")


class WatchRestarts(logging.Filter):
    """Counts kopf's watch restarts; passes on only the records the logger's level passed."""

    def __init__(self, passes: int) -> None:
        super().__init__()
        self.passes = passes

    def filter(self, record: logging.LogRecord) -> bool:
        restart = _RESTART.match(record.getMessage())
        if restart:
            WATCH_RESTARTS.labels(restart["resource"]).inc()
        return record.levelno >= self.passes


def count_watch_restarts() -> None:
    """Let kopf's debug record of a watch restart through to `WatchRestarts` (once)."""
    logger = logging.getLogger(WATCH_LOGGER)
    if any(isinstance(f, WatchRestarts) for f in logger.filters):
        return
    logger.addFilter(WatchRestarts(logger.getEffectiveLevel()))
    logger.setLevel(logging.DEBUG)


# -- the engine's residency, exported by each pod's agent -----------------------------------
# Read from the snapshot of loraplane's vLLM plugin at each scrape (loraplane.plugin.snapshot):
# counters since the adapter came into that engine, so a vLLM restart or an unload starts them
# again, which rate() reads as a reset. A series exists while its adapter's files are in the
# pod's store and the engine reports it; none of them outlives its pod.

ENGINE_POD = (*ADAPTER, "pod")


def _engine(name: str, type_: str, help_: str, labels: tuple[str, ...] = ENGINE_POD) -> Family:
    family = Family(name, type_, labels, help_, exporter="agent")
    FAMILIES.append(family)
    return family


ENGINE_RESIDENT = _engine(
    "loraplane_adapter_resident",
    "gauge",
    "1 for the tier the adapter's weights sit in now in the pod's engine, else 0: gpu (one of "
    "--max-loras GPU slots), cpu (vLLM's CPU cache of --max-cpu-loras). 0 in both: on disk, "
    "read again on its next request.",
    (*ENGINE_POD, "tier"),
)
ENGINE_ACTIVATIONS = _engine(
    "loraplane_adapter_activations_total",
    "counter",
    "Times the adapter took a GPU slot in the pod's engine (a request for it found it in none).",
)
ENGINE_EVICTIONS = _engine(
    "loraplane_adapter_evictions_total",
    "counter",
    "Engine evictions of the adapter on the pod, by tier, reason lru: gpu (it lost its GPU slot "
    "to another adapter), cpu (it left the CPU cache; its next request reads it from disk).",
    (*ENGINE_POD, "tier", "reason"),
)
ENGINE_DISK_LOADS = _engine(
    "loraplane_adapter_disk_loads_total",
    "counter",
    "Reads of the adapter's files into the engine's CPU cache: its registration, then every "
    "request that found it evicted to disk.",
)
ENGINE_DISK_LOAD_SECONDS = _engine(
    "loraplane_adapter_disk_load_seconds_total",
    "counter",
    "Time the engine spent on those reads (divide by loraplane_adapter_disk_loads_total for the "
    "mean; a sum, not a histogram: this is a series per adapter per pod).",
)
ENGINE_SLOTS = _engine(
    "loraplane_engine_lora_slots",
    "gauge",
    "Capacity of the pod's engine, by tier: gpu (--max-loras), cpu (--max-cpu-loras).",
    (*BASE, "pod", "tier"),
)


# -- docs/metrics.md -------------------------------------------------------------------------


def doc_table() -> str:
    """The Markdown table of every family, as docs/metrics.md carries it."""
    rows = [
        "| name | type | labels | exported by | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in sorted(FAMILIES, key=lambda f: (f.name, f.exporter)):
        labels = ", ".join(f"`{label}`" for label in f.labels)
        meaning = f.help.replace("|", r"\|")
        rows.append(f"| `{f.name}` | {f.type} | {labels} | {f.exporter} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--doc"]:
        sys.exit("usage: python -m loraplane.metrics --doc")
    sys.stdout.write(doc_table())

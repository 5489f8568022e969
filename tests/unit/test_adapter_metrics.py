"""The per-adapter counters and histograms read as prometheus_client's own would, and go with
their adapter or base model."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loraplane.adapter_metrics import AdapterCounter, AdapterHistogram
from loraplane.metrics import ADAPTER, LOAD_BUCKETS

# On a bound (le counts it), between bounds, below the first, above the last.
OBSERVED = (0.01, 0.02, 0.005, 120.0, 500.0, 3.0, 0.0)


def samples(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "{" in line]


def test_a_histogram_exposes_what_prometheus_clients_own_would() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "h", ADAPTER, buckets=LOAD_BUCKETS, registry=theirs)
    compact = AdapterHistogram("h_seconds", "h", ADAPTER, LOAD_BUCKETS, ours)
    for i, amount in enumerate(OBSERVED):
        labels = ("ns", "base", f"a{i % 2}")
        reference.labels(*labels).observe(amount)
        compact.labels(*labels).observe(amount)
    assert sorted(samples(ours)) == sorted(samples(theirs))


def test_a_counter_exposes_what_prometheus_clients_own_would() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("c_total", "c", (*ADAPTER, "result"), registry=theirs)
    compact = AdapterCounter("c_total", "c", (*ADAPTER, "result"), ours)
    for labels, amount in [(("ns", "b1", "a", "ok"), 1), (("ns", "b2", "a", "ok"), 2.5)]:
        reference.labels(*labels).inc(amount)
        compact.labels(*labels).inc(amount)
    compact.labels("ns", "b1", "a", "ok").inc()
    reference.labels("ns", "b1", "a", "ok").inc()
    assert sorted(samples(ours)) == sorted(samples(theirs))


def test_an_adapter_goes_under_every_base_model_and_a_base_takes_only_its_own() -> None:
    registry = CollectorRegistry()
    loads = AdapterCounter("c_total", "c", (*ADAPTER, "result"), registry)
    for base in ("b1", "b2"):
        for adapter in ("a", "b", ""):
            loads.labels("ns", base, adapter, "ok").inc()
    loads.labels("other", "b1", "a", "ok").inc()
    loads.forget("ns", "a")  # it moved from b1 to b2: both go
    assert not [s for s in samples(registry) if 'adapter="a",base_model="b' in s and "ns" in s]
    loads.forget("ns", "", "b1")  # a base model's orphans
    left = {
        (s.split('base_model="')[1].split('"')[0], s.split('adapter="')[1].split('"')[0])
        for s in samples(registry)
        if 'namespace="ns"' in s
    }
    assert left == {("b1", "b"), ("b2", "b"), ("b2", "")}
    assert any('namespace="other"' in s for s in samples(registry))

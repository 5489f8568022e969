"""vLLM's two LoRA caches as its source says they behave, and the agent's metrics they imply.

The model tests/integration/test_residency.py checks on CPU vLLM 0.32 too, with the
slot counts as arguments: every use of an adapter (its registration, each request) loads it from
disk if the CPU cache lacks it, evicting the CPU cache's least recently used one (which leaves its
GPU slot too), then activates it in a GPU slot, evicting the GPU slots' least recently used one.

Pure, no vLLM: the kit compares it with the agent's /metrics after every step on a real engine.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

# The agent's series the comparison reads (docs/metrics.md), by (family, adapter[, tier]).
Key = tuple[str, ...]
TIERED = ("loraplane_adapter_resident", "loraplane_adapter_evictions_total")
COMPARED = (
    "loraplane_adapter_resident",
    "loraplane_adapter_activations_total",
    "loraplane_adapter_evictions_total",
    "loraplane_adapter_disk_loads_total",
)


@dataclass
class Caches:
    gpu_slots: int
    cpu_slots: int
    cpu: OrderedDict[str, None] = field(default_factory=OrderedDict)
    gpu: OrderedDict[str, None] = field(default_factory=OrderedDict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, name: str, what: str) -> None:
        c = self.counts.setdefault(name, {"activations": 0, "gpu": 0, "cpu": 0, "disk_loads": 0})
        c[what] += 1

    def use(self, name: str) -> None:
        if name in self.cpu:
            self.cpu.move_to_end(name)
        else:
            self.count(name, "disk_loads")
            if len(self.cpu) + 1 > self.cpu_slots:
                oldest, _ = self.cpu.popitem(last=False)
                self.count(oldest, "cpu")
                if oldest in self.gpu:
                    del self.gpu[oldest]
                    self.count(oldest, "gpu")
            self.cpu[name] = None
        if name in self.gpu:
            self.gpu.move_to_end(name)
            return
        if len(self.gpu) >= self.gpu_slots:
            oldest, _ = self.gpu.popitem(last=False)
            self.count(oldest, "gpu")
        self.gpu[name] = None
        self.count(name, "activations")

    def tier(self, name: str) -> str:
        return "gpu" if name in self.gpu else "cpu" if name in self.cpu else "disk"

    def metrics(self) -> dict[Key, float]:
        """What the agent should export."""
        out: dict[Key, float] = {}
        for name, c in self.counts.items():
            tier = self.tier(name)
            out[("loraplane_adapter_resident", name, "gpu")] = float(tier == "gpu")
            out[("loraplane_adapter_resident", name, "cpu")] = float(tier == "cpu")
            out[("loraplane_adapter_activations_total", name)] = c["activations"]
            out[("loraplane_adapter_evictions_total", name, "gpu")] = c["gpu"]
            out[("loraplane_adapter_evictions_total", name, "cpu")] = c["cpu"]
            out[("loraplane_adapter_disk_loads_total", name)] = c["disk_loads"]
        return out


def scraped(samples: list[tuple[str, dict[str, str], float]]) -> dict[Key, float]:
    """The compared series out of parsed /metrics samples (name, labels, value)."""
    out: dict[Key, float] = {}
    for name, labels, value in samples:
        if name not in COMPARED or "adapter" not in labels:
            continue
        key: Key = (name, labels["adapter"])
        if name in TIERED:
            key += (labels["tier"],)
        out[key] = value
    return out


def differences(
    got: dict[Key, float], want: dict[Key, float]
) -> dict[Key, tuple[float | None, float | None]]:
    """(agent, model) for every series where they differ."""
    return {
        k: (got.get(k), want.get(k))
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    }


def scenario(names: tuple[str, ...], rounds: int = 2) -> list[tuple[str, str]]:
    """The CPU test's steps: register each adapter, then round-robin requests.
    Each step is (what, adapter) with what "load" or "request"."""
    steps = [("load", name) for name in names]
    steps += [("request", name) for _ in range(rounds) for name in names]
    return steps

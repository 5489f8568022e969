"""`make bench-routing`: what routing by adapter saves, on the local cluster with CPU vLLM.

Eight adapters with Zipf popularity (s = 1.1), each with its own system prompt, on a base model of
two pods with one GPU slot and a CPU cache of two (`--max-loras 1 --max-cpu-loras 2`), so that
most requests find their adapter out of the slot on a pod that routing ignores. Four arms (and
a fifth, below), the same workload each, interleaved in rounds (A B C D E, A B C D E, ...) so that
the machine's noise falls on every arm:

- A: a random pod per request, what the base model's Service does today;
- B: the router without its LoRA scorer (queue, KV cache, prefix);
- C: the router with LoRA affinity on vLLM's vllm:lora_requests_info (adapters in flight);
- D: the router with LoRA affinity on loraplane's residency feed (GPU slots and CPU cache).

Per arm, from the agents' engine counters (loraplane's plugin) and the client: GPU-slot
activations, CPU-cache evictions and disk loads per request, output tokens/s, p50 and p95
latency, requests per pod (max over min). A fifth arm, E, is D with the LoRA scorer weighted 10
instead of 4: what the other scorers cost affinity. Switching arms B to E is a patch of
spec.router, which rolls the router's pod; the time that takes is not counted. Before the arms,
the machine's CPU is measured for IDLE_SECONDS with the router up and no traffic: what the EPP's
scrapes cost the vLLM servers.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.__main__ import cluster_up, cpu_by_group, cpu_report, group_of
from loraplane import metrics
from loraplane.builders import router_config
from tests.integration.cluster import Cluster, pod_ready, wait_for
from tests.integration.manifests import ADAPTER_SOURCES, lora_adapter, tiny_base_model
from tests.integration.operator_process import OperatorProcess
from tests.support.adapters import ensure_adapters
from tests.support.cache import loraplane_home
from tests.support.tinymodel import ensure_tiny_model

NS = "bench-routing"
BASE = "zipf"
ADAPTERS = 8
ZIPF_S = 1.1
CONCURRENCY = 4
REQUESTS = int(os.environ.get("BENCH_ROUTING_REQUESTS", "300"))  # per arm
ROUNDS = int(os.environ.get("BENCH_ROUTING_ROUNDS", "3"))
MAX_TOKENS = 16
SEED = 11
# The fixtures the eight names are served from (a name is an adapter to vLLM, whatever its files)
FIXTURES = ("rank8", "rank16", "rank8-mlp", "rank8-v2")
ARMS: dict[str, dict[str, Any] | None] = {
    "A random pod": None,
    "B EPP, no LoRA scorer": {"scorers": {"loraAffinity": 0}},
    "C EPP + vLLM's metric": {"loraSignal": "vLLM"},
    "D EPP + residency feed": {"loraSignal": "Residency"},
    # What bounds D: the queue and KV-cache scorers pull requests off the pod holding their
    # adapter; a heavier LoRA scorer trades balance for affinity.
    "E as D, LoRA weight 10": {"loraSignal": "Residency", "scorers": {"loraAffinity": 10}},
}
IDLE_SECONDS = 20.0
# The agents' engine counters (loraplane.metrics), by the family name Prometheus' parser gives.
ENGINE_COUNTERS = {
    metrics.ENGINE_ACTIVATIONS.name.removesuffix("_total"): "activations",
    metrics.ENGINE_EVICTIONS.name.removesuffix("_total"): "evictions",
    metrics.ENGINE_DISK_LOADS.name.removesuffix("_total"): "disk loads",
}


@dataclass
class Arm:
    name: str
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    errors: int = 0
    per_pod: dict[str, float] = field(default_factory=dict)
    engine: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies)


def adapter_names() -> list[str]:
    return [f"a{i}" for i in range(ADAPTERS)]


def workload(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """(adapter, prompt) pairs: Zipf over the adapters, a system prompt per adapter."""
    names = adapter_names()
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(names))]
    picks = rng.choices(names, weights, k=n)
    return [
        (a, f"You are assistant {a}; answer briefly. Question {rng.randrange(10**6)}: why?")
        for a in picks
    ]


def pods(c: Cluster) -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in c.list("pods", NS, f"loraplane.dev/base-model={BASE}")
        if pod_ready(p) and not p["metadata"].get("deletionTimestamp")
    }


def scrape(url: str) -> list[Any]:
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    return list(text_string_to_metric_families(body))


def served(ip: str) -> float:
    return sum(
        s.value
        for fam in scrape(f"http://{ip}:8000/metrics")
        for s in fam.samples
        if s.name == "vllm:request_success_total"
    )


def engine(ips: dict[str, str]) -> dict[str, float]:
    """The engine counters summed over pods and adapters (CPU-cache evictions only)."""
    out = dict.fromkeys(ENGINE_COUNTERS.values(), 0.0)
    for ip in ips.values():
        for fam in scrape(f"http://{ip}:8082/metrics"):
            label = ENGINE_COUNTERS.get(fam.name)
            for s in fam.samples if label else ():
                if s.name.endswith("_total") and s.labels.get("tier", "cpu") == "cpu":
                    out[str(label)] += s.value
    return out


def post(url: str, adapter: str, prompt: str) -> tuple[int, int]:
    body = {
        "model": adapter,
        "prompt": prompt,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
    }
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return 200, int(json.loads(resp.read())["usage"]["completion_tokens"])
    except urllib.error.HTTPError as exc:
        return exc.code, 0
    except OSError:
        return 0, 0


def drive(arm: Arm, targets: list[str], work: list[tuple[str, str]], rng: random.Random) -> None:
    """CONCURRENCY clients over `work`; each request to a random one of `targets`."""
    lock = threading.Lock()
    queue = list(work)

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                adapter, prompt = queue.pop()
                url = rng.choice(targets)
            t0 = time.perf_counter()
            code, tokens = post(url, adapter, prompt)
            with lock:
                if code != 200:
                    arm.errors += 1
                else:
                    arm.latencies.append(time.perf_counter() - t0)
                    arm.tokens += tokens

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    arm.seconds += time.perf_counter() - started


def set_router(c: Cluster, router: dict[str, Any]) -> str:
    """Patch spec.router and wait for a Ready router pod of that configuration; its IP."""
    patch = {"spec": {"router": {"scorers": {"loraAffinity": None}, **router}}}
    c.kubectl("patch", "bmd", BASE, "-n", NS, "--type=merge", "-p", json.dumps(patch))

    def rolled() -> str | None:
        dep = c.get("deployment", f"{BASE}-router", NS) or {}
        st = dep.get("status") or {}
        done = (
            st.get("observedGeneration") == dep.get("metadata", {}).get("generation")
            and st.get("updatedReplicas") == st.get("readyReplicas") == st.get("replicas") == 1
        )
        ready = [
            p
            for p in c.list("pods", NS, f"loraplane.dev/router={BASE}")
            if pod_ready(p) and not p["metadata"].get("deletionTimestamp")
        ]
        return ready[0]["status"]["podIP"] if done and len(ready) == 1 else None

    time.sleep(2.0)
    ip: str = wait_for("the router rolled", rolled, timeout=180, interval=0.5)
    # The EPP's first scrapes: a few refresh intervals before it has every pod's metrics.
    time.sleep(2.0)
    return ip


def setup(c: Cluster) -> None:
    home = c.home
    ensure_tiny_model(home)
    ensure_adapters(home)
    c.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=180s", check=False)
    c.kubectl("create", "namespace", NS)
    wait_for("the default ServiceAccount", lambda: c.get("sa", "default", NS), timeout=30)
    bmd = tiny_base_model(BASE, home, replicas=2, maxLoras=1, maxCpuLoras=2)
    bmd["spec"]["router"] = {}
    c.apply(bmd, NS)
    for i, name in enumerate(adapter_names()):
        src = f"{ADAPTER_SOURCES}/{FIXTURES[i % len(FIXTURES)]}"
        c.apply(lora_adapter(name, BASE, src), NS)
    wait_for("2 vLLM pods", lambda: len(pods(c)) == 2 or None, timeout=600)

    def all_ready() -> bool:
        items = json.loads(c.kubectl("get", "lora", "-n", NS, "-o", "json").stdout)["items"]
        return len(items) == ADAPTERS and all(
            (i.get("status") or {}).get("ready") == "2/2" for i in items
        )

    wait_for("every adapter Ready 2/2", all_ready, timeout=300)


ROUTER_GROUPS = ("pods' epp", "pods' envoy")


def router_rss() -> dict[str, float]:
    """MiB resident of the router's containers (the process node's cgroups name them)."""
    out = dict.fromkeys(ROUTER_GROUPS, 0.0)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            group = group_of(proc.name)
            if group in out:
                status = (proc / "status").read_text()
                kib = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS"))
                out[group] += kib / 1024
        except (OSError, StopIteration, ValueError):
            continue  # gone meanwhile, or a kernel thread
    return out


def report(arms: dict[str, Arm], load: str) -> None:
    print(f"\nbench-routing: {REQUESTS} requests per arm in {ROUNDS} rounds, concurrency "
          f"{CONCURRENCY}, {ADAPTERS} adapters Zipf s={ZIPF_S}, {MAX_TOKENS} tokens each; "
          f"2 pods --max-loras 1 --max-cpu-loras 2. {load}")  # fmt: skip
    head = (
        f"{'arm':26} {'act/req':>8} {'evict/req':>9} {'disk/req':>8} {'tok/s':>7} "
        f"{'p50 s':>6} {'p95 s':>6} {'pods max/min':>13} {'errors':>6}"
    )
    print(head)
    for arm in arms.values():
        n = max(arm.requests, 1)
        lat = sorted(arm.latencies) or [0.0]
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        counts = sorted(arm.per_pod.values())
        imbalance = counts[-1] / counts[0] if counts and counts[0] else float("inf")
        print(
            f"{arm.name:26} {arm.engine['activations'] / n:8.3f} "
            f"{arm.engine['evictions'] / n:9.3f} {arm.engine['disk loads'] / n:8.3f} "
            f"{arm.tokens / arm.seconds:7.1f} {statistics.median(lat):6.3f} {p95:6.3f} "
            f"{'/'.join(str(int(x)) for x in reversed(counts)):>9} ({imbalance:.2f}) "
            f"{arm.errors:6d}"
        )


def main() -> int:
    home = loraplane_home()
    c = cluster_up(home)
    op = OperatorProcess(c, env={"LORAPLANE_RESIDENCY_INTERVAL_SECONDS": "5"})
    op.start()
    try:
        setup(c)
        rng = random.Random(SEED)
        arms = {name: Arm(name) for name in ARMS}
        per_round = REQUESTS // ROUNDS
        idle = router_rss()
        before_idle = cpu_by_group()
        time.sleep(IDLE_SECONDS)
        print(
            f"idle for {IDLE_SECONDS:.0f} s with the router up (its EPP scraping both pods "
            "every 200 ms):" + cpu_report(before_idle, cpu_by_group(), IDLE_SECONDS)
        )
        cpu0, t0 = cpu_by_group(), time.time()
        for _ in range(ROUNDS):
            for name, router in ARMS.items():
                ips = pods(c)
                if router is None:
                    targets = [f"http://{ip}:8000/v1/completions" for ip in ips.values()]
                else:
                    rip = set_router(c, router)
                    targets = [f"http://{rip}:{router_config.ENVOY_PORT}/v1/completions"]
                work = workload(per_round, rng)
                before_pods = {n: served(ip) for n, ip in ips.items()}
                before = engine(ips)
                drive(arms[name], targets, work, rng)
                after = engine(ips)
                for key in after:
                    arms[name].engine[key] = (
                        arms[name].engine.get(key, 0.0) + after[key] - before[key]
                    )
                for n, ip in ips.items():
                    done = served(ip) - before_pods[n]
                    arms[name].per_pod[n] = arms[name].per_pod.get(n, 0.0) + done
        load = cpu_report(cpu0, cpu_by_group(), time.time() - t0)
        busy = router_rss()
        report(arms, load)
        print(
            "router RSS MiB, idle after start / after the run (the last arm's pod): "
            + ", ".join(f"{g.split()[-1]} {idle[g]:.0f} / {busy[g]:.0f}" for g in ROUTER_GROUPS)
        )
    finally:
        op.stop()
        c.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

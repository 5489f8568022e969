"""`make bench-residency`: tokens per second of CPU vLLM with loraplane's plugin on and off.

Two servers of the tiny model with the same flags, one with the plugin (VLLM_PLUGINS=loraplane and
a residency directory) and one without (VLLM_PLUGINS set and empty: no general plugin), both
holding the same three adapters. One GPU slot and a CPU cache of two make the worst case for the
plugin: a round robin over the three adapters evicts and reloads on every request, so every
request goes through the plugin's slow paths. Runs alternate between the servers (on, off, on,
...), so the machine's noise falls on both; each run is the same greedy requests, one at a time.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import sys
import tempfile
import time

from tests.support import ensure_adapters, start_vllm
from tests.support.vllm_server import VllmServer

LORA_ARGS = ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "1", "--max-cpu-loras", "2"]
ADAPTERS = ("rank8", "rank16", "rank8-mlp")
RUNS = 12  # per server
REQUESTS_PER_RUN = 9
MAX_TOKENS = 64


def one_run(server: VllmServer) -> float:
    """Tokens per second of REQUESTS_PER_RUN greedy completions, round robin over ADAPTERS."""
    tokens = 0
    started = time.perf_counter()
    for i in range(REQUESTS_PER_RUN):
        answer = server.complete(ADAPTERS[i % len(ADAPTERS)], max_tokens=MAX_TOKENS)
        if answer.status != 200:
            raise RuntimeError(answer.body)
        tokens += int(answer.json()["usage"]["completion_tokens"])
    return tokens / (time.perf_counter() - started)


def spread(values: list[float]) -> str:
    mid = statistics.median(values)
    return (
        f"median {mid:.1f} tok/s, min {min(values):.1f}, max {max(values):.1f} "
        f"(range {100 * (max(values) - min(values)) / mid:.1f}% of the median)"
    )


def main() -> int:
    adapters = ensure_adapters()
    with tempfile.TemporaryDirectory() as run_dir:
        settings = {
            "on": {"VLLM_PLUGINS": "loraplane", "LORAPLANE_RESIDENCY_DIR": run_dir},
            "off": {"VLLM_PLUGINS": ""},
        }
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {
                k: pool.submit(start_vllm, lora_args=LORA_ARGS, env=env)
                for k, env in settings.items()
            }
            servers = {k: f.result() for k, f in futures.items()}
        try:
            for server in servers.values():
                for name in ADAPTERS:
                    result = server.load_adapter(name, adapters[name])
                    if result.status != 200:
                        raise RuntimeError(result.body)
                one_run(server)  # warm-up: first requests compile and fill caches
            results: dict[str, list[float]] = {"on": [], "off": []}
            for _ in range(RUNS):
                for k in ("on", "off"):
                    results[k].append(one_run(servers[k]))
        finally:
            for server in servers.values():
                server.stop()
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    # Each on run against the off run right after it: the pair saw the same machine.
    pairs = sorted(a / b for a, b in zip(results["on"], results["off"], strict=True))
    quartiles = statistics.quantiles(pairs, n=4)
    print(f"plugin residency: {RUNS} interleaved runs per server, {REQUESTS_PER_RUN} requests of")
    print(f"  {MAX_TOKENS} greedy tokens each, round robin over {len(ADAPTERS)} adapters with")
    print("  --max-loras 1 --max-cpu-loras 2 (every request evicts and reloads)")
    print(f"  plugin on:  {spread(results['on'])}")
    print(f"  plugin off: {spread(results['off'])}")
    print(f"  on / off of the medians = {on / off:.4f} ({100 * (on / off - 1):+.2f}%)")
    print(
        f"  on / off per interleaved pair: median {statistics.median(pairs):.4f}, "
        f"quartiles {quartiles[0]:.4f} .. {quartiles[2]:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

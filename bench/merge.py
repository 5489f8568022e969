"""`python -m bench merge` (part of `make bench`): the same adapter merged, and on the fly.

Two CPU vLLM servers of the tiny model (bf16, the flags of tests/support/vllm_server.py): one
with LoRA enabled and the adapter `all-linear` (rank 8 on all seven linear modules) loaded at
run time, the other serving the model that loraplane's merge (merge/weights.py) made of the same
adapter, with no LoRA. Runs alternate between them (fly, merged, fly, ...) so the machine's
noise falls on both, at batch 1 (requests one at a time) and batch 8 (eight at once). Prints
tokens per second and the merged / on-the-fly ratio of the medians, all from this one run; the
merge's own time and peak memory too.
"""

from __future__ import annotations

import concurrent.futures
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from loraplane.merge.weights import merge_checkpoint
from tests.support import ensure_adapter, ensure_tiny_model, start_vllm
from tests.support.vllm_server import VllmServer

ADAPTER = "all-linear"
LORA_ARGS = ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "1"]
RUNS = 5  # per server and batch size
REQUESTS = 8  # per run
MAX_TOKENS = 64
PROMPTS = ["The operator pushes", "Rivers run to the sea", "Once upon a time", "alpha beta"]


def one_run(server: VllmServer, model: str, batch: int) -> float:
    """Tokens per second of REQUESTS greedy completions, `batch` of them in flight at once."""

    def ask(i: int) -> int:
        answer = server.complete(model, PROMPTS[i % len(PROMPTS)], max_tokens=MAX_TOKENS)
        if answer.status != 200:
            raise RuntimeError(answer.body)
        return int(answer.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(batch) as pool:
        tokens = sum(pool.map(ask, range(REQUESTS)))
    return tokens / (time.perf_counter() - started)


def main() -> int:
    base, adapter = ensure_tiny_model(), ensure_adapter(ADAPTER)
    with tempfile.TemporaryDirectory() as tmp:
        merged_dir = Path(tmp) / "merged"
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        report = merge_checkpoint(base, adapter, merged_dir)
        merge_seconds = time.perf_counter() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fly = start_vllm(lora_args=LORA_ARGS)
        merged = start_vllm(merged_dir, lora_args=[])
        try:
            loaded = fly.load_adapter(ADAPTER, adapter)
            if loaded.status != 200:
                raise RuntimeError(loaded.body)
            arms = {"on the fly": (fly, ADAPTER), "merged": (merged, merged.model)}
            results: dict[tuple[str, int], list[float]] = {}
            for batch in (1, 8):
                for server, model in arms.values():
                    one_run(server, model, batch)  # warm-up: compiles and fills caches
                for _ in range(RUNS):
                    for arm, (server, model) in arms.items():
                        results.setdefault((arm, batch), []).append(one_run(server, model, batch))
        finally:
            fly.stop()
            merged.stop()
    print(f"merge vs on the fly: tiny model bf16, adapter {ADAPTER}, CPU vLLM, {RUNS} interleaved")
    print(f"  runs per arm of {REQUESTS} requests x {MAX_TOKENS} greedy tokens")
    print(
        f"  the merge: {merge_seconds * 1000:.0f} ms, {report.merged_modules} modules, "
        f"{report.bytes_read} bytes streamed, peak RSS {rss / 1024:.0f} MiB "
        f"(this process, {rss_before / 1024:.0f} MiB before)"
    )
    for batch in (1, 8):
        fly_tps = statistics.median(results[("on the fly", batch)])
        merged_tps = statistics.median(results[("merged", batch)])
        print(
            f"  batch {batch}: on the fly {fly_tps:.1f} tok/s, merged {merged_tps:.1f} tok/s, "
            f"merged / on the fly = {merged_tps / fly_tps:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

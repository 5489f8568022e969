"""Tune vLLM's LoRA shrink and expand kernels for the 8B shape at rank 16, as vLLM documents it
(vllm/lora/ops/triton_ops/README_TUNING.md): time each kernel over a small grid of configurations
with the shapes the model uses, keep the fastest, and write vLLM's JSON files
(`{gpu}_SHRINK.json`, `{gpu}_EXPAND_{add_inputs}.json`, keyed max_loras / num_slices / m / k / n)
into a folder that VLLM_TUNED_CONFIG_FOLDER then names.

vLLM's own grid search (benchmarks/kernels/benchmark_lora.py) is not in the wheel; this is the
same search, smaller: decode batches of 1 and 32 tokens, maxLoras 16 (vLLM launches the kernels
for maxLoras + 1 adapters under CUDA graphs unless --specialize-active-lora), and for larger
batches vLLM's default configuration, written out so a prefill never picks a decode entry.

`python -m bench.gpu.tune --out DIR --budget S` (on the GPU machine, vLLM importable);
`run()` calls it from the kit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[2]
HIDDEN, KV, INTERMEDIATE, RANK = 4096, 1024, 14336, 16
MAX_LORAS = 16
TUNED_M = (32, 1)  # the batch rows first: the budget may end the search
DEFAULT_M = (256, 4096)
# (num_slices, k) of the shrinks and (hidden sizes of the slices) of the expands, per layer.
SHRINKS = ((3, HIDDEN), (1, HIDDEN), (2, HIDDEN), (1, INTERMEDIATE))
EXPANDS = ((HIDDEN, KV, KV), (HIDDEN,), (INTERMEDIATE, INTERMEDIATE), (HIDDEN,))
SHRINK_GRID = {
    "block_m": (16, 32),
    "block_n": (16,),
    "block_k": (128, 256),
    "split_k": (16, 32, 64),
    "num_warps": (4,),
    "num_stages": (2,),
}
EXPAND_GRID = {
    "block_m": (16, 32),
    "block_n": (64, 128, 256),
    "block_k": (16,),
    "num_warps": (4,),
    "num_stages": (2,),
}


def grid(space: dict[str, tuple[int, ...]]) -> list[dict[str, Any]]:
    keys = sorted(space)
    return [
        {**dict(zip(keys, values, strict=True)), "num_ctas": 1, "max_nreg": None}
        for values in itertools.product(*(space[k] for k in keys))
    ]


def nest(entries: dict[tuple[int, int, int, int, int], dict[str, Any]]) -> dict[str, Any]:
    """{(max_loras, num_slices, m, k, n): config} as vLLM's nested JSON."""
    out: dict[str, Any] = {}
    for (loras, slices, m, k, n), cfg in sorted(entries.items()):
        node = out
        for key in (loras, slices, m, k):
            node = node.setdefault(str(key), {})
        node[str(n)] = cfg
    return out


def run(python: str, env: dict[str, str], folder: Path, report: Path, budget: float) -> bool:
    """Tune in a child process (it holds the GPU only while it runs); True when configs exist."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [python, "-m", "bench.gpu.tune", "--out", str(folder), "--budget", str(budget)],
            env=env,
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            timeout=budget + 180,
            check=False,
        )
        report.write_text(proc.stdout[-30000:] + "\n" + proc.stderr[-8000:])
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired as exc:
        report.write_text(f"tuning timed out: {exc}")
        ok = False
    return ok and any(folder.glob("*_SHRINK.json"))


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - needs a GPU and vLLM
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=120.0)
    args = parser.parse_args(argv)

    import torch
    from triton.testing import do_bench
    from vllm.lora.ops.triton_ops import lora_expand_op, lora_shrink_op, utils

    started = time.monotonic()
    dev = torch.device("cuda")
    dtype = torch.bfloat16
    gpu = torch.cuda.get_device_name().replace(" ", "_").replace("-", "_")
    default_configs = utils.get_lora_op_configs

    def meta(m: int) -> tuple[torch.Tensor, ...]:
        slots = MAX_LORAS + 1
        mapping = torch.zeros(m, dtype=torch.int32, device=dev)
        indices = torch.arange(m, dtype=torch.int32, device=dev)
        per_lora = torch.zeros(slots, dtype=torch.int32, device=dev)
        per_lora[0] = m
        start = torch.zeros(slots + 1, dtype=torch.int32, device=dev)
        start[1:] = m
        ids = torch.full((slots,), -1, dtype=torch.int32, device=dev)
        ids[0] = 0
        no_lora = torch.tensor([False])
        active = torch.tensor([slots], dtype=torch.int32)  # as captured without specializing
        return mapping, indices, per_lora, start, ids, no_lora, active

    def timed(call: Any) -> float:
        call()
        torch.cuda.synchronize()
        return float(do_bench(call, warmup=5, rep=25, return_mode="median"))

    shrink: dict[tuple[int, int, int, int, int], dict[str, Any]] = {}
    expand: dict[tuple[int, int, int, int, int], dict[str, Any]] = {}
    lines = []
    for m in TUNED_M:
        md = meta(m)
        for slices, k in SHRINKS:
            x = torch.randn(m, k, device=dev, dtype=dtype)
            weights = [
                torch.randn(MAX_LORAS, 1, RANK, k, device=dev, dtype=dtype) * 0.01
                for _ in range(slices)
            ]
            y = torch.zeros(slices, m, RANK, device=dev, dtype=torch.float32)
            key = (MAX_LORAS + 1, slices, m, k, RANK)
            default = default_configs("shrink", MAX_LORAS + 1, m, k, RANK, slices)
            best: tuple[float, dict[str, Any]] | None = None
            base_ms = 0.0
            for cfg in [default, *grid(SHRINK_GRID)]:
                if time.monotonic() - started > args.budget:
                    break
                lora_shrink_op.get_lora_op_configs = lambda *a, _c=cfg, **kw: _c

                def call(x: Any = x, w: Any = weights, y: Any = y, md: Any = md) -> None:
                    lora_shrink_op._lora_shrink(x, w, y, *md, 1.0)

                try:
                    ms = timed(call)
                except Exception as exc:
                    lines.append(f"shrink {key} {cfg}: {exc!r}"[:300])
                    continue
                if cfg is default:
                    base_ms = ms
                if best is None or ms < best[0]:
                    best = (ms, cfg)
            if best is not None:
                shrink[key] = best[1]
                lines.append(
                    f"shrink m={m} slices={slices} k={k}: default {1000 * base_ms:.1f} us, "
                    f"best {1000 * best[0]:.1f} us {best[1]}"
                )
        for hidden in EXPANDS:
            slices = len(hidden)
            x = torch.randn(slices, m, RANK, device=dev, dtype=torch.float32) * 0.01
            weights = [
                torch.randn(MAX_LORAS, 1, h, RANK, device=dev, dtype=dtype) * 0.01 for h in hidden
            ]
            y = torch.zeros(m, sum(hidden), device=dev, dtype=dtype)
            n = max(hidden)
            key = (MAX_LORAS + 1, slices, m, RANK, n)
            default = default_configs("expand", MAX_LORAS + 1, m, n, RANK, slices, True)
            best = None
            base_ms = 0.0
            for cfg in [default, *grid(EXPAND_GRID)]:
                if time.monotonic() - started > args.budget:
                    break
                lora_expand_op.get_lora_op_configs = lambda *a, _c=cfg, **kw: _c

                def call(x: Any = x, w: Any = weights, y: Any = y, md: Any = md) -> None:
                    lora_expand_op._lora_expand(x, w, y, *md, 0, True)

                try:
                    ms = timed(call)
                except Exception as exc:
                    lines.append(f"expand {key} {cfg}: {exc!r}"[:300])
                    continue
                if cfg is default:
                    base_ms = ms
                if best is None or ms < best[0]:
                    best = (ms, cfg)
            if best is not None:
                expand[key] = best[1]
                lines.append(
                    f"expand m={m} slices={slices} n={n}: default {1000 * base_ms:.1f} us, "
                    f"best {1000 * best[0]:.1f} us {best[1]}"
                )
    # Larger batches keep vLLM's defaults (the lookup takes the nearest m).
    for m in DEFAULT_M:
        for slices, k in SHRINKS:
            cfg = default_configs("shrink", MAX_LORAS + 1, m, k, RANK, slices)
            shrink[(MAX_LORAS + 1, slices, m, k, RANK)] = cfg
        for hidden in EXPANDS:
            n, slices = max(hidden), len(hidden)
            cfg = default_configs("expand", MAX_LORAS + 1, m, n, RANK, slices, True)
            expand[(MAX_LORAS + 1, slices, m, RANK, n)] = cfg
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{gpu}_SHRINK.json").write_text(json.dumps(nest(shrink), indent=1))
    for add in ("TRUE", "FALSE"):
        (args.out / f"{gpu}_EXPAND_{add}.json").write_text(json.dumps(nest(expand), indent=1))
    lines.append(f"tuned in {time.monotonic() - started:.0f} s; files in {args.out}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

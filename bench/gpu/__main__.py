"""`python -m bench.gpu`: loraplane on a real GPU, measured (docs/performance.md).

Starts vLLM exactly as loraplane's pods do (the command, arguments and environment `builders/`
render for a BaseModelDeployment, VLLM_PLUGINS included; bench/gpu/pod.py), runs loraplane's agent
beside it where the pod would, and measures through the OpenAI API. Phases, each a few servers
started together on the one GPU, measured, then stopped:

- check (always): loraplane's residency plugin on this vLLM: the LRU scenario of
  tests/integration/test_residency.py (one GPU slot, two CPU slots, three adapters, loads then two
  rounds of requests), the agent's metrics compared with the model of vLLM's caches after each
  step (bench/gpu/lru.py); and the plugin's cost: the same rows on a server with the plugin and
  one without (VLLM_PLUGINS=""), runs interleaved.
- core: an 8B Llama shape (random bf16) at batch 32 x 512 output tokens and at batch 1: base
  requests on a LoRA engine; on-the-fly r16 (all 7 linear modules; q,v only); 1, 4 and 16
  distinct r16 adapters in one batch; maxLoras 1 against 16.
- plain: the base without LoRA; a real merge of the r16 adapter served as a plain model; with
  quant, a GPTQ int4 checkpoint of the same shape with LoRA r16 beside them.
- rank: r64 (all modules; q,v only) on a maxLoraRank 64 engine, and r16 on an engine with
  --specialize-active-lora.
- tune: vLLM's LoRA kernels with tuned configs (VLLM_TUNED_CONFIG_FOLDER, bench/gpu/tune.py)
  against the defaults.

Every server's process group is stopped before the kit returns (bench/gpu/serve.py). Results go
to OUT/results.jsonl as they are measured, tables to OUT/report.txt; server logs stay in WORK.
With --repack, vLLM comes from the kit's tarball (hack/gpu-kit.sh), unpacked into WORK/site.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gpu import load, lru, serve, stats

CHECKOUT = Path(__file__).resolve().parents[2]
PHASES = ("check", "core", "plain", "quant", "rank", "tune")
BATCH, PROMPT, OUTPUT = 32, 128, 512  # batch rows: 32 requests, 128-token prompts, 512 out
SINGLE_PROMPT, SINGLE_OUTPUT = 512, 128  # batch-1 rows
WARMUP_OUTPUT = 64
# Several 8B servers share the card: each gets a fixed KV cache (enough for the batch rows)
# instead of a share of free memory, which a neighbour's start would skew.
KV_GIB = 3
SHARED_CARD = ("--gpu-memory-utilization", "0.15", "--kv-cache-memory-bytes", str(KV_GIB * 2**30))
START_S = 200.0  # starting a group of servers: 110 to 200 s for two or three on an H100
# What the kit's environment adds to the pod's (not loraplane's: the machine's).
MACHINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}
# The repack has no FlashInfer; vLLM's default sampler would need it.
REPACK_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0"}
LOG_LINES = re.compile(
    r"loraplane|Model loading took|KV cache|Graph capturing finished|init engine|LoRA kernel"
    r"|tuned|Traceback|Error|error:|quantization|Using .*(backend|kernel)|max_num_seqs|"
    r"Starting vLLM|compile.*took|cuda graph",
    re.IGNORECASE,
)


def say(*parts: Any) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


@dataclass
class Kit:
    work: Path
    out: Path
    python: str
    env: dict[str, str]
    runs: int
    deadline: float
    records: list[stats.Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    check: bool | None = None  # the residency check's verdict
    lock: threading.Lock = field(default_factory=threading.Lock)
    ports: Iterator[int] = field(default_factory=lambda: iter(range(8100, 9000, 10)))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, text: str) -> None:
        say(text)
        with self.lock:
            self.notes.append(text)
            with (self.out / "notes.txt").open("a") as f:
                f.write(text + "\n")

    def record(self, rec: stats.Record) -> None:
        with self.lock:
            self.records.append(rec)
            with (self.out / "results.jsonl").open("a") as f:
                f.write(rec.line() + "\n")


# -- the environment: vLLM from the repack, the plugin's entry point --------------------------


def unpack(tarball: Path, work: Path) -> Path:
    site = work / "site"
    stamp = f"{tarball.name} {tarball.stat().st_size}"
    if (site / ".kit-stamp").exists() and (site / ".kit-stamp").read_text() == stamp:
        return site
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    subprocess.run(["tar", "-xJf", str(tarball), "-C", str(site)], check=True)
    (site / ".kit-stamp").write_text(stamp)
    return site


def plugin_dist(work: Path) -> Path:
    """A dist-info that declares loraplane's vLLM plugin (pyproject.toml's entry point), for a
    checkout on PYTHONPATH instead of an installed package."""
    root = work / "plugin"
    info = root / "loraplane-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loraplane\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nloraplane = loraplane.plugin:register\n"
    )
    return root


def environment(work: Path, repack: Path | None) -> dict[str, str]:
    paths = [str(plugin_dist(work)), str(CHECKOUT / "operator"), str(CHECKOUT)]
    env = {**os.environ, **MACHINE_ENV}
    if repack is not None:
        paths.insert(0, str(unpack(repack, work)))
        env.update(REPACK_ENV)
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([*paths, *([old] if old else [])])
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    return env


def versions(kit: Kit) -> dict[str, str]:
    code = (
        "import json, torch, vllm, transformers;"
        "print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__,"
        "'cuda': torch.version.cuda, 'transformers': transformers.__version__,"
        "'gpu': torch.cuda.get_device_name(), 'capability': '.'.join(map(str,"
        "torch.cuda.get_device_capability()))}))"
    )
    out = subprocess.run(
        [kit.python, "-c", code], env=kit.env, capture_output=True, text=True, check=False
    )
    found: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout else {}
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    found["nvidia-smi"] = smi
    if out.returncode:
        found["error"] = out.stderr[-2000:]
    return found


# -- servers -----------------------------------------------------------------------------------


@dataclass
class Running:
    engine: Any  # pod.Engine
    pod: Any  # pod.Pod
    vllm: Any
    agent: Any
    log: Path
    workdir: Path
    started_in: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.pod.port}"

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.pod.agent_metrics_port}/metrics"


def start_engines(kit: Kit, engines: Sequence[Any], timeout: float = 480.0) -> list[Running]:
    from bench.gpu import pod

    running: list[Running] = []
    for engine in engines:
        port = next(kit.ports)
        workdir = kit.work / "engines" / engine.name
        shutil.rmtree(workdir / "residency", ignore_errors=True)
        for sub in ("adapters", "residency"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        p = pod.render(engine, kit.python, workdir, port)
        log = kit.work / "logs" / f"{engine.name}.log"
        log.unlink(missing_ok=True)
        say(f"start {engine.name}: {' '.join(p.vllm.argv[1:])}")
        say(f"  env: {json.dumps(p.vllm.env, sort_keys=True)}")
        proc = serve.start(p.vllm, log, kit.env)
        running.append(Running(engine, p, proc, None, log, workdir))

    def wait(r: Running) -> None:
        r.started_in = serve.wait_healthy(f"{r.url}/health", r.vllm, timeout, r.log)
        say(f"{r.engine.name} healthy after {r.started_in:.0f} s")
        if r.pod.agent is not None:
            r.agent = serve.start(
                r.pod.agent, kit.work / "logs" / f"{r.engine.name}-agent.log", kit.env
            )
            serve.wait_healthy(
                r.metrics_url(), r.agent, 60, kit.work / "logs" / f"{r.engine.name}-agent.log"
            )

    with ThreadPoolExecutor(len(running)) as pool:
        errors = [f.exception() for f in [pool.submit(wait, r) for r in running]]
    failed = [(r, e) for r, e in zip(running, errors, strict=True) if e is not None]
    if failed:
        stop_engines(running)
        raise RuntimeError("; ".join(f"{r.engine.name}: {e}" for r, e in failed))
    return running


def stop_engines(running: Sequence[Running]) -> None:
    procs = [p for r in running for p in (r.agent, r.vllm) if p is not None]
    threads = [threading.Thread(target=serve.stop, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def log_lines(kit: Kit, r: Running) -> list[str]:
    try:
        lines = r.log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[:400] for line in lines if LOG_LINES.search(line)]


def save_logs(kit: Kit, running: Sequence[Running]) -> None:
    with (kit.out / "server-logs.txt").open("a") as f:
        for r in running:
            f.write(f"== {r.engine.name} (healthy after {r.started_in:.0f} s)\n")
            lines = log_lines(kit, r)
            f.write("\n".join(lines[:150]) + "\n")


@contextlib.contextmanager
def engines_up(kit: Kit, engines: Sequence[Any]) -> Iterator[dict[str, Running]]:
    running = start_engines(kit, engines)
    try:
        yield {r.engine.name: r for r in running}
    finally:
        for r in running:
            with contextlib.suppress(Exception):
                mib = serve.group_memory_mib(r.vllm)
                kit.note(f"{r.engine.name}: {mib} MiB of GPU memory (nvidia-smi, its processes)")
        save_logs(kit, running)
        stop_engines(running)


def load_adapter(r: Running, name: str, path: Path) -> None:
    status, body = serve.request(
        "POST", f"{r.url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}
    )
    if status != 200:
        raise RuntimeError(f"{r.engine.name}: loading {name}: {status} {body[:300]}")


def stored(r: Running, name: str, source: Path) -> Path:
    """The adapter in the pod's store layout, <adapters>/<name>/<version>/, as the agent keeps
    it (hard links: no copy)."""
    version = r.workdir / "adapters" / name / hashlib.sha256(name.encode()).hexdigest()[:16]
    if not version.exists():
        version.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, version, copy_function=os.link)
    return version


# -- measuring ---------------------------------------------------------------------------------


def measure_batch(
    kit: Kit, phase: str, r: Running, row: str, models: Sequence[str], run: int | None
) -> None:
    if run is None:  # warm-up
        load.batch(r.url, models, BATCH, PROMPT, WARMUP_OUTPUT, VOCAB)
        return
    b = load.batch(r.url, models, BATCH, PROMPT, OUTPUT, VOCAB, seed=run + 1)
    kit.record(
        stats.Record(
            phase,
            r.engine.name,
            row,
            "batch",
            run,
            {"tokens_per_s": b.tokens_per_s, "ms_per_step": b.ms_per_step},
            {"tokens": b.tokens},
        )
    )
    say(
        f"  {r.engine.name} | {row} | run {run}: {b.tokens_per_s:.0f} tok/s, "
        f"{b.ms_per_step:.2f} ms/step"
    )


def measure_single(kit: Kit, phase: str, r: Running, row: str, model: str, run: int | None) -> None:
    s = load.single(
        r.url,
        model,
        SINGLE_PROMPT,
        SINGLE_OUTPUT if run is not None else 16,
        VOCAB,
        seed=(run or 0) + 1,
    )
    if run is None:
        return
    kit.record(
        stats.Record(
            phase, r.engine.name, row, "single", run,
            {"ttft_ms": s.ttft_ms, "ms_per_token": s.ms_per_token}, {"tokens": s.tokens},
        )
    )  # fmt: skip
    say(
        f"  {r.engine.name} | {row} | b1 run {run}: ttft {s.ttft_ms:.1f} ms, "
        f"{s.ms_per_token:.2f} ms/token"
    )


def interleaved(
    kit: Kit,
    phase: str,
    cases: Sequence[tuple[Running, str, Sequence[str]]],
    load_kind: str = "batch",
    runs: int | None = None,
) -> None:
    """Warm each case once, then run 0 of every case, run 1 of every case, ...: drifts of the
    card fall on all of them alike."""
    n = runs or kit.runs

    def one(case: tuple[Running, str, Sequence[str]], run: int | None) -> None:
        r, row, models = case
        if load_kind == "batch":
            measure_batch(kit, phase, r, row, models, run)
        else:
            measure_single(kit, phase, r, row, models[0], run)

    for case in cases:
        one(case, None)
    for run in range(n):
        for case in cases:
            one(case, run)


# -- the residency check -----------------------------------------------------------------------


def scrape(url: str) -> dict[lru.Key, float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = serve.request("GET", url, timeout=10)
    if status != 200:
        raise RuntimeError(f"{url}: {status}")
    samples = [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(body)
        for s in family.samples
    ]
    return lru.scraped(samples)


def residency_check(kit: Kit, r: Running, adapters: dict[str, Path]) -> bool:
    """The CPU test's scenario on this engine, step by step against the LRU model."""
    caches = lru.Caches(r.engine.max_loras, r.engine.max_cpu_loras or r.engine.max_loras)
    names = tuple(adapters)
    ok = True
    lines = [
        f"residency check on {r.engine.name}: gpu slots {caches.gpu_slots}, "
        f"cpu slots {caches.cpu_slots}"
    ]
    for i, (what, name) in enumerate(lru.scenario(names)):
        if what == "load":
            load_adapter(r, name, stored(r, name, adapters[name]))
        else:
            load.completion(r.url, name, load.prompt_ids(16, VOCAB, i), 12)
        caches.use(name)
        want = caches.metrics()
        got: dict[lru.Key, float] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = scrape(r.metrics_url())
            if got == want:
                break
            time.sleep(0.1)
        diff = lru.differences(got, want)
        tiers = " ".join(f"{n}={caches.tier(n)}" for n in names if n in caches.counts)
        lines.append(
            f"  step {i + 1} {what} {name}: "
            f"{'match' if not diff else 'DIFFER ' + repr(diff)} [{tiers}]"
        )
        ok = ok and not diff
    counts = {n: dict(c) for n, c in caches.counts.items()}
    lines.append(f"  final counts (model = agent): {json.dumps(counts, sort_keys=True)}")
    log = r.log.read_text(errors="replace")
    on = "loraplane residency on" in log
    off = [line for line in log.splitlines() if "loraplane residency off" in line]
    lines.append(f"  plugin log: residency on={on}, off lines={off[:3]}")
    ok = ok and on and not off
    lines.append(f"  RESULT: {'PASS' if ok else 'FAIL'}")
    for line in lines:
        kit.note(line)
    return ok


# -- phases ------------------------------------------------------------------------------------

VOCAB = 128256


@dataclass
class Models:
    base: Path
    adapters: dict[str, Path]
    merged: Path | None = None
    gptq: Path | None = None


def build_models(kit: Kit, phases: Sequence[str], model_dir: Path | None) -> Models:
    from bench.gpu import models

    root = kit.work / "models"
    started = time.monotonic()
    base = model_dir or models.build_base(root / "llama-8b")
    say(
        f"base model {base} ({models.size_gib(base):.2f} GiB) "
        f"after {time.monotonic() - started:.0f} s"
    )
    specs: dict[str, tuple[int, Sequence[str], int]] = {
        f"r16-all-{i:02d}": (16, models.ALL_MODULES, 100 + i) for i in range(16)
    }
    specs["r16-qv"] = (16, models.QV_MODULES, 200)
    if "rank" in phases:
        specs["r64-all"] = (64, models.ALL_MODULES, 300)
        specs["r64-qv"] = (64, models.QV_MODULES, 301)
    adapters = {
        name: models.build_adapter(root / "adapters" / name, rank, mods, seed=seed)
        for name, (rank, mods, seed) in specs.items()
    }
    say(f"{len(adapters)} adapters after {time.monotonic() - started:.0f} s")
    found = Models(base, adapters)
    if "plain" in phases:
        found.merged = models.merge(base, adapters["r16-all-00"], root / "llama-8b-merged-r16")
        say(f"merged after {time.monotonic() - started:.0f} s")
    if "quant" in phases:
        found.gptq = models.build_gptq(root / "llama-8b-gptq-int4")
        say(
            f"gptq ({models.size_gib(found.gptq):.2f} GiB) after {time.monotonic() - started:.0f} s"
        )
    return found


def engine(name: str, model: Path, **kw: Any) -> Any:
    from bench.gpu import pod

    extra = SHARED_CARD + tuple(kw.pop("extra", ()))
    return pod.Engine(name=name, model=str(model), extra_args=extra, **kw)


def lora_engine(name: str, model: Path, **kw: Any) -> Any:
    kw = {"max_loras": 16, "max_cpu_loras": 16, "max_lora_rank": 16, **kw}
    return engine(name, model, **kw)


R16 = "r16-all-00"
MULTI = {
    1: [R16],
    4: [f"r16-all-{i:02d}" for i in range(4)],
    16: [f"r16-all-{i:02d}" for i in range(16)],
}


@dataclass
class Phase:
    """Servers started together, then measured by `measure`, then stopped."""

    name: str
    engines: list[Any]
    measure: Callable[[Kit, dict[str, Running]], None]
    estimate_s: float  # measuring, not starting


def check_phase(m: Models, core: bool) -> Phase:
    """The plugin's residency check (maxLoras 1 and 2 CPU slots), its cost (a server with the
    plugin and its twin without), and with core the rest of the LoRA engine's rows."""

    def measure(kit: Kit, up: dict[str, Running]) -> None:
        check = {n: m.adapters[n] for n in ("r16-all-00", "r16-qv", "r16-all-01")}
        kit.check = residency_check(kit, up["lora1"], check)
        for name in ("lora16", "lora16-noplugin"):
            for a in [*MULTI[16], "r16-qv"]:
                load_adapter(up[name], a, stored(up[name], a, m.adapters[a]))
        pair = (up["lora16"], up["lora16-noplugin"])
        cases = []
        for row, models_ in (
            ("base on LoRA engine", ["base"]),
            ("r16 all modules x1", MULTI[1]),
            ("r16 all modules x16 distinct", MULTI[16]),
        ):
            cases += [(r, row, models_) for r in pair]
        interleaved(kit, "check", cases)
        if not core:
            return
        interleaved(
            kit,
            "core",
            [
                (up["lora16"], "r16 q,v only x1", ["r16-qv"]),
                (up["lora16"], "r16 all modules x4 distinct", MULTI[4]),
                (up["lora1"], "base on LoRA engine", ["base"]),
                (up["lora1"], "r16 all modules x1", [R16]),
            ],
        )
        interleaved(
            kit,
            "core",
            [
                (up["lora16"], "base on LoRA engine", ["base"]),
                (up["lora16"], "r16 all modules x1", [R16]),
                (up["lora16-noplugin"], "r16 all modules x1", [R16]),
            ],
            load_kind="single",
        )
        same = outputs_agree(up["lora16"], up["lora16-noplugin"], ["base", R16, "r16-qv"])
        kit.note(f"greedy outputs with the plugin and without: {same}")

    engines = [
        lora_engine("lora16", m.base, agent=True),
        lora_engine("lora16-noplugin", m.base, plugin=False),
        lora_engine("lora1", m.base, max_loras=1, max_cpu_loras=2, agent=True),
    ]
    return Phase("check", engines, measure, 200.0 if core else 100.0)


def outputs_agree(a: Running, b: Running, models_: Sequence[str]) -> str:
    results = []
    for model in models_:
        texts = []
        for r in (a, b):
            body = {
                "model": model,
                "prompt": load.prompt_ids(32, VOCAB, 7),
                "max_tokens": 24,
                "temperature": 0,
            }
            status, text = serve.request("POST", f"{r.url}/v1/completions", body)
            texts.append(
                json.loads(text)["choices"][0]["text"] if status == 200 else f"HTTP {status}"
            )
        results.append(f"{model}: {'same' if texts[0] == texts[1] else 'differ'}")
    return ", ".join(results)


def plain_phase(m: Models, quant: bool) -> Phase:
    """The base without LoRA, the merge served as a plain model, and the GPTQ base with LoRA."""
    assert m.merged is not None
    engines = [
        engine("base-nolora", m.base, lora=False),
        engine("merged-r16", m.merged, lora=False, served_name="merged"),
    ]
    if quant:
        assert m.gptq is not None
        engines.append(lora_engine("gptq-int4-lora16", m.gptq))

    def measure(kit: Kit, up: dict[str, Running]) -> None:
        batch: list[tuple[Running, str, Sequence[str]]] = [
            (up["base-nolora"], "base, no --enable-lora", ["base"]),
            (up["merged-r16"], "r16 merged into the weights", ["merged"]),
        ]
        if quant:
            gptq = up["gptq-int4-lora16"]
            load_adapter(gptq, R16, m.adapters[R16])
            batch += [(gptq, "base on LoRA engine", ["base"]), (gptq, "r16 all modules x1", [R16])]
        interleaved(kit, "plain", batch)
        interleaved(kit, "plain", batch, load_kind="single")

    return Phase("plain", engines, measure, 150.0 if quant else 90.0)


def rank_phase(m: Models) -> Phase:
    """Rank 64 on a maxLoraRank 64 engine, and maxLoras 16 with --specialize-active-lora."""

    def measure(kit: Kit, up: dict[str, Running]) -> None:
        for a in (R16, "r64-all", "r64-qv"):
            load_adapter(up["lora16-rank64"], a, m.adapters[a])
        for a in MULTI[16]:
            load_adapter(up["lora16-specialized"], a, m.adapters[a])
        interleaved(
            kit,
            "rank",
            [
                (up["lora16-rank64"], "base on LoRA engine", ["base"]),
                (up["lora16-rank64"], "r16 all modules x1", [R16]),
                (up["lora16-rank64"], "r64 all modules x1", ["r64-all"]),
                (up["lora16-rank64"], "r64 q,v only x1", ["r64-qv"]),
                (up["lora16-specialized"], "r16 all modules x1", [R16]),
                (up["lora16-specialized"], "r16 all modules x16 distinct", MULTI[16]),
            ],
        )
        interleaved(
            kit,
            "rank",
            [
                (up["lora16-rank64"], "r64 all modules x1", ["r64-all"]),
                (up["lora16-specialized"], "r16 all modules x1", [R16]),
            ],
            load_kind="single",
        )

    engines = [
        lora_engine("lora16-rank64", m.base, max_lora_rank=64),
        # vLLM launches the LoRA kernels for maxLoras + 1 adapters under CUDA graphs unless
        # told to capture a graph per count of active adapters.
        lora_engine("lora16-specialized", m.base, extra=("--specialize-active-lora",)),
    ]
    return Phase("rank", engines, measure, 120.0)


def tune_phase(kit: Kit, m: Models) -> Phase | None:
    """vLLM's LoRA kernels with configs tuned on this card against the defaults."""
    from bench.gpu import tune

    folder = kit.work / "tuned"
    started = time.monotonic()
    ok = tune.run(kit.python, kit.env, folder, kit.out / "tune.txt", budget=120.0)
    kit.note(f"tuning: {ok} after {time.monotonic() - started:.0f} s (configs in {folder})")
    if not ok:
        return None

    def measure(kit: Kit, up: dict[str, Running]) -> None:
        for r in up.values():
            load_adapter(r, R16, m.adapters[R16])
        cases = [
            (r, row, ms)
            for row, ms in (
                ("r16 all modules x1", [R16]),
                ("r16 all modules x16 distinct", MULTI[16]),
            )
            for r in up.values()
        ]
        for r in up.values():
            for a in MULTI[16][1:]:
                load_adapter(r, a, m.adapters[a])
        interleaved(kit, "tune", cases)
        interleaved(kit, "tune", cases[:2], load_kind="single")
        for r in up.values():
            lines = [x for x in log_lines(kit, r) if "LoRA kernel" in x or "tuned" in x]
            kit.note(f"{r.engine.name}: " + "; ".join(lines)[:600])

    engines = [
        lora_engine("lora16-tuned", m.base, env={"VLLM_TUNED_CONFIG_FOLDER": str(folder)}),
        lora_engine("lora16-default", m.base),
    ]
    return Phase("tune", engines, measure, 130.0)


def engine_gib(e: Any, models_gib: dict[str, float]) -> float:
    """A rough GPU memory need of one engine: weights, the fixed KV cache, LoRA slots (84 MiB
    per slot per 16 of rank for the 8B shape), activations and CUDA graphs."""
    slots = 0.082 * e.max_loras * e.max_lora_rank / 16 if e.lora else 0.0
    return models_gib.get(e.model, 16.0) + KV_GIB + slots + 3.0


def groups(
    phases: Sequence[Phase], card_gib: float, models_gib: dict[str, float]
) -> list[list[Phase]]:
    """Consecutive phases whose servers fit on the card together start together."""
    out: list[list[Phase]] = []
    used = card_gib
    for phase in phases:
        need = sum(engine_gib(e, models_gib) for e in phase.engines)
        if out and used + need <= 0.92 * card_gib:
            out[-1].append(phase)
            used += need
        else:
            out.append([phase])
            used = need
    return out


def run_group(kit: Kit, group: Sequence[Phase]) -> bool:
    engines = [e for p in group for e in p.engines]
    ok = True
    with engines_up(kit, engines) as up:
        for phase in group:
            t0 = time.monotonic()
            try:
                phase.measure(kit, up)
            except Exception as exc:
                ok = False
                kit.note(f"phase {phase.name} failed: {exc!r}")
                traceback.print_exc()
            say(f"phase {phase.name} took {time.monotonic() - t0:.0f} s")
    return ok


def card_gib() -> float:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return int(out[0]) / 1024 if out and out[0].isdigit() else 80.0


# -- the report --------------------------------------------------------------------------------


def report(kit: Kit, info: dict[str, str]) -> str:
    summaries = stats.summarize(kit.records)
    parts = [
        f"# bench.gpu on {info.get('gpu', '?')} ({info.get('nvidia-smi', '')})",
        json.dumps(info, sort_keys=True),
        "",
    ]
    for phase in PHASES:
        recs = [r for r in kit.records if r.phase == phase]
        if not recs:
            continue
        s = stats.summarize(recs)
        parts += [f"## {phase}", stats.table(s, "batch"), "", stats.table(s, "single"), ""]
    pairs = {
        row: stats.paired(kit.records, "lora16", "lora16-noplugin", row, "tokens_per_s")
        for row in ("base on LoRA engine", "r16 all modules x1", "r16 all modules x16 distinct")
    }
    parts.append("## plugin on / off (tokens/s, run by run)")
    for row, ratios in pairs.items():
        if ratios:
            parts.append(
                f"- {row}: median {statistics.median(ratios):.4f} "
                f"({100 * (statistics.median(ratios) - 1):+.2f}%), "
                f"runs {', '.join(f'{x:.4f}' for x in ratios)}"
            )
    parts += ["", "## notes", *kit.notes]
    del summaries
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repack", type=Path, help="the kit's vLLM tarball (hack/gpu-kit.sh)")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/loraplane/gpu")
    parser.add_argument("--out", type=Path, help="results and tables (default: WORK/out)")
    parser.add_argument(
        "--phases", default="check,core,plain,quant,rank", help=f"of {','.join(PHASES)}"
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs per row (median)")
    parser.add_argument("--deadline-s", type=float, default=3600.0, help="start no phase after")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip the check phase (only to split one run over calls, after one that ran it)",
    )
    parser.add_argument("--model", type=Path, help="serve this model instead of the random 8B")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    args.out = args.out or args.work / "out"
    phases = [p for p in args.phases.split(",") if p]
    if "check" not in phases and not args.no_check:
        phases.insert(0, "check")  # the kit always checks the plugin
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    serve.install_cleanup()
    started = time.monotonic()
    env = environment(args.work, args.repack)
    kit = Kit(args.work, args.out, args.python, env, args.runs, started + args.deadline_s)
    say(f"environment ready after {time.monotonic() - started:.0f} s")
    info = versions(kit)
    say(f"versions: {info}")
    failed = False
    try:
        m = build_models(kit, phases, args.model)
        from bench.gpu import models

        sizes = {str(p): models.size_gib(p) for p in (m.base, m.merged, m.gptq) if p is not None}
        planned = [check_phase(m, "core" in phases)] if "check" in phases else []
        if "plain" in phases:
            planned.append(plain_phase(m, "quant" in phases))
        if "rank" in phases:
            planned.append(rank_phase(m))
        if "tune" in phases:
            tuned = tune_phase(kit, m)
            if tuned is not None:
                planned.append(tuned)
        queue = groups(planned, card_gib(), sizes)
        while queue:
            group = queue.pop(0)
            need = START_S + sum(p.estimate_s for p in group)
            if kit.left() < need and len(group) > 1:
                queue.insert(0, [group.pop()])  # the group without its last phase may fit
                queue.insert(0, group)
                continue
            names = "+".join(p.name for p in group)
            if kit.left() < need:
                kit.note(f"{names}: not run ({kit.left():.0f} s left, needs about {need:.0f})")
                continue
            t0 = time.monotonic()
            failed = not run_group(kit, group) or failed
            say(f"{names} took {time.monotonic() - t0:.0f} s")
    except Exception as exc:
        failed = True
        kit.note(f"failed: {exc!r}")
        traceback.print_exc()
    finally:
        serve.stop_all()
        text = report(kit, info)
        (args.out / "report.txt").write_text(text + "\n")
        print(text, flush=True)
        # The kit's own process holds a CUDA context when it built the models.
        left = {pid: mib for pid, mib in serve.gpu_memory_mib().items() if pid != os.getpid()}
        say(
            f"GPU compute processes left: {left or 'none'}; "
            f"total {time.monotonic() - started:.0f} s"
        )
    return 1 if failed or kit.check is False else 0


if __name__ == "__main__":
    sys.exit(main())

"""Figures of a benchmark that do not depend on the machine it ran on, and the machine's own.

Wall times on a shared 2-core machine move with whatever else runs; CPU-seconds per unit of work,
API writes per adapter and calls per pod do not. Beside them: the machine's load and steal over
the same window, and a fixed calibration workload, so that two runs on different days compare.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A fixed pure-Python loop: about 0.2 s of one core here, long beside timer noise, short beside
# a run. Never change it: its time is what compares one day's machine with another's.
CALIBRATION_LOOPS = 2_000_000
CALIBRATION_RUNS = 3  # the best of three: the least disturbed by whatever else runs
PROFILE_RATE = 100  # samples per second: py-spy's default
PY_SPY = "py-spy==0.4.3"  # the version whose speedscope output summarize() reads
TOP = 25  # entries of a profile's summary


def calibrate() -> str:
    """The calibration workload: the best wall and CPU time of a fixed loop in this process."""
    best_wall = best_cpu = float("inf")
    for _ in range(CALIBRATION_RUNS):
        wall, cpu = time.perf_counter(), time.process_time()
        x = 0
        for i in range(CALIBRATION_LOOPS):
            x += i * i % 7
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return (
        f"calibration ({CALIBRATION_LOOPS:,} Python loop iterations, best of "
        f"{CALIBRATION_RUNS}): {best_wall * 1000:.0f} ms wall, {best_cpu * 1000:.0f} ms CPU"
    )


@dataclass(frozen=True)
class Machine:
    """/proc/stat's CPU ticks (all cores) and the load average, at one moment."""

    ticks: tuple[int, ...]  # user nice system idle iowait irq softirq steal
    load: str

    @classmethod
    def now(cls) -> Machine:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return cls(tuple(int(t) for t in first), load)

    def since(self, before: Machine) -> str:
        d = [a - b for a, b in zip(self.ticks, before.ticks, strict=True)]
        total = sum(d) or 1
        busy = total - d[3] - d[4]
        return (
            f"machine: {busy / total:.0%} busy of {os.cpu_count()} cores, steal "
            f"{d[7] / total:.1%}, iowait {d[4] / total:.1%}; load average {self.load} "
            f"(before {before.load})"
        )


def per_adapter(counts: Counter[str], adapters: int) -> str:
    """Every key, largest first, as a count and per adapter."""
    if not counts:
        return "none"
    return ", ".join(
        f"{k} {v} ({v / adapters:.2f})" for k, v in counts.most_common() if v and adapters
    )


def events(core: Any, namespace: str) -> dict[str, tuple[str, int]]:
    """Every Event of the namespace: uid -> (component/reason, how many times it happened)."""
    out: dict[str, tuple[str, int]] = {}
    for e in core.list_namespaced_event(namespace).items:
        who = e.reporting_component or (e.source.component if e.source else None) or "?"
        times = (e.series.count if e.series else None) or e.count or 1
        out[e.metadata.uid] = (f"{who}/{e.reason}", int(times))
    return out


def events_between(
    before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]
) -> Counter[str]:
    out: Counter[str] = Counter()
    for uid, (what, n) in after.items():
        out[what] += n - before.get(uid, (what, 0))[1]
    return +out


# The operator's own counters worth a figure: reconciles by kind, its writes, its calls.
_OPERATOR_SERIES = re.compile(
    r"^(?P<name>loraplane_reconcile_duration_seconds_count|loraplane_kube_api_writes_total|"
    r"loraplane_agent_api_calls_total|loraplane_vllm_api_calls_total|loraplane_pod_syncs_total|"
    r"loraplane_status_computations_total)"
    r"\{(?P<labels>[^}]*)\} (?P<v>\S+)$",
    re.M,
)


def operator_counters(port: int = 8080) -> Counter[str]:
    """One scrape of the operator's /metrics, only between windows: at 10,000 adapters a scrape
    is seconds of the operator's CPU."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as resp:
        text = resp.read().decode()
    out: Counter[str] = Counter()
    for m in _OPERATOR_SERIES.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        name = m["name"]
        if name.startswith("loraplane_reconcile"):
            key = f"reconcile {labels.get('kind')}"
        elif name.startswith("loraplane_kube"):
            key = f"write {labels.get('resource')} {labels.get('verb')}"
        elif name.startswith("loraplane_pod_syncs"):
            key = f"pod sync {labels.get('result')}"
        elif name.startswith("loraplane_status_computations"):
            key = f"status {labels.get('kind')} {labels.get('outcome')}"
        else:
            key = f"{name.split('_')[1]} {labels.get('endpoint')}"
        out[key] += int(float(m["v"]))
    return out


def status_computations(d: Counter[str]) -> str:
    """What the operator's counters tell of its adapter status computations."""
    computed = d["reconcile LoRAAdapter"]
    outcomes = {o: d[f"status LoRAAdapter {o}"] for o in ("written", "unchanged", "deferred")}
    if not any(outcomes.values()):  # an operator from before the counter
        written = sum(v for k, v in d.items() if k.startswith("write loraadapters/status"))
        return f"adapter status computations {computed}, of them written {written}"
    told = ", ".join(f"{o} {n}" for o, n in outcomes.items())
    return f"adapter status computations {computed}: {told}"


class Profile:
    """py-spy attached to a running process, sampling until stopped; its speedscope file, its
    collapsed stacks (flamegraph.pl, speedscope) and a top-N summary under `out`."""

    def __init__(self, pid: int, out: Path, name: str) -> None:
        self.out, self.name = out, name
        self.proc: subprocess.Popen[bytes] | None = None
        exe = py_spy()
        if exe is None:
            print(f"[profile {name}] skipped: py-spy could not be installed")
            return
        out.mkdir(parents=True, exist_ok=True)
        self.file = out / f"{name}.speedscope.json"
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(PROFILE_RATE),
                # Sampling without pausing the operator: the profile must not slow what it shows.
                "--nonblocking",
                "--format",
                "speedscope",
                "--output",
                str(self.file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(out / f"{name}.py-spy.log").open("wb"),
        )

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return f"[profile {self.name}] py-spy did not finish"
        if not self.file.exists():
            return f"[profile {self.name}] no profile written; see {self.name}.py-spy.log"
        return summarize(
            self.file, self.out / f"{self.name}.folded", self.out / f"{self.name}-top.txt"
        )


def py_spy() -> str | None:
    """py-spy from the venv or PATH, else installed from PyPI for the benchmarks alone (under
    $LORAPLANE_HOME/tools, not the venv: nothing but a benchmark profiles)."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found:
        return found
    from tests.support.cache import loraplane_home

    target = loraplane_home() / "tools" / "py-spy"
    exe = target / "bin" / "py-spy"
    if not exe.exists():
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
        subprocess.run([*pip, PY_SPY], check=False)
    return str(exe) if exe.exists() else None


def summarize(speedscope: Path, folded: Path, top: Path) -> str:
    """Self and total samples per function, the largest first; the stacks folded."""
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]

    def label(i: int) -> str:
        f = frames[i]
        where = Path(f.get("file") or "?")
        return f"{f['name']} ({'/'.join(where.parts[-2:])}:{f.get('line', '?')})"

    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    stacks: Counter[str] = Counter()
    samples = 0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            n = int(weight) or 1
            samples += n
            names = [label(i) for i in stack]
            if names:
                own[names[-1]] += n
            for name in set(names):
                total[name] += n
            stacks[";".join(names)] += n
    folded.write_text("".join(f"{s} {n}\n" for s, n in stacks.most_common()))
    lines = [f"{speedscope.name}: {samples} samples at {PROFILE_RATE}/s"]
    lines.append(f"  top {TOP} by own samples (% of all):")
    lines += [f"    {n / samples:6.1%}  {name}" for name, n in own.most_common(TOP)]
    lines.append(f"  top {TOP} by total samples, callees included (% of all):")
    lines += [f"    {n / samples:6.1%}  {name}" for name, n in total.most_common(TOP)]
    text = "\n".join(lines) if samples else f"{speedscope.name}: no samples"
    top.write_text(text + "\n")
    return text

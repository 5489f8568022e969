"""`make bench`: adapter benchmarks on the real local cluster with CPU vLLM pods.

`python -m bench [single] [fifty] [recovery] [merge]` runs only those (all by default; merge
first, with no cluster: bench/merge.py). The operator runs with its trace on: each burst's
timeline is printed from it (bench/timeline.py).

Prints, for each benchmark, the measured times and the ratio that matters, all from one run (the
machine is shared and noisy, so only same-run comparisons mean anything).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import merge, timeline
from tests.integration.cluster import (
    VLLM_PROCESS,
    Cluster,
    container_pid,
    pod_ready,
    post_text,
    served_adapters,
    wait_for,
)
from tests.integration.manifests import ADAPTER_SOURCES, lora_adapter, tiny_base_model
from tests.integration.operator_process import OperatorProcess
from tests.support.adapters import ensure_adapters, ensure_many_adapters
from tests.support.cache import loraplane_home
from tests.support.tinymodel import ensure_tiny_model

NS = "bench"
# Before each measurement: the engines' CPU after loads (their OpenMP threads spin on) ends.
QUIET_SECONDS = 2.0
SINGLE_RUNS = 7  # creates of one adapter, each after raw loads of another: a median of pairs
BASE = "tiny"
SELECTOR = f"loraplane.dev/base-model={BASE}"


def cluster_up(home: Path) -> Cluster:
    repo = Path(__file__).resolve().parent.parent
    subprocess.run(["bash", str(repo / "hack" / "cluster.sh"), "up"], check=True)
    versions = dict(
        line.split("=", 1)
        for line in (repo / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    bins = home / "bin"
    c = Cluster(
        home,
        home / "kubeconfig",
        bins / f"kubectl-{versions['KUBERNETES_VERSION']}" / "kubectl",
        bins / f"helm-{versions['HELM_VERSION']}" / "helm",
    )
    c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(repo / "crds"))
    return c


def ready_pods(c: Cluster) -> list[dict[str, Any]]:
    return [
        p
        for p in c.list("pods", NS, SELECTOR)
        if pod_ready(p) and not p["metadata"].get("deletionTimestamp")
    ]


def wait_pods(c: Cluster, n: int) -> list[dict[str, Any]]:
    return wait_for(
        f"{n} ready pods", lambda: (p := ready_pods(c)) and len(p) == n and p, timeout=900
    )


class ReadyWatch:
    """A watch on the bench namespace's adapters, opened before anything is created, that
    records when each adapter is first seen Ready on all pods (polling with kubectl would add its
    own start-up time to every sample)."""

    def __init__(self, c: Cluster) -> None:
        from kubernetes import client, config, watch

        self.api = client.CustomObjectsApi(config.new_client_from_config(str(c.kubeconfig)))
        self.ready_at: dict[str, tuple[str, float]] = {}
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(1.0)  # the stream is open

    def _run(self) -> None:
        try:
            self._stream()
        except Exception:  # the stream breaks when stop() closes it
            return

    def _stream(self) -> None:
        for event in self._watch.stream(
            self.api.list_namespaced_custom_object,
            "loraplane.dev",
            "v1alpha1",
            NS,
            "loraadapters",
        ):
            obj = event["object"]
            status = obj.get("status") or {}
            name = obj["metadata"]["name"]
            if event["type"] == "DELETED":
                self.ready_at.pop(name, None)
            elif status.get("phase") == "Ready" and name not in self.ready_at:
                self.ready_at[name] = (str(status.get("ready")), time.monotonic())

    def wait(self, names: set[str], pods: int, start: float, timeout: float) -> float:
        """Seconds from `start` until every adapter of `names` was Ready on `pods` pods."""
        deadline = time.monotonic() + timeout
        want = f"{pods}/{pods}"
        while time.monotonic() < deadline:
            seen = {n: t for n, (r, t) in self.ready_at.items() if n in names and r == want}
            if len(seen) == len(names):
                return max(seen.values()) - start
            time.sleep(0.01)
        raise TimeoutError(f"not Ready within {timeout}s")

    def stop(self) -> None:
        self._watch.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


GROUPS = (
    ("operator", "loraplane.main"),
    ("kube-apiserver", "kube-apiserver"),
    ("etcd", "etcd"),
    ("process node", "processnode"),
    ("fake pods", "-m fakepods"),
    ("py-spy", "py-spy"),
    ("bench", "-m bench"),
)
# Pods' containers by the cgroup the process node gives each: /loraplane/<pod uid>/<container>
# (vLLM's engine processes rename themselves, so their command lines do not say).
CONTAINER_GROUPS = {"vllm": "vLLM", "agent": "agents"}


def group_of(pid: str) -> str:
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "/loraplane/" in cgroup:
        container = cgroup.strip().rsplit("/", 1)[-1]
        group = CONTAINER_GROUPS.get(container, f"pods' {container}")
        if group == "vLLM":  # its engine process names itself VLLM::EngineCore
            group += " engine" if "EngineCore" in cmd else " API server"
        return group
    return next((g for g, marker in GROUPS if marker in cmd), "other")


def cpu_by_group() -> dict[str, float]:
    """CPU seconds used so far by the processes of each group (see GROUPS), and `other`."""
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            group, used = group_of(proc.name), cpu_seconds(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        out[group] = out.get(group, 0.0) + used
    return out


def cpu_report(before: dict[str, float], after: dict[str, float], seconds: float) -> str:
    used = {g: after.get(g, 0.0) - before.get(g, 0.0) for g in after}
    parts = [f"{g} {s:.1f}" for g, s in sorted(used.items(), key=lambda kv: -kv[1]) if s >= 0.05]
    total = sum(max(s, 0.0) for s in used.values())
    cores = os.cpu_count() or 1
    return (
        f"  CPU seconds over the {seconds:.2f}s (of {seconds * cores:.1f} the {cores} cores "
        f"had; processes that ended are not counted): {', '.join(parts)}; total {total:.1f}"
    )


def raw_loads(ips: list[str], name: str, path: str) -> float:
    """Wall time of loading `name` from `path` on every server at once, straight to vLLM."""

    def one(ip: str) -> None:
        post_text(f"http://{ip}:8000/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(ips)) as pool:
        list(pool.map(one, ips))
    elapsed = time.monotonic() - start
    for ip in ips:
        post_text(f"http://{ip}:8000/v1/unload_lora_adapter", {"lora_name": name})
    return elapsed


def bench_single_adapter(c: Cluster, op: OperatorProcess) -> None:
    pods = wait_pods(c, 3)
    ips = [p["status"]["podIP"] for p in pods]
    watcher = ReadyWatch(c)
    api = watcher.api
    raws, creates = [], []
    for i in range(SINGLE_RUNS):
        raws.append(raw_loads(ips, f"raw-probe-{i}", f"{ADAPTER_SOURCES}/rank16"))
        body = lora_adapter(f"single-{i}", BASE, f"{ADAPTER_SOURCES}/rank8")
        time.sleep(QUIET_SECONDS)
        offset, wall = op.log_size(), time.time()
        start = time.monotonic()
        api.create_namespaced_custom_object("loraplane.dev", "v1alpha1", NS, "loraadapters", body)
        creates.append(watcher.wait({f"single-{i}"}, 3, start, timeout=120))
    time.sleep(1.0)  # the last trace lines are flushed
    trace = timeline.spans(op.log_since(offset))
    last = timeline.report("[single adapter, 3 pods, last create]", trace, wall, creates[-1])
    start = time.monotonic()
    c.apply(lora_adapter("single-kubectl", BASE, f"{ADAPTER_SOURCES}/rank8"), NS)
    with_kubectl = watcher.wait({"single-kubectl"}, 3, start, timeout=120)
    watcher.stop()
    raw, took = statistics.median(raws), statistics.median(creates)
    over = statistics.median(c - r for c, r in zip(creates, raws, strict=True))
    print(
        f"[single adapter, 3 pods] create->Ready {took:.3f}s (median of {SINGLE_RUNS}: "
        f"{', '.join(f'{x:.3f}' for x in creates)}); raw parallel vLLM loads {raw:.3f}s "
        f"({', '.join(f'{x:.3f}' for x in raws)}); overhead (median of each create minus the "
        f"raw loads just before it) {over:.3f}s; ratio {took / raw:.1f}x; through `kubectl apply` "
        f"(process start and discovery included) {with_kubectl:.2f}s"
    )
    print(last)
    c.kubectl("delete", "lora", "--all", "-n", NS)


def raw_burst(ips: list[str], paths: dict[str, str]) -> float:
    """Wall time of loading every adapter of `paths` straight into every server, each server
    taking them four at a time (the operator's default per pod), all servers at once."""

    def server(ip: str) -> None:
        def one(item: tuple[str, str]) -> None:
            body = {"lora_name": f"raw-{item[0]}", "lora_path": item[1]}
            post_text(f"http://{ip}:8000/v1/load_lora_adapter", body)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(one, paths.items()))

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(ips)) as pool:
        list(pool.map(server, ips))
    elapsed = time.monotonic() - start
    for ip in ips:
        for name in paths:
            post_text(f"http://{ip}:8000/v1/unload_lora_adapter", {"lora_name": f"raw-{name}"})
    return elapsed


def bench_fifty(c: Cluster, op: OperatorProcess, home: Path) -> None:
    c.kubectl("scale", "bmd", BASE, "-n", NS, "--replicas=2")
    wait_for("2 pods", lambda: len(c.list("pods", NS, SELECTOR)) == 2, timeout=300)
    pods = wait_pods(c, 2)
    dirs = ensure_many_adapters(home, 50)
    names = {d.name for d in dirs}
    paths = {d.name: f"{ADAPTER_SOURCES}/many/{d.name}" for d in dirs}
    groups = cpu_by_group()
    raw = raw_burst([p["status"]["podIP"] for p in pods], paths)
    time.sleep(QUIET_SECONDS)
    print(f"[50 adapters at once, 2 pods] raw loads:\n{cpu_report(groups, cpu_by_group(), raw)}")
    bodies = [lora_adapter(n, BASE, path) for n, path in paths.items()]
    assert op.proc is not None
    watcher = ReadyWatch(c)
    groups = cpu_by_group()
    time.sleep(3.0)
    idle = cpu_report(groups, cpu_by_group(), 3.0)
    print(f"[50 adapters at once, 2 pods] before the burst, nothing to do:\n{idle}")
    cpu0 = cpu_seconds(op.proc.pid)
    groups = cpu_by_group()
    offset, wall = op.log_size(), time.time()
    start = time.monotonic()

    def create(body: dict[str, Any]) -> None:
        watcher.api.create_namespaced_custom_object(
            "loraplane.dev", "v1alpha1", NS, "loraadapters", body
        )

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(create, bodies))
    created = time.monotonic() - start
    took = watcher.wait(names, 2, start, timeout=900)
    cpu = cpu_seconds(op.proc.pid) - cpu0
    groups_used = cpu_report(groups, cpu_by_group(), took)
    print(
        f"[50 adapters at once, 2 pods] create->all Ready {took:.2f}s (the creates took "
        f"{created:.2f}s); raw vLLM loads of the same 50 on both pods {raw:.2f}s; ratio "
        f"{took / raw:.1f}x; operator CPU {cpu:.1f}s = {cpu / took:.0%} of one core"
    )
    time.sleep(1.0)  # the last trace lines are flushed
    trace = timeline.spans(op.log_since(offset))
    print(timeline.report("[50 adapters at once, 2 pods]", trace, wall, took))
    print(groups_used)
    # The same burst as a user sends it: one `kubectl apply` creating them one after another.
    c.kubectl("delete", "lora", "--all", "-n", NS)
    start = time.monotonic()
    c.apply(bodies, NS)
    applied = time.monotonic() - start
    took = watcher.wait(names, 2, start, timeout=900)
    watcher.stop()
    print(
        f"[50 adapters by one kubectl apply, 2 pods] apply->all Ready {took:.2f}s, of which "
        f"kubectl itself {applied:.2f}s"
    )


def bench_recovery(c: Cluster) -> None:
    pod = ready_pods(c)[0]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    expected = set(served_adapters(ip))
    pid = container_pid(pod, VLLM_PROCESS)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://{ip}:8000/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    wait_for("vLLM down", lambda: not healthy(), timeout=30, interval=0.05)
    wait_for("vLLM healthy again", healthy, timeout=900, interval=0.1)
    vllm_back = time.monotonic()
    wait_for(
        "adapters back", lambda: expected <= set(served_adapters(ip)), timeout=300, interval=0.1
    )
    adapters_back = time.monotonic()
    wait_for(
        "pod Ready", lambda: pod_ready(c.get("pod", name, NS) or {}), timeout=120, interval=0.1
    )
    ready = time.monotonic()
    restart = vllm_back - killed
    print(
        f"[recovery, {len(expected)} adapters] vLLM restart {restart:.1f}s; adapters back "
        f"{adapters_back - vllm_back:.2f}s after health; pod Ready {ready - killed:.1f}s after "
        f"the kill; recovery adds {(adapters_back - vllm_back) / restart:.1%} to the restart"
    )


def main() -> int:
    asked = set(sys.argv[1:]) or {"single", "fifty", "recovery", "merge"}
    if "merge" in asked:
        merge.main()  # two vLLM servers of its own: before the cluster's pods take the cores
    if not asked - {"merge"}:
        return 0
    home = loraplane_home()
    ensure_tiny_model(home)
    ensure_adapters(home)
    c = cluster_up(home)
    op = OperatorProcess(c, env={"LORAPLANE_TRACE": "true"})
    op.start()  # first: it holds the finalizers of adapters a previous run may have left
    try:
        c.kubectl(
            "delete", "namespace", NS, "--wait=true", "--timeout=300s", check=False, timeout=330
        )
        c.kubectl("create", "namespace", NS)
        base = tiny_base_model(BASE, home, replicas=3)
        # BENCH_VLLM_ENV="NAME=value ..." adds to the vLLM container's env (an experiment).
        for pair in os.environ.get("BENCH_VLLM_ENV", "").split():
            name, value = pair.split("=", 1)
            base["spec"]["engine"]["env"].append({"name": name, "value": value})
        c.apply(base, NS)
        chosen = asked
        if "single" in chosen:
            bench_single_adapter(c, op)
        if "fifty" in chosen:
            bench_fifty(c, op, home)
        if "recovery" in chosen:
            bench_recovery(c)
    finally:
        # With the operator still running, so the adapters' finalizers are honoured.
        c.kubectl(
            "delete", "namespace", NS, "--wait=true", "--timeout=300s", check=False, timeout=330
        )
        op.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

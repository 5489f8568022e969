"""`make bench-scale`: the operator at fleet scale, on the real API server and etcd.

10 BaseModelDeployments x 10 pods x up to 1,000 adapters each: 10,000 LoRAAdapters and 100,000
registrations. The operator is the real one, run on the host as in the integration tests. Two
modes (BENCH_SCALE_MODE):

- `operator` (the default): the pods' side answers from one cheap process, `hack/fakepods`
  (named as a fake everywhere): the pods are real Pod objects, scheduled by the real scheduler
  onto a fake node whose kubelet that process is, each with an address of 198.18.0.0/16 served
  by it; their vLLM is hack/fakevllm's app and their agent follows the agent's protocol. So the
  operator and the API server have the cores, and what is measured is the operator.
- `realistic`: each pod runs its real agent sidecar and a `hack/fakevllm` server on the process
  node, which follows the contract measured in DESIGN.md §4 (status codes, bodies, error types,
  10-20 ms serialised loads, every runtime adapter lost on a restart).

The operator's side of the conversation (agent apply, `/v1/models`) is the code that
talks to real pods in both. Prints wall times with the machine's load, steal and a calibration
loop beside them, and figures that do not depend on the machine: operator CPU per registration
and per adapter-minute, API writes per adapter, Events by reason, watch events, calls per pod,
RSS per 1,000 adapters; py-spy profiles of each cold start and steady state under
$LORAPLANE_HOME/bench-scale/. Asserts nothing about time. Not part of `make test`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import measure
from bench.__main__ import cluster_up, cpu_by_group, cpu_report, cpu_seconds
from loraplane.handlers.pods import POD_LABELS
from tests.integration.cluster import Cluster, Timeout, container_pid, pod_ready, wait_for
from tests.integration.manifests import ADAPTER_SOURCES, lora_adapter, tiny_base_model
from tests.integration.operator_process import OperatorProcess
from tests.support.adapters import ensure_many_adapters
from tests.support.cache import loraplane_home
from tests.support.tinymodel import ensure_tiny_model

NS = "scale"
BASES = 10
PODS = 10  # per base model
MODE = os.environ.get("BENCH_SCALE_MODE", "operator")
if MODE not in ("operator", "realistic"):
    sys.exit(f"BENCH_SCALE_MODE={MODE!r}: operator or realistic")
OPERATOR_ONLY = MODE == "operator"
# Adapters per base model: 1,000, 3,000 and 10,000 in all (BENCH_SCALE_SIZES="20": a smoke run).
SIZES = tuple(
    int(n)
    for n in os.environ.get(
        "BENCH_SCALE_SIZES", "1000" if OPERATOR_ONLY else "100 300 1000"
    ).split()
)
SOURCES = 50  # distinct adapter directories the adapters are spread over
# Operator-only: a window after each cold start, two resyncs and status sweeps long (60 s each),
# for the per-adapter-minute part of the CPU; realistic: one window at the end, as it always was.
STEADY_SECONDS = float(
    os.environ.get("BENCH_SCALE_STEADY_SECONDS", "120" if OPERATOR_ONLY else "300")
)
PROFILE = os.environ.get("BENCH_SCALE_PROFILE", "1") != "0"
FAKE_NODE = "loraplane-fake-node"
FAKE_NODE_TAINT = "loraplane.dev/fake-node"  # hack/fakepods/node.py
FAKEPODS_CONTROL = "127.0.0.1:8099"
# How long a cold start may take before the run reports how far it got and ends.
COLD_START_TIMEOUT = float(os.environ.get("BENCH_SCALE_COLD_START_TIMEOUT", "2400"))
FAKE_IMAGE = "loraplane/fakevllm:bench"
RESYNC_SECONDS = 60.0  # the operator's defaults, as a user runs it
GROUP, VERSION, PLURAL = "loraplane.dev", "v1alpha1", "loraadapters"
OPERATOR_ENV = {
    "LORAPLANE_RESYNC_SECONDS": str(RESYNC_SECONDS),
    "LORAPLANE_RESIDENCY_INTERVAL_SECONDS": "60",
    "LORAPLANE_AGENT_TIMEOUT_SECONDS": "120",
    # The operator's default, over the integration tests' pages of two (OperatorProcess): a
    # start would otherwise list 10,000 adapters in 5,000 requests.
    "LORAPLANE_LIST_CHUNK_SIZE": "500",
}
# The fake agent's routes as the operator's counters name them (loraplane_agent_api_calls_total).
AGENT_ROUTES = {
    "POST /v1/adapters/apply": "agent apply",
    "PUT /v1/required": "agent required",
    "POST /v1/adapters/prune": "agent prune",
    "GET /v1/residency": "agent residency",
}
LOAD = "POST /v1/load_lora_adapter"
POLLER_SECONDS = {"AIBrix (10 s)": 10.0, "production-stack (60 s)": 60.0}


def base_name(b: int) -> str:
    return f"fleet-{b}"


def adapter_name(b: int, i: int) -> str:
    return f"{base_name(b)}-{i:04d}"


def source(i: int) -> str:
    return f"{ADAPTER_SOURCES}/many/many-{i % SOURCES:03d}"


def fake_base_model(name: str, home: Path) -> dict[str, Any]:
    body = tiny_base_model(name, home, replicas=PODS)
    body["spec"]["engine"] = {"image": FAKE_IMAGE, "startupTimeoutSeconds": 120}
    body["spec"]["adapterStore"] = {"emptyDir": {"sizeLimit": "1Gi"}}
    if OPERATOR_ONLY:
        template = body["spec"]["template"]
        template["nodeSelector"] = {"kubernetes.io/hostname": FAKE_NODE}
        template["tolerations"] = [
            {"key": FAKE_NODE_TAINT, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ]
    return body


class FakePods:
    """hack/fakepods: the fake node and every pod's servers in one process (operator-only)."""

    def __init__(self, c: Cluster) -> None:
        self.cluster = c
        self.log = c.home / "logs" / "fakepods.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        repo = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": f"{repo / 'hack'}:{repo / 'operator'}"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fakepods",
                    "--kubeconfig",
                    str(self.cluster.kubeconfig),
                    "--node-name",
                    FAKE_NODE,
                    "--control",
                    FAKEPODS_CONTROL,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                sys.exit(f"fakepods exited at start; see {self.log}")
            try:
                self.stats()
            except OSError:
                return False
            node = self.cluster.get("node", FAKE_NODE, "") or {}
            return any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions") or []
            )

        wait_for("the fake node", up, timeout=60, interval=0.5)

    def stats(self) -> dict[str, Any]:
        got: dict[str, Any] = get_json(f"http://{FAKEPODS_CONTROL}/fakepods/stats")
        return got

    def restart(self, pod: str) -> None:
        body = json.dumps({"namespace": NS, "name": pod}).encode()
        request = urllib.request.Request(
            f"http://{FAKEPODS_CONTROL}/fakepods/restart", data=body, method="POST"
        )
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # A node nobody heartbeats turns NotReady: gone with its process.
        self.cluster.kubectl("delete", "node", FAKE_NODE, "--ignore-not-found", check=False)


class Api:
    def __init__(self, c: Cluster) -> None:
        from kubernetes import client, config

        conf = client.Configuration()
        config.load_kube_config(str(c.kubeconfig), client_configuration=conf)
        conf.connection_pool_maxsize = 32
        self.cluster = c
        self.raw = client.ApiClient(conf)
        self.custom = client.CustomObjectsApi(self.raw)
        self.core = client.CoreV1Api(self.raw)

    def create_adapters(self, names: Iterable[tuple[str, str]]) -> float:
        todo = list(names)

        def one(item: tuple[str, str]) -> None:
            body = lora_adapter(item[0], item[0].rsplit("-", 1)[0], item[1])
            self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, todo))
        return time.monotonic() - start

    def adapters(self) -> list[dict[str, Any]]:
        got = self.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
        items: list[dict[str, Any]] = got["items"]
        return items

    def pods(self) -> list[Any]:
        return list(self.core.list_namespaced_pod(NS).items)

    def writes(self) -> Counter[str]:
        """The API server's count of writes so far, by resource (its own /metrics); a refused
        one is counted as `<resource> refused` (a conflict, an invalid object)."""
        text = self.cluster.kubectl("get", "--raw", "/metrics").stdout
        out: Counter[str] = Counter()
        pattern = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<v>\S+)$")
        for line in text.splitlines():
            m = pattern.match(line)
            if m is None:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
            if labels.get("verb") not in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
                continue
            what = labels.get("resource", "")
            if labels.get("subresource"):
                what += "/" + labels["subresource"]
            if int(labels.get("code") or 0) >= 400:
                what += " refused"
            out[what] += int(float(m["v"]))
        return out


class Watches:
    """Watches beside the operator's, with its selectors, open for the whole run: which adapters
    are Ready on every current pod of their base, and how many watch events the API server sent
    for adapters and for the base models' pods (what the operator's own watches were sent; kopf
    may fold an object's events within its batch window, and the operator counts none itself)."""

    def __init__(self, api: Api, pods: int) -> None:
        from kubernetes import watch

        self.api = api
        self.want = f"{pods}/{pods}"
        self.current: set[str] = set()  # the pods a Ready status must name
        self.last: dict[str, tuple[bool, tuple[str, ...]]] = {}  # (Ready everywhere, its pods)
        self.ready: set[str] = set()
        self.events: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._watches = [watch.Watch(), watch.Watch()]
        for target in (self._adapters, self._pods):
            threading.Thread(target=self._forever, args=(target,), daemon=True).start()

    def _forever(self, target: Any) -> None:
        while self._watches:
            try:
                target()
            except Exception:  # a closed or expired stream: open it again, unless stopped
                time.sleep(1.0)

    def _adapters(self) -> None:
        stream = self._watches[0].stream(
            self.api.custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL
        )
        for event in stream:
            obj = event["object"]
            status = obj.get("status") or {}
            name = obj["metadata"]["name"]
            ok = (
                event["type"] != "DELETED"
                and status.get("phase") == "Ready"
                and status.get("ready") == self.want
            )
            pods = tuple(p.get("name", "") for p in status.get("pods") or [])
            with self.lock:
                self.events[f"LoRAAdapter {event['type']}"] += 1
                self.last[name] = (ok, pods)
                self._judge(name)

    def _pods(self) -> None:
        selector = ",".join(f"{k}={v}" for k, v in POD_LABELS.items())
        stream = self._watches[1].stream(
            self.api.core.list_namespaced_pod, NS, label_selector=selector
        )
        for event in stream:
            with self.lock:
                self.events[f"Pod {event['type']}"] += 1

    def _judge(self, name: str) -> None:
        """Ready on every current pod: a status the operator wrote before the pods were
        replaced names the old ones, and does not count."""
        ok, pods = self.last.get(name, (False, ()))
        if ok and pods and set(pods) <= self.current:
            self.ready.add(name)
        else:
            self.ready.discard(name)

    def expect(self, pods: set[str]) -> None:
        with self.lock:
            self.current = set(pods)
            for name in list(self.last):
                self._judge(name)

    def count(self) -> int:
        with self.lock:
            return len(self.ready)

    def seen(self) -> Counter[str]:
        with self.lock:
            return Counter(self.events)

    def wait(self, n: int, timeout: float) -> float:
        start = time.monotonic()
        wait_for(f"{n} adapters Ready", lambda: self.count() >= n, timeout=timeout, interval=0.2)
        return time.monotonic() - start

    def stop(self) -> None:
        watches, self._watches = self._watches, []
        for w in watches:
            w.stop()


class Sampler:
    """Peak RSS and CPU of one process, sampled every second in a thread; with `progress`
    (adapters Ready so far), the RSS beside it, to tell memory held per adapter from a backlog."""

    def __init__(self, pid: int, progress: Callable[[], int] | None = None) -> None:
        self.pid = pid
        self.peak_rss = 0
        self.cpu0 = cpu_seconds(pid)
        self.progress = progress
        self.samples: list[tuple[float, int, int]] = []  # (seconds, RSS, Ready)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            now = rss(self.pid)
            self.peak_rss = max(self.peak_rss, now)
            if self.progress is not None:
                self.samples.append((time.monotonic() - self._started, now, self.progress()))

    def course(self) -> str:
        """RSS and adapters Ready at each fifth of the run."""
        if not self.samples:
            return "no samples"
        picks = [
            self.samples[min(len(self.samples) - 1, len(self.samples) * k // 5)]
            for k in range(1, 6)
        ]
        return ", ".join(f"{t:.0f}s {r / 2**20:.0f} MB ({n} Ready)" for t, r, n in picks)

    def stop(self) -> tuple[float, int]:
        """(CPU seconds since the start, peak RSS in bytes)."""
        self._stop.set()
        self.peak_rss = max(self.peak_rss, rss(self.pid))
        return cpu_seconds(self.pid) - self.cpu0, self.peak_rss


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def load_avg() -> str:
    return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class Calls:
    """What the fake vLLM servers were asked by callers outside their pods (the operator; the
    node's probes ask only /health) and inside them (the agent: its loads and its readiness
    check), summed over servers, and the operator's own counters."""

    vllm: Counter[str]
    per_pod_loads: dict[str, int]
    agent: Counter[str]
    in_pod: Counter[str]

    def loads(self) -> int:
        """vLLM loads, whoever asked: the agents (loopback) or, before them, the operator."""
        return self.vllm[LOAD] + self.in_pod[LOAD]

    def minus(self, other: Calls) -> Calls:
        loads = {p: n - other.per_pod_loads.get(p, 0) for p, n in self.per_pod_loads.items()}
        return Calls(
            self.vllm - other.vllm, loads, self.agent - other.agent, self.in_pod - other.in_pod
        )


def fake_stats(ips: dict[str, str]) -> tuple[Counter[str], dict[str, int], Counter[str]]:
    """(remote calls, loads per pod, loopback calls) of every fake server."""

    def one(item: tuple[str, str]) -> tuple[str, dict[str, dict[str, int]]]:
        return item[0], get_json(f"http://{item[1]}:8000/fakevllm/stats")

    remote: Counter[str] = Counter()
    loopback: Counter[str] = Counter()
    loads: dict[str, int] = {}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for pod, stats in pool.map(one, ips.items()):
            outside = stats["remote"]
            remote.update({k: v for k, v in outside.items() if not k.endswith("/fakevllm/stats")})
            loopback.update(stats["loopback"])
            # The agent loads over loopback; an operator of before this change, from outside.
            loads[pod] = outside.get(LOAD, 0) + stats["loopback"].get(LOAD, 0)
    return remote, loads, loopback


def adapters_held(ips: dict[str, str]) -> int:
    """Registrations the fake servers hold now, all pods together."""
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        held = pool.map(
            lambda ip: get_json(f"http://{ip}:8000/fakevllm/stats")["adapters"], ips.values()
        )
        return sum(int(n) for n in held)


def operator_counters(port: int = 8080) -> Counter[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    out: Counter[str] = Counter()
    for m in re.finditer(
        r'^loraplane_(agent|vllm)_api_calls_total\{endpoint="(\w+)"\} (\S+)$', text, re.M
    ):
        out[f"{m[1]} {m[2]}"] = int(float(m[3]))
    return out


class Bench:
    def __init__(self) -> None:
        self.home = loraplane_home()
        ensure_tiny_model(self.home)
        ensure_many_adapters(self.home, SOURCES)
        self.c = cluster_up(self.home)
        self.api = Api(self.c)
        self.op = OperatorProcess(self.c, env=OPERATOR_ENV)
        self.fake = FakePods(self.c) if OPERATOR_ONLY else None
        self.watches: Watches | None = None
        self.size = 0  # adapters per base model that exist now
        self.empty_rss = 0  # the operator's, with the base models and their pods only
        self.out = self.home / "bench-scale" / time.strftime("%Y%m%d-%H%M%S")

    # -- the fleet ---------------------------------------------------------------------------

    def ips(self) -> dict[str, str]:
        return {
            p.metadata.name: p.status.pod_ip
            for p in self.api.pods()
            if p.status.pod_ip and not p.metadata.deletion_timestamp
        }

    def servers_up(self) -> int:
        """Pods whose both containers (fake vLLM and agent) run and pass their probes."""
        n = 0
        for p in self.api.pods():
            statuses = p.status.container_statuses or []
            waiting = [s for s in statuses if s.state and s.state.waiting]
            if any(s.state.waiting.reason == "ImageNotMapped" for s in waiting):
                sys.exit(
                    f"{p.metadata.name}: the process node does not know {FAKE_IMAGE}; restart "
                    "it so it reads hack/processnode/images.py again: hack/cluster.sh down && "
                    "hack/cluster.sh up"
                )
            if not p.metadata.deletion_timestamp and len(statuses) == 2:
                n += all(s.ready for s in statuses)
        return n

    def setup(self) -> None:
        if self.fake is not None:
            self.fake.start()  # first: its pods of a previous run go only through it
        self.op.start()  # first: it holds the finalizers of adapters a previous run left
        self.c.kubectl(
            "delete", "namespace", NS, "--wait=true", "--timeout=600s", check=False, timeout=630
        )
        self.c.kubectl("create", "namespace", NS)
        started = time.monotonic()
        self.c.apply([fake_base_model(base_name(b), self.home) for b in range(BASES)], NS)
        want = BASES * PODS
        wait_for(f"{want} pods Ready", lambda: self.ready_pods() == want, timeout=900, interval=1)
        took = time.monotonic() - started
        self.watches = Watches(self.api, PODS)
        time.sleep(5.0)  # the operator's last writes of the start land
        self.empty_rss = rss(self.pid())
        if self.fake is not None:
            assert self.fake.proc is not None
            pid = self.fake.proc.pid
            sides = f"the fake pods' one process {rss(pid) / 2**20:.0f} MB RSS"
        else:
            pod = self.c.get("pod", self.api.pods()[0].metadata.name, NS) or {}
            fake, agent = container_pid(pod, "fakevllm"), container_pid(pod, "loraplane-agent")
            sides = (
                f"one pod's fake vLLM {rss(fake) / 2**20:.0f} MB and agent "
                f"{rss(agent) / 2**20:.0f} MB RSS"
            )
        print(
            f"[setup, {MODE} mode] {want} pods of {BASES} base models Ready in {took:.0f}s; "
            f"{sides}; the operator with no adapter {self.empty_rss / 2**20:.0f} MB RSS; "
            f"{load_avg()}"
        )
        self.op.stop()

    def ready_pods(self) -> int:
        return sum(
            1
            for p in self.c.list("pods", NS)
            if pod_ready(p) and not p["metadata"].get("deletionTimestamp")
        )

    def fresh_servers(self) -> None:
        """New pods (nothing registered, empty stores), with the operator stopped."""
        self.c.kubectl("delete", "pods", "--all", "-n", NS, "--wait=false", timeout=600)
        want = BASES * PODS

        def settled() -> bool:
            return len(self.api.pods()) == want and self.servers_up() == want

        wait_for(f"{want} fresh pods", settled, timeout=900, interval=2)

    def grow(self, size: int) -> float:
        """Create adapters until every base model has `size` (the operator may be stopped)."""
        todo = [
            (adapter_name(b, i), source(i)) for b in range(BASES) for i in range(self.size, size)
        ]
        took = self.api.create_adapters(todo)
        self.size = size
        return took

    def calls(self) -> Calls:
        if self.fake is None:
            vllm, loads, in_pod = fake_stats(self.ips())
            return Calls(vllm, loads, operator_counters(), in_pod)
        vllm, agent, in_pod = Counter[str](), Counter[str](), Counter[str]()
        loads: dict[str, int] = {}
        for pod, st in self.fake.stats()["pods"].items():
            if st["namespace"] != NS:
                continue
            vllm.update({k: v for k, v in st["vllm"].items() if not k.endswith("/fakevllm/stats")})
            agent.update({AGENT_ROUTES.get(k, k): v for k, v in st["agent"].items()})
            # Its kubelet judges the agent's readiness in process: only the agent's loads.
            in_pod.update(st["inPod"])
            loads[pod] = st["inPod"].get(LOAD, 0) + st["vllm"].get(LOAD, 0)
        return Calls(vllm, loads, agent, in_pod)

    def pid(self) -> int:
        assert self.op.proc is not None
        return self.op.proc.pid

    def profile(self, name: str) -> measure.Profile | None:
        return measure.Profile(self.pid(), self.out, name) if PROFILE else None

    # -- the measurements --------------------------------------------------------------------

    def cold_start(self, size: int) -> dict[str, Any]:
        """From an operator start to every adapter Ready on all pods of its base."""
        assert self.watches is not None
        self.op.stop()
        created = self.grow(size)
        self.fresh_servers()
        total = size * BASES
        self.watches.expect(set(self.ips()))
        calibration = measure.calibrate()
        writes0, groups0 = self.api.writes(), cpu_by_group()
        events0, seen0 = measure.events(self.api.core, NS), self.watches.seen()
        time.sleep(1.0)
        machine0 = measure.Machine.now()
        start = time.monotonic()
        self.op.start()
        profile = self.profile(f"cold-start-{total}")
        sampler = Sampler(self.pid(), self.watches.count)
        try:
            self.watches.wait(total, timeout=COLD_START_TIMEOUT)
        except Timeout:
            took = time.monotonic() - start
            cpu, peak = sampler.stop()
            top = profile.stop() if profile else ""
            held = adapters_held(self.ips())
            print(
                f"[cold start, {total} adapters, {total * PODS} registrations] NOT all Ready "
                f"after {took:.0f}s: {self.watches.count()} adapters Ready on every pod, {held} "
                f"registrations held by the servers ({held / took:.0f}/s); operator CPU "
                f"{cpu:.0f}s, peak RSS {peak / 2**20:.0f} MB; {load_avg()}\n"
                f"{cpu_report(groups0, cpu_by_group(), took)}\n{top}"
            )
            raise
        took = time.monotonic() - start
        cpu, peak = sampler.stop()
        machine = measure.Machine.now().since(machine0)
        top = profile.stop() if profile else ""
        groups = cpu_report(groups0, cpu_by_group(), took)
        time.sleep(2.0)  # what is in flight lands
        calls = self.calls()
        writes = self.api.writes() - writes0
        events = measure.events_between(events0, measure.events(self.api.core, NS))
        seen = self.watches.seen() - seen0
        counters = measure.operator_counters()  # after the CPU sample: a scrape costs the operator
        registrations = total * PODS
        row = {
            "adapters": total,
            "registrations": registrations,
            "seconds": took,
            "created": created,
            "loads": calls.loads(),
            "models": calls.vllm["GET /v1/models"],
            "applies": calls.agent["agent apply"],
            "writes": sum(writes.values()),
            "status_writes": writes["loraadapters/status"],
            "cpu": cpu,
            "rss": peak,
            "load": load_avg(),
            "counters": counters,
        }
        pods = BASES * PODS
        print(
            f"[cold start, {total} adapters, {registrations} registrations] all Ready "
            f"{took:.1f}s after the operator started ({registrations / took:.0f} "
            f"registrations/s); vLLM loads {row['loads']}, GET /v1/models {row['models']}, "
            f"agent applies {row['applies']}; API writes {row['writes']} "
            f"({_top(writes)}); operator CPU {cpu:.0f}s, peak RSS {peak / 2**20:.0f} MB; "
            f"{row['load']} (the creates, before, took {created:.0f}s)\n{groups}\n"
            f"  {machine}; before it, {calibration}\n"
            f"  operator CPU per 1,000 registrations {cpu / registrations * 1000:.2f}s "
            f"({cpu / registrations * 1000:.2f} ms each)\n"
            f"  API writes by resource, all writers (per adapter): "
            f"{measure.per_adapter(writes, total)}\n"
            f"  Events by component/reason (per adapter): {measure.per_adapter(events, total)}\n"
            f"  watch events sent to the operator's watches (per adapter): "
            f"{measure.per_adapter(seen, total)}\n"
            f"  {measure.status_computations(counters)}\n"
            f"  calls per pod: {_per_pod(calls, pods)}\n"
            f"  RSS above the operator with no adapter: {(peak - self.empty_rss) / 2**20:.0f} MB "
            f"peak = {(peak - self.empty_rss) / 2**20 / (total / 1000):.1f} MB per 1,000 adapters; "
            f"over the cold start: {sampler.course()}"
        )
        if top:
            print(top)
        return row

    def steady(self, row: dict[str, Any]) -> None:
        """A window with nothing to do; its CPU per adapter-minute splits the cold start's CPU
        of `row` (same size) into a part per registration and a part per adapter-minute."""
        assert self.watches is not None
        before, writes0 = self.calls(), self.api.writes()
        events0, seen0 = measure.events(self.api.core, NS), self.watches.seen()
        counters0: Counter[str] = row["counters"]  # one scrape fewer: nothing ran since
        machine0 = measure.Machine.now()
        profile = self.profile(f"steady-{self.size * BASES}")
        sampler = Sampler(self.pid())
        time.sleep(STEADY_SECONDS)
        cpu, peak = sampler.stop()
        machine = measure.Machine.now().since(machine0)
        top = profile.stop() if profile else ""
        after, writes = self.calls(), self.api.writes() - writes0
        events = measure.events_between(events0, measure.events(self.api.core, NS))
        seen = self.watches.seen() - seen0
        counters = measure.operator_counters() - counters0
        d = after.minus(before)
        minutes = STEADY_SECONDS / 60
        pods = BASES * PODS
        adapters = self.size * BASES
        per_min = {k: v / minutes for k, v in d.vllm.items() if v}
        agent_min = {k: v / minutes for k, v in d.agent.items() if v and k.startswith("agent")}
        in_pod_min = {k: v / minutes for k, v in d.in_pod.items() if v}
        per_adapter_minute = cpu / (adapters * minutes)
        cold_idle = per_adapter_minute * adapters * row["seconds"] / 60
        per_registration = (row["cpu"] - cold_idle) / row["registrations"]
        row["per_registration"], row["per_adapter_minute"] = per_registration, per_adapter_minute
        print(
            f"[steady state, {adapters} adapters, {STEADY_SECONDS / 60:.0f} min] vLLM "
            f"calls per minute from outside the pods: {_rates(per_min)} (one GET /v1/models "
            f"per pod per {RESYNC_SECONDS:.0f}s resync is {pods * 60 / RESYNC_SECONDS:.0f}); "
            f"operator's agent calls per minute: {_rates(agent_min) or 'none'}; in-pod vLLM calls "
            f"per minute (the agents' readiness checks, probed every 2 s): "
            f"{_rates(in_pod_min) or 'none'}; API writes per "
            f"minute: {sum(writes.values()) / minutes:.1f} ({_top(writes) or 'none'}); operator "
            f"CPU {cpu:.1f}s = {cpu / STEADY_SECONDS:.1%} of a core, RSS {peak / 2**20:.0f} MB; "
            f"{load_avg()}\n"
            f"  {machine}\n"
            f"  operator CPU per adapter-minute {per_adapter_minute * 1000:.2f} ms; the cold "
            f"start's {row['cpu']:.0f}s split: {cold_idle:.0f}s for its "
            f"{adapters * row['seconds'] / 60:,.0f} adapter-minutes, "
            f"{row['cpu'] - cold_idle:.0f}s for its {row['registrations']} registrations = "
            f"{per_registration * 1000:.2f} ms each ({per_registration * 1000:.2f}s per 1,000)\n"
            f"  API writes by resource, all writers: {measure.per_adapter(writes, adapters)}\n"
            f"  Events by component/reason: {measure.per_adapter(events, adapters)}\n"
            f"  watch events sent to the operator's watches: "
            f"{measure.per_adapter(seen, adapters)}\n"
            f"  {measure.status_computations(counters)}\n"
            f"  RSS above the operator with no adapter: {(peak - self.empty_rss) / 2**20:.0f} MB "
            f"= {(peak - self.empty_rss) / 2**20 / (adapters / 1000):.1f} MB per 1,000 adapters"
        )
        if top:
            print(top)

    def operator_restart(self) -> None:
        before, writes0 = self.calls(), self.api.writes()
        self.op.stop()
        machine0 = measure.Machine.now()
        start = time.monotonic()
        self.op.start()
        pods = BASES * PODS

        def synced() -> bool:
            text = urllib.request.urlopen("http://127.0.0.1:8080/metrics", timeout=60).read()
            done = re.findall(rb'^loraplane_pod_syncs_total\{[^}]*result="ok"\} (\S+)$', text, re.M)
            return sum(float(v) for v in done) >= pods

        # Not more often: at 10,000 adapters one scrape is 300,000 samples and seconds of the
        # operator's CPU, which the restart would be measured with.
        wait_for("every pod synced", synced, timeout=600, interval=5.0)
        current = time.monotonic() - start
        time.sleep(30.0)  # anything the restart would do late
        d = self.calls().minus(before)
        writes = self.api.writes() - writes0
        print(
            f"[operator restart, everything registered] every pod synced again {current:.1f}s "
            f"after the start; in the 30s after that: vLLM loads "
            f"{d.loads()}, unloads "
            f"{d.vllm['POST /v1/unload_lora_adapter']}, agent applies {d.agent['agent apply']}, "
            f"API writes {sum(writes.values())} ({_top(writes) or 'none'}); {load_avg()}\n"
            f"  {measure.Machine.now().since(machine0)}"
        )

    def vllm_restart(self) -> None:
        pod = sorted(self.ips())[0]
        ip = self.ips()[pod]
        before = self.calls()
        killed = time.monotonic()
        if self.fake is not None:
            self.fake.restart(pod)
        else:
            os.kill(container_pid(self.c.get("pod", pod, NS) or {}, "fakevllm"), 9)

        def back() -> bool:
            try:
                got = get_json(f"http://{ip}:8000/fakevllm/stats")
            except OSError:
                return False
            return bool(got["adapters"] >= self.size)

        wait_for("the restarted server's adapters", back, timeout=600, interval=0.2)
        took = time.monotonic() - killed
        wait_for("its pod Ready", lambda: pod_ready(self.c.get("pod", pod, NS) or {}), 300)
        ready = time.monotonic() - killed
        after = self.calls()
        # The fake pods count across a restart; a killed fakevllm starts from zero.
        again = after.per_pod_loads[pod] - (before.per_pod_loads[pod] if self.fake else 0)
        others = sum(
            n - before.per_pod_loads.get(p, 0) for p, n in after.per_pod_loads.items() if p != pod
        )
        print(
            f"[one vLLM restart] {pod}: every adapter back {took:.1f}s after the kill (pod Ready "
            f"{ready:.1f}s); re-registrations on it {again} (it has {self.size}); loads on the "
            f"other {len(after.per_pod_loads) - 1} pods {others}; {load_avg()}"
        )

    def new_version(self) -> None:
        name, b = adapter_name(0, 0), 0
        before = self.calls()
        old = self.api.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        was = (old.get("status") or {}).get("adapter", {}).get("digest")
        patch = {"spec": {"source": {"path": source(SOURCES - 1)}}}
        start = time.monotonic()
        self.api.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, patch)

        def rolled_out() -> bool:
            obj = self.api.custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
            st = obj.get("status") or {}
            digest = (st.get("adapter") or {}).get("digest")
            return bool(
                digest != was and st.get("phase") == "Ready" and st.get("ready") == f"{PODS}/{PODS}"
            )

        wait_for("the new version on every pod", rolled_out, timeout=300, interval=0.1)
        took = time.monotonic() - start
        time.sleep(2.0)
        d = self.calls().minus(before)
        ours = {p for p in d.per_pod_loads if p.startswith(base_name(b) + "-")}
        print(
            f"[one adapter, new version] Ready on all {PODS} pods {took:.2f}s after the spec "
            f"changed; agent applies {d.agent['agent apply']}, vLLM loads on its base's pods "
            f"{sum(d.per_pod_loads[p] for p in ours)}, on the other pods "
            f"{sum(n for p, n in d.per_pod_loads.items() if p not in ours)}; {load_avg()}"
        )

    def teardown(self) -> None:
        """Without waiting for 10,000 unregistrations from servers that go anyway: the
        operator stops, the adapters' finalizers are removed, the namespace goes."""
        self.op.stop()
        if self.watches is not None:
            self.watches.stop()
        self.c.kubectl("delete", "namespace", NS, "--wait=false", check=False)

        def unblock(name: str) -> None:
            try:
                patch = {"metadata": {"finalizers": None}}
                self.api.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, NS, PLURAL, name, patch
                )
            except Exception:  # already gone
                return

        names = [a["metadata"]["name"] for a in self.api.adapters()]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(unblock, names))
        for b in range(BASES):
            patch = {"metadata": {"finalizers": None}}
            self.c.kubectl(
                "patch",
                "bmd",
                base_name(b),
                "-n",
                NS,
                "--type=merge",
                "-p",
                json.dumps(patch),
                check=False,
            )
        self.c.kubectl(
            "wait", "--for=delete", f"namespace/{NS}", "--timeout=600s", check=False, timeout=630
        )
        if self.fake is not None:
            self.fake.stop()  # after the namespace: its pods go only through their kubelet


def _top(writes: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in writes.most_common(5) if v)


def _rates(rates: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(rates.items()))


def _per_pod(calls: Calls, pods: int) -> str:
    """Each kind of call per pod, and the most any pod had where the servers say."""
    loads = calls.per_pod_loads.values()
    parts = [f"{k} {v / pods:.1f}" for k, v in sorted((calls.vllm + calls.agent).items()) if v]
    most = f"; most vLLM loads on one pod {max(loads)}" if loads else ""
    return ", ".join(parts) + most


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "[how cost grows] cold start to all Ready, same run; operator CPU in ms per "
        "registration, of it the part per registration and the operator's idle CPU per "
        "adapter-minute (from the steady window after it, where there was one)",
        f"  {'adapters':>9}{'registrations':>15}{'seconds':>9}{'s per 1k reg':>14}"
        f"{'vLLM loads':>12}{'applies':>9}{'API writes':>12}{'per adapter':>13}"
        f"{'peak RSS MB':>13}{'CPU s':>7}{'ms/reg':>8}{'per reg':>9}{'per ad-min':>12}",
    ]
    for r in rows:
        split = (
            f"{r['per_registration'] * 1000:>9.2f}{r['per_adapter_minute'] * 1000:>12.3f}"
            if "per_registration" in r
            else f"{'':>9}{'':>12}"
        )
        lines.append(
            f"  {r['adapters']:>9}{r['registrations']:>15}{r['seconds']:>9.1f}"
            f"{r['seconds'] / r['registrations'] * 1000:>14.2f}{r['loads']:>12}{r['applies']:>9}"
            f"{r['writes']:>12}{r['writes'] / r['adapters']:>13.2f}{r['rss'] / 2**20:>13.0f}"
            f"{r['cpu']:>7.0f}{r['cpu'] / r['registrations'] * 1000:>8.2f}{split}"
        )
    return "\n".join(lines)


def pollers(adapters: int) -> str:
    """What a poller that checks every adapter on every pod would cost: arithmetic, not a run."""
    pods = BASES * PODS
    per_pod = adapters // BASES
    ours = pods * 60 / RESYNC_SECONDS
    lines = [f"[pollers, {adapters} adapters on {pods} pods] calls per minute when nothing changes"]
    lines.append(f"  loraplane: {ours:.0f} (one GET /v1/models per pod per {RESYNC_SECONDS:.0f}s)")
    for who, period in POLLER_SECONDS.items():
        calls = per_pod * pods * 60 / period
        lines.append(f"  a poller like {who}: {calls:,.0f} ({calls / ours:,.0f}x)")
    return "\n".join(lines)


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    print(f"[machine, {MODE} mode] {measure.calibrate()}; {load_avg()}")
    bench = Bench()
    rows: list[dict[str, Any]] = []
    try:
        bench.setup()
        for size in SIZES:
            rows.append(bench.cold_start(size))
            if OPERATOR_ONLY:
                bench.steady(rows[-1])
        if not OPERATOR_ONLY:
            bench.steady(rows[-1])
        print(table(rows))
        print(pollers(bench.size * BASES))
        bench.operator_restart()
        bench.vllm_restart()
        bench.new_version()
    finally:
        bench.teardown()
        print(f"[machine, at the end] {measure.calibrate()}; {load_avg()}")
        print(f"[profiles] {bench.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

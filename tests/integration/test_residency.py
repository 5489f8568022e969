"""Engine residency on real CPU vLLM 0.32 with loraplane's plugin: with one GPU slot and a CPU
cache of two, round-robin greedy completions over three adapters evict and reload them exactly as
vLLM's LRU order implies, and the agent's metrics say so after every request, and so does vLLM's
own /metrics, in the residency feed the Endpoint Picker reads; outputs are the same with the
plugin off; a vLLM whose hooks differ serves as before, with one log line and no feed.

Three servers, started together: the plugin on (with an agent beside it, as in a pod), the
plugin off, and the plugin facing a changed hook.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.gpu.lru import Caches
from loraplane.config import env_name
from loraplane.plugin import feed, snapshot
from tests.support import VllmServer, ensure_adapters, start_vllm
from tests.support.vllm_server import free_port, http, venv_python

pytestmark = pytest.mark.vllm

GPU_SLOTS, CPU_SLOTS = 1, 2
LORA_ARGS = [
    "--enable-lora",
    "--max-lora-rank", "16",
    "--max-loras", str(GPU_SLOTS),
    "--max-cpu-loras", str(CPU_SLOTS),
]  # fmt: skip
NAMES = ("rank8", "rank16", "rank8-mlp")
POD, NAMESPACE, BASE = "tiny-0", "residency", "tiny"
# A vLLM whose LoRA manager changed under us: activate_adapter takes one more argument. Loaded
# at interpreter start in every process of that server, before the plugin looks.
CHANGED_HOOK = """\
import vllm.lora.model_manager as m

_activate = m.LRUCacheLoRAModelManager.activate_adapter


def activate_adapter(self, lora_id, slot=None):
    return _activate(self, lora_id)


m.LRUCacheLoRAModelManager.activate_adapter = activate_adapter
"""
OFF_LINE = "loraplane residency off"
log = logging.getLogger(__name__)


def feed_lines(server: VllmServer) -> list[str]:
    """vLLM's own /metrics, the lines of the residency feed."""
    body = server.get("/metrics", timeout=10).body
    return [line for line in body.splitlines() if line.startswith(feed.NAME + "{")]


@dataclass
class Engines:
    on: VllmServer
    off: VllmServer
    changed: VllmServer
    agent: subprocess.Popen[bytes]
    agent_metrics: str
    store: dict[str, Path]
    run: Path
    changed_run: Path
    # vLLM's two LRU caches, modelled as its source says they behave (the GPU kit checks the
    # same model on CUDA vLLM)
    expected: Caches = field(default_factory=lambda: Caches(GPU_SLOTS, CPU_SLOTS))
    loaded: bool = False

    def use(self, name: str, prompt: str = "The operator pushes") -> str:
        """One greedy completion through `name` on the plugin's server, counted as vLLM will."""
        answer = self.on.complete(name, prompt=prompt, max_tokens=12)
        assert answer.status == 200, answer.body
        self.expected.use(name)
        return str(answer.json()["choices"][0]["text"])

    def load_all(self) -> None:
        if self.loaded:
            return
        for name in NAMES:
            for server in (self.on, self.off):
                result = server.load_adapter(name, self.store[name])
                assert result.status == 200, result.body
            self.expected.use(name)  # the load itself reads the files and takes a slot
        self.loaded = True

    def scraped(self) -> dict[tuple[str, ...], float]:
        body = http("GET", self.agent_metrics, timeout=10).body
        out: dict[tuple[str, ...], float] = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name.endswith("_created") or "adapter" not in s.labels:
                    continue
                assert (s.labels["namespace"], s.labels["pod"]) == (NAMESPACE, POD)
                key = (s.name, s.labels["adapter"])
                if s.name in ("loraplane_adapter_resident", "loraplane_adapter_evictions_total"):
                    key += (s.labels["tier"],)
                if s.name != "loraplane_adapter_disk_load_seconds_total":
                    out[key] = s.value
        return out

    def wait_for_expected(self, step: str) -> dict[tuple[str, ...], float]:
        want = self.expected.metrics()
        deadline = time.monotonic() + 10
        got: dict[tuple[str, ...], float] = {}
        while time.monotonic() < deadline:
            got = self.scraped()
            if got == want:
                return got
            time.sleep(0.1)
        diff = {
            k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)
        }
        raise AssertionError(f"after {step}: (agent, LRU order) differ: {diff}")

    def check_feed(self, step: str) -> str:
        """vLLM's /metrics, scraped as the EPP does, names the tiers the LRU model and the
        snapshot the agent read name: GPU slots running, CPU cache only waiting; one series,
        valued at the time of the scrape."""
        before = time.time()
        lines = feed_lines(self.on)
        after = time.time()
        samples = [s for f in text_string_to_metric_families("\n".join(lines)) for s in f.samples]
        assert len(samples) == 1, (step, lines)
        gpu = sorted(n for n in NAMES if self.expected.tier(n) == "gpu")
        cpu = sorted(n for n in NAMES if self.expected.tier(n) == "cpu")
        assert samples[0].labels == {
            "max_lora": str(GPU_SLOTS),
            "running_lora_adapters": ",".join(gpu),
            "waiting_lora_adapters": ",".join(cpu),
        }, (step, lines)
        assert before - 0.01 <= samples[0].value <= after + 0.01, (step, before, lines, after)
        live = snapshot.read(self.run)
        assert live is not None, step
        tiers = live.tiers()
        assert sorted(n for n, t in tiers.items() if t == "gpu") == gpu, (step, tiers)
        assert sorted(n for n, t in tiers.items() if t == "cpu") == cpu, (step, tiers)
        return lines[0]


def stored(adapters: dict[str, Path], root: Path) -> dict[str, Path]:
    """The fixtures in the store's layout, <root>/<adapter>/<version>/, as the agent keeps them."""
    out = {}
    for name in NAMES:
        version = root / name / hashlib.sha256(name.encode()).hexdigest()
        shutil.copytree(adapters[name], version)
        out[name] = version
    return out


def start_agent(store: Path, run: Path, vllm: VllmServer) -> tuple[subprocess.Popen[bytes], int]:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        env_name("agent_port"): str(port),
        env_name("metrics_port"): str(metrics_port),
        env_name("vllm_url"): vllm.base_url,
        env_name("adapter_root"): str(store),
        env_name("residency_dir"): str(run),
        env_name("agent_token"): "residency-test",
        env_name("base_model"): BASE,
        "POD_NAME": POD,
        "POD_NAMESPACE": NAMESPACE,
    }
    agent = subprocess.Popen(
        [venv_python(), "-m", "loraplane.agent.main"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if http("GET", f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).status == 200:
                return agent, metrics_port
        except OSError:
            pass
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with {agent.returncode}")
        time.sleep(0.3)
    agent.kill()
    raise TimeoutError("the agent's /metrics did not answer within 60 s")


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    root = tmp_path_factory.mktemp("residency")
    store = stored(ensure_adapters(), root / "adapters")
    run, hooks, changed_run = root / "run", root / "changed-hook", root / "changed-run"
    for directory in (run, hooks, changed_run):
        directory.mkdir()
    (hooks / "sitecustomize.py").write_text(CHANGED_HOOK)
    path = os.environ.get("PYTHONPATH", "")
    plugin = {"VLLM_PLUGINS": "loraplane"}
    settings = {
        "on": {**plugin, snapshot.ENV_DIR: str(run)},
        # Set and naming nothing: vLLM loads no general plugin at all.
        "off": {"VLLM_PLUGINS": ""},
        "changed": {
            **plugin,
            snapshot.ENV_DIR: str(changed_run),
            "PYTHONPATH": os.pathsep.join(p for p in (str(hooks), path) if p),
        },
    }
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        started = {
            k: pool.submit(start_vllm, lora_args=LORA_ARGS, env=env) for k, env in settings.items()
        }
        servers = {}
        try:
            servers = {k: f.result() for k, f in started.items()}
        finally:
            if len(servers) < len(started):
                for f in started.values():
                    if f.exception() is None:
                        f.result().stop()
    agent, metrics_port = start_agent(root / "adapters", run, servers["on"])
    engines = Engines(
        servers["on"],
        servers["off"],
        servers["changed"],
        agent,
        f"http://127.0.0.1:{metrics_port}/metrics",
        store,
        run,
        changed_run,
    )
    try:
        yield engines
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        for server in servers.values():
            server.stop()


def test_evictions_and_disk_loads_follow_vllms_lru_order_request_by_request(
    engines: Engines,
) -> None:
    engines.load_all()
    engines.wait_for_expected("registering the three adapters")
    engines.check_feed("registering the three adapters")
    for round_ in range(2):
        for name in NAMES:
            engines.use(name)
            step = f"round {round_ + 1}, a request for {name}"
            engines.wait_for_expected(step)
            log.info("vLLM /metrics after %s: %s", step, engines.check_feed(step))
    counts = engines.expected.counts
    # With one slot and a cache of two, every request of a round robin over three misses both.
    assert all(c["disk_loads"] >= 3 and c["cpu"] >= 2 for c in counts.values()), counts
    seconds = {
        s.labels["adapter"]: s.value
        for family in text_string_to_metric_families(http("GET", engines.agent_metrics).body)
        for s in family.samples
        if s.name == "loraplane_adapter_disk_load_seconds_total"
    }
    assert set(seconds) == set(NAMES) and all(v > 0 for v in seconds.values()), seconds


def test_the_plugin_changes_no_output(engines: Engines) -> None:
    engines.load_all()
    prompts = ("The operator pushes", "Adapters are loaded when")
    for name in (*NAMES, None):
        for prompt in prompts:
            model = name or engines.on.model
            on = engines.on.complete(model, prompt=prompt, max_tokens=16)
            off = engines.off.complete(model, prompt=prompt, max_tokens=16)
            assert on.status == off.status == 200, (on.body, off.body)
            assert on.json()["choices"][0]["text"] == off.json()["choices"][0]["text"], name
            if name is not None:
                engines.expected.use(name)
    engines.wait_for_expected("the comparison's requests")
    assert feed_lines(engines.off) == []


def test_a_vllm_whose_hooks_differ_serves_with_one_log_line(engines: Engines) -> None:
    server = engines.changed
    result = server.load_adapter("rank8", engines.store["rank8"])
    assert result.status == 200, result.body
    for name in ("rank8", None):
        answer = server.complete(name)
        assert answer.status == 200, answer.body
    lines = [line for line in server.log_path.read_text().splitlines() if OFF_LINE in line]
    assert len(lines) == 1, lines
    assert "LRUCacheLoRAModelManager.activate_adapter(self, lora_id, slot)" in lines[0]
    assert not snapshot.path_in(engines.changed_run).exists()
    # No snapshot, so no feed: /metrics answers without it (the EPP keeps what it last read).
    assert server.get("/metrics").status == 200
    assert feed_lines(server) == []

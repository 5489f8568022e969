"""The GPU kit's pure parts (bench/gpu), without a GPU or vLLM: the fat-binary pruner of the
repack, the pod's commands rendered by builders/, the LRU model of vLLM's caches, the loads'
parsing against a fake OpenAI server, result tables, tuning files and model layouts."""

from __future__ import annotations

import http.server
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.gpu import fatbin, load, lru, models, pod, stats, tune

# -- fatbin ------------------------------------------------------------------------------------


def entry(kind: int, arch: int, payload: bytes) -> bytes:
    header = bytearray(64)
    fatbin.ENTRY.pack_into(header, 0, kind, 0x0101, 64, len(payload))
    struct.pack_into("<I", header, fatbin.ARCH_OFFSET, arch)
    return bytes(header) + payload


def fat(*entries: bytes) -> bytes:
    body = b"".join(entries)
    blob = fatbin.HEADER.pack(fatbin.MAGIC, 1, 16, len(body)) + body
    return blob + bytes(-len(blob) % 8)


def elf_with(section: bytes) -> bytes:
    """A minimal ELF64 file: the section's bytes, a string table, three section headers."""
    names = b"\0.nv_fatbin\0.shstrtab\0"
    data_at = 64
    names_at = data_at + len(section)
    shoff = names_at + len(names) + (-(names_at + len(names)) % 8)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)

    def sh(name: int, offset: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, offset, size, 0, 0, 1, 0)

    body = bytes(header) + section + names
    body += bytes(shoff - len(body))
    return body + sh(0, 0, 0) + sh(1, data_at, len(section)) + sh(11, names_at, len(names))


def test_the_pruner_keeps_what_an_sm90_runs_and_moves_nothing_else() -> None:
    first = fat(
        entry(fatbin.CUBIN, 80, b"A" * 40),
        entry(fatbin.CUBIN, 90, b"B" * 24),
        entry(fatbin.PTX, 80, b"C" * 32),
        entry(fatbin.CUBIN, 120, b"D" * 16),
    )
    ptx_only = fat(entry(fatbin.CUBIN, 75, b"E" * 8), entry(fatbin.PTX, 80, b"F" * 8))
    useless = fat(entry(fatbin.CUBIN, 100, b"G" * 8))
    data = bytearray(elf_with(first + ptx_only + useless))
    size = len(data)
    offset, length = fatbin.section(data) or (0, 0)
    assert length == len(first + ptx_only + useless)

    result = fatbin.prune(data, 90)

    assert len(data) == size
    assert (result.fatbins, result.dropped) == (3, 4)
    found = fatbin.fatbins(data, offset, offset + length)
    # Every fat binary still starts where the library registers it.
    assert [at for at, _ in found] == [offset, offset + len(first), offset + len(first + ptx_only)]
    kept = [[(e.kind, e.arch) for e in entries] for _, entries in found]
    assert kept == [[(fatbin.CUBIN, 90)], [(fatbin.PTX, 80)], [(fatbin.CUBIN, 100)]]
    start = found[0][1][0].start
    assert bytes(data[start + 64 : start + 64 + 24]) == b"B" * 24
    # What was dropped is zeros, up to the next fat binary.
    assert set(data[start + 64 + 24 : offset + len(first)]) == {0}
    assert fatbin.prune(data, 90).dropped == 0  # idempotent


def test_the_pruner_leaves_a_library_without_fat_binaries_alone(tmp_path: Path) -> None:
    lib = tmp_path / "lib.so"
    lib.write_bytes(elf_with(b""))
    assert fatbin.main(["--arch", "90", str(lib)]) == 0
    assert lib.read_bytes() == elf_with(b"")
    with pytest.raises(ValueError, match="ELF"):
        fatbin.section(b"not an elf file at all, no")


# -- the pod's commands ------------------------------------------------------------------------


def test_a_lora_engine_is_started_with_the_pods_arguments_and_environment(tmp_path: Path) -> None:
    engine = pod.Engine(
        "lora16", "/models/m", max_loras=16, max_cpu_loras=32, agent=True, extra_args=("--x", "1")
    )
    p = pod.render(engine, "python3", tmp_path, 8100)
    assert p.vllm.argv[:4] == ["python3", "-m", "vllm.entrypoints.cli.main", "serve"]
    args = p.vllm.argv[4:]
    assert args[:4] == ["--model", "/models/m", "--served-model-name", "base"]
    assert args[args.index("--max-loras") + 1] == "16"
    assert args[args.index("--max-cpu-loras") + 1] == "32"
    assert args[args.index("--port") + 1] == "8100"
    assert "--enable-lora" in args and args[-2:] == ["--x", "1"]
    assert p.vllm.env == {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
        "VLLM_PLUGINS": "loraplane",
        "LORAPLANE_RESIDENCY_DIR": str(tmp_path / "residency"),
    }
    assert p.residency_dir == tmp_path / "residency"
    assert p.agent is not None
    assert p.agent.argv == ["python3", "-m", "loraplane.agent.main"]
    env = p.agent.env
    assert env["LORAPLANE_VLLM_URL"] == "http://127.0.0.1:8100"
    assert env["LORAPLANE_ADAPTER_ROOT"] == str(tmp_path / "adapters")
    assert env["LORAPLANE_RESIDENCY_DIR"] == str(tmp_path / "residency")
    assert env["LORAPLANE_AGENT_TOKEN"] == pod.AGENT_TOKEN
    assert (env["POD_NAME"], env["POD_NAMESPACE"]) == (pod.POD_NAME, pod.POD_NAMESPACE)
    assert env["LORAPLANE_METRICS_PORT"] == str(p.agent_metrics_port)


def test_plugin_off_and_no_lora_engines(tmp_path: Path) -> None:
    off = pod.render(pod.Engine("off", "/m", plugin=False), "py", tmp_path, 8000)
    assert off.vllm.env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "VLLM_PLUGINS": ""}
    assert off.residency_dir is None and off.agent is None
    plain = pod.render(pod.Engine("plain", "/m", lora=False), "py", tmp_path, 8000)
    assert not [a for a in plain.vllm.argv if "lora" in a]
    assert pod.without_lora(
        ["--a", "--enable-lora", "--max-loras", "4", "--lora-dtype=bfloat16", "--b", "2"]
    ) == ["--a", "--b", "2"]


def test_a_secret_the_kit_cannot_supply_is_an_error(tmp_path: Path) -> None:
    entries = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    with pytest.raises(ValueError, match="HF_TOKEN"):
        pod.local_env(entries, {}, {})
    mounts = {"/adapters": tmp_path}
    assert pod.localize("/adapters/a/1", mounts) == f"{tmp_path}/a/1"
    assert pod.localize("/adaptersx", mounts) == "/adaptersx"


# -- the LRU model -----------------------------------------------------------------------------


def test_the_lru_model_of_the_cpu_tests_scenario() -> None:
    caches = lru.Caches(gpu_slots=1, cpu_slots=2)
    names = ("a", "b", "c")
    tiers = []
    for _what, name in lru.scenario(names):
        caches.use(name)
        tiers.append("".join(caches.tier(n)[0] for n in names if n in caches.counts))
    assert tiers == ["g", "cg", "dcg", "gdc", "cgd", "dcg", "gdc", "cgd", "dcg"]
    assert caches.counts == {
        "a": {"activations": 3, "gpu": 3, "cpu": 3, "disk_loads": 3},
        "b": {"activations": 3, "gpu": 3, "cpu": 2, "disk_loads": 3},
        "c": {"activations": 3, "gpu": 2, "cpu": 2, "disk_loads": 3},
    }
    want = caches.metrics()
    assert want[("loraplane_adapter_resident", "c", "gpu")] == 1.0
    samples = [
        (k[0], {"adapter": k[1], **({"tier": k[2]} if len(k) == 3 else {})}, v)
        for k, v in want.items()
    ]
    samples.append(("loraplane_adapter_disk_load_seconds_total", {"adapter": "a"}, 0.1))
    assert lru.scraped(samples) == want
    assert lru.differences(want, want) == {}
    got = {**want, ("loraplane_adapter_activations_total", "a"): 2.0}
    assert lru.differences(got, want) == {("loraplane_adapter_activations_total", "a"): (2.0, 3)}


# -- loads against a fake OpenAI server --------------------------------------------------------


class FakeOpenAI(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["model"] == "missing":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "no such model"}}')
            return
        n = body["max_tokens"]
        self.send_response(200)
        self.end_headers()
        if body.get("stream"):
            for i in range(n):
                chunk = {"choices": [{"index": 0, "text": f" w{i}"}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b'data: {"choices": [], "usage": {}}\n\ndata: [DONE]\n\n')
        else:
            self.wfile.write(json.dumps({"usage": {"completion_tokens": n}}).encode())


@pytest.fixture
def fake_openai() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_loads_count_tokens_and_time_streams(fake_openai: str) -> None:
    b = load.batch(fake_openai, ["a", "b"], size=4, prompt=8, output=5, vocab=100)
    assert b.tokens == 20 and b.tokens_per_s > 0 and b.ms_per_step > 0
    s = load.single(fake_openai, "a", prompt=8, output=6, vocab=100)
    assert s.tokens == 6 and s.ttft_ms > 0 and s.ms_per_token >= 0
    with pytest.raises(RuntimeError, match="404"):
        load.completion(fake_openai, "missing", [5], 1)
    assert load.prompt_ids(4, 100, 1) == load.prompt_ids(4, 100, 1)
    assert all(3 <= t < 100 for t in load.prompt_ids(50, 100, 2))


# -- results -----------------------------------------------------------------------------------


def records() -> list[stats.Record]:
    out = []
    for run, (on, off) in enumerate(((100.0, 101.0), (99.0, 100.0), (102.0, 100.0))):
        for engine, tps in (("on", on), ("off", off)):
            values = {"tokens_per_s": tps, "ms_per_step": 1000 / tps}
            out.append(stats.Record("check", engine, "r16", "batch", run, values))
    out.append(stats.Record("check", "on", "r16", "single", 0, {"ttft_ms": 40, "ms_per_token": 6}))
    return out


def test_results_round_trip_to_medians_tables_and_pairs() -> None:
    recs = stats.read([r.line() for r in records()] + ["not json", ""])
    assert recs == records()
    s = stats.summarize(recs)
    assert [(x.engine, x.load, x.n) for x in s] == [
        ("on", "batch", 3),
        ("off", "batch", 3),
        ("on", "single", 1),
    ]
    assert s[0].medians["tokens_per_s"] == 100.0
    assert s[0].spread["tokens_per_s"] == pytest.approx(0.03)
    table = stats.table(s, "batch", reference=("off", "r16"))
    assert "| on | r16 | 100 | 10.00 | +0.0% | 3 | 3.0% |" in table
    assert "time to first token" in stats.table(s, "single")
    assert stats.paired(recs, "on", "off", "r16", "tokens_per_s") == pytest.approx(
        [100 / 101, 0.99, 1.02]
    )
    assert stats.change(99, 100) == "-1.0%"


# -- tuning files and model layouts ------------------------------------------------------------


def test_tuned_configs_nest_as_vllm_reads_them() -> None:
    nested = tune.nest({(17, 3, 32, 4096, 16): {"block_m": 16}, (17, 1, 32, 4096, 16): {"x": 1}})
    assert nested["17"]["1"] == {"32": {"4096": {"16": {"x": 1}}}}
    assert nested["17"]["3"]["32"]["4096"]["16"] == {"block_m": 16}
    configs = tune.grid({"block_m": (16, 32), "split_k": (8,)})
    assert configs == [
        {"block_m": 16, "split_k": 8, "num_ctas": 1, "max_nreg": None},
        {"block_m": 32, "split_k": 8, "num_ctas": 1, "max_nreg": None},
    ]


def test_the_8b_layout_and_its_gptq_twin() -> None:
    shape = models.LLAMA_8B
    names = dict(models.tensor_shapes(shape))
    assert len(names) == 2 + 9 * 32 + 1
    params = sum(
        a * b if b else a for a, b in ((s[0], s[1] if len(s) > 1 else 0) for s in names.values())
    )
    assert 8.0e9 < params < 8.1e9  # Llama-3.1-8B
    assert names["model.layers.0.self_attn.k_proj.weight"] == (1024, 4096)
    gptq = {n: (s, d) for n, s, d in models.gptq_shapes(shape)}
    assert gptq["model.layers.0.mlp.down_proj.qweight"] == ((14336 // 8, 4096), "int32")
    assert gptq["model.layers.0.mlp.down_proj.scales"] == ((14336 // 128, 4096), "float16")
    assert gptq["model.layers.0.mlp.down_proj.qzeros"] == ((14336 // 128, 4096 // 8), "int32")
    assert "model.layers.0.mlp.down_proj.weight" not in gptq
    assert models.shards([("a", 3), ("b", 3), ("c", 5), ("d", 1)], limit=6) == [
        ["a", "b"],
        ["c", "d"],
    ]
    cfg = models.adapter_config(16, models.QV_MODULES, "x")
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (16, 32, ["q_proj", "v_proj"])
    assert models.peft_key(3, "up_proj", "B") == (
        "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight"
    )


def test_the_streamed_merge_is_peft_merge_and_unload(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(models.ALL_MODULES))
    )
    adapter: dict[str, Any] = {}
    for name, param in lora.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(param, std=0.1)
            adapter[name.replace(".default", "")] = param.detach().clone()
    merged = lora.merge_and_unload().state_dict()
    for layer in range(2):
        for module in models.ALL_MODULES:
            key = models.module_path(layer, module)
            mine = models.merge_weight(
                base[f"{key}.weight"],
                adapter[models.peft_key(layer, module, "A")],
                adapter[models.peft_key(layer, module, "B")],
                8 / 4,
            )
            assert torch.equal(mine, merged[f"{key}.weight"]), key

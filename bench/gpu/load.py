"""The two loads the kit measures, through vLLM's OpenAI API as clients send them.

- A batch: `batch` greedy completions sent at once, each `output` tokens long (`ignore_eos`), each
  through an adapter of the list in turn (or the base model). Tokens per second is the completion
  tokens over the wall time from the first send to the last answer; ms per step is that wall time
  over `output` (every request takes one token a step; the prefill steps are inside it).
- One request, streamed: time to first token (a `prompt`-token prompt) and ms per output token
  after the first (the mean gap between streamed tokens).

Prompts are token ids (random, seeded), so their length is exact whatever the tokenizer.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Batch:
    tokens_per_s: float
    ms_per_step: float
    tokens: int


@dataclass(frozen=True)
class Single:
    ttft_ms: float
    ms_per_token: float
    tokens: int


def prompt_ids(length: int, vocab: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(length)]


def _post(base_url: str, body: dict[str, Any], timeout: float) -> http.client.HTTPResponse:
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn.getresponse()


def completion(
    base_url: str, model: str, prompt: list[int], output: int, timeout: float = 600.0
) -> int:
    """One greedy completion; its completion token count."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output,
        "temperature": 0,
        "ignore_eos": True,
    }
    resp = _post(base_url, body, timeout)
    text = resp.read().decode(errors="replace")
    if resp.status != 200:
        raise RuntimeError(f"{model}: {resp.status} {text[:400]}")
    return int(json.loads(text)["usage"]["completion_tokens"])


def batch(
    base_url: str,
    models: Sequence[str],
    size: int,
    prompt: int,
    output: int,
    vocab: int,
    seed: int = 0,
) -> Batch:
    prompts = [prompt_ids(prompt, vocab, seed * 1000 + i) for i in range(size)]
    counts = [0] * size
    errors: list[BaseException] = []
    barrier = threading.Barrier(size + 1)

    def one(i: int) -> None:
        barrier.wait()
        try:
            counts[i] = completion(base_url, models[i % len(models)], prompts[i], output)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    tokens = sum(counts)
    return Batch(tokens / wall, 1000 * wall / output, tokens)


def single(
    base_url: str, model: str, prompt: int, output: int, vocab: int, seed: int = 0
) -> Single:
    body = {
        "model": model,
        "prompt": prompt_ids(prompt, vocab, seed),
        "max_tokens": output,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    started = time.perf_counter()
    resp = _post(base_url, body, 600.0)
    if resp.status != 200:
        raise RuntimeError(f"{model}: {resp.status} {resp.read()[:400]!r}")
    times: list[float] = []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        now = time.perf_counter()
        chunk = json.loads(data)
        for choice in chunk.get("choices", []):
            if choice.get("text") is not None:
                times.append(now)
    if len(times) < 2:
        raise RuntimeError(f"{model}: {len(times)} streamed tokens")
    gaps = (times[-1] - times[0]) / (len(times) - 1)
    return Single(1000 * (times[0] - started), 1000 * gaps, len(times))

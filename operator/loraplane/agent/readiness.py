"""What "this pod is Ready" means: vLLM healthy and every required adapter registered."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import aiohttp

from loraplane.vllm.client import VLLMClient
from loraplane.vllm.errors import VLLMError

REQUIRED_FILE = ".loraplane-required.json"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str


def evaluate(vllm_healthy: bool, required: Iterable[str], registered: Iterable[str]) -> Readiness:
    if not vllm_healthy:
        return Readiness(False, "vLLM is not healthy yet")
    missing = sorted(set(required) - set(registered))
    if missing:
        return Readiness(False, f"adapters not registered yet: {', '.join(missing)}")
    return Readiness(True, "ok")


class RequiredStore:
    """The operator's list of adapters this pod must serve, kept in the adapter volume.

    It lives beside the adapter files so that an agent restart keeps it (the volume outlives the
    container) while a new pod starts empty, exactly like vLLM's own registrations. The agent is
    its only writer, so the file is read once and the list kept in memory after that.
    """

    def __init__(self, root: Path) -> None:
        self._path = root / REQUIRED_FILE
        self._names: tuple[str, ...] | None = None

    def load(self) -> list[str]:
        if self._names is None:
            self._names = tuple(self._read())
        return list(self._names)

    def _read(self) -> list[str]:
        try:
            data = json.loads(self._path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [str(x) for x in data] if isinstance(data, list) else []

    def save(self, names: Iterable[str]) -> None:
        ordered = sorted(set(names))
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ordered))
        os.replace(tmp, self._path)
        self._names = tuple(ordered)


@dataclass(frozen=True)
class _Verdict:
    """A Ready answer and what it was judged against."""

    required: tuple[str, ...]
    connection: int
    at: float


class ReadinessCheck:
    """The pod's readiness, re-listing vLLM's adapters only when the answer can have changed.

    Every check asks vLLM's `/health`. A Ready verdict is kept while the required list is the one
    it was judged against and vLLM keeps answering over the TCP connection the adapters were listed
    over: registrations live in the vLLM process, a process that restarted cannot answer over a
    connection to its predecessor, and vLLM removes an adapter only when told to (the operator
    shrinks the required list first). A kubelet probing every 2 s stays inside vLLM's keep-alive
    (5 s), so a healthy pod costs one `/health` per probe instead of a `/v1/models` of every card.
    Anything else (a new connection, a failed check, a Not Ready answer, a verdict older than
    `refresh_seconds`) lists again.
    """

    def __init__(
        self,
        required: RequiredStore,
        refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.required = required
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._connections = 0
        self._verdict: _Verdict | None = None

    def trace_config(self) -> aiohttp.TraceConfig:
        """For the session of the VLLMClient given to `check`: counts the connections it opens."""

        async def opened(
            _session: aiohttp.ClientSession,
            _ctx: SimpleNamespace,
            _params: aiohttp.TraceConnectionCreateEndParams,
        ) -> None:
            self._connections += 1

        config = aiohttp.TraceConfig()
        config.on_connection_create_end.append(opened)
        return config

    async def check(self, vllm: VLLMClient) -> Readiness:
        required = tuple(self.required.load())
        if not await vllm.health():
            self._verdict = None
            return evaluate(False, required, ())
        connections = self._connections  # opened so far, this health answer's included
        kept = self._verdict
        if (
            kept is not None
            and kept.required == required
            and kept.connection == connections
            and self._clock() - kept.at < self.refresh_seconds
        ):
            return Readiness(True, "ok")
        try:
            registered = (await vllm.list_models()).adapter_paths
        except VLLMError:
            self._verdict = None
            return evaluate(False, required, ())
        result = evaluate(True, required, registered)
        # A connection opened for the list may reach a newer process than the health answer did.
        self._verdict = (
            _Verdict(required, connections, self._clock())
            if result.ready and self._connections == connections
            else None
        )
        return result

"""Async client for one vLLM server: health, version, registered adapters, load and unload.

Load and unload are idempotent (DESIGN.md §4): a second load of the same name and path, and the
unload of a name the server does not know, are successes. Every failure is a ``VLLMError`` with a
stable reason (see ``errors.classify``); network failures are ``TransientVLLMError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os.path
from enum import StrEnum
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from loraplane import metrics
from loraplane.vllm.errors import (
    AdapterNameConflict,
    AdapterNotLoaded,
    AlreadyLoaded,
    Reason,
    RuntimeLoRAUpdatingDisabled,
    TransientVLLMError,
    VLLMError,
    VLLMServerError,
    classify,
    error_class,
)

__all__ = ["LoadOutcome", "ModelCard", "ModelList", "UnloadOutcome", "VLLMClient"]

logger = logging.getLogger(__name__)

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
# The endpoint label of each route in loraplane_vllm_api_errors_total.
ENDPOINTS = {
    "/health": "health",
    "/version": "version",
    "/v1/models": "models",
    LOAD_PATH: "load",
    UNLOAD_PATH: "unload",
}
# Answers the client turns into successes: not errors.
BENIGN = (AlreadyLoaded, AdapterNotLoaded)


class ModelCard(BaseModel):
    """One card of ``GET /v1/models``: a base model (``parent`` null) or an adapter."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class _Page(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[ModelCard]


class ModelList(BaseModel):
    """``GET /v1/models`` split into base models and adapters (cards with a non-null parent).

    It lists registered names, not what is resident in GPU or CPU memory.
    """

    model_config = ConfigDict(frozen=True)

    base_models: tuple[ModelCard, ...] = Field(default=())
    adapters: tuple[ModelCard, ...] = Field(default=())

    @classmethod
    def from_cards(cls, cards: list[ModelCard]) -> ModelList:
        return cls(
            base_models=tuple(c for c in cards if c.parent is None),
            adapters=tuple(c for c in cards if c.parent is not None),
        )

    def adapter(self, name: str) -> ModelCard | None:
        return next((c for c in self.adapters if c.id == name), None)

    @property
    def adapter_paths(self) -> dict[str, str | None]:
        """Registered adapter name -> the path it was loaded from (``root``)."""
        return {c.id: c.root for c in self.adapters}


class LoadOutcome(StrEnum):
    LOADED = "Loaded"
    ALREADY_LOADED = "AlreadyLoaded"


class UnloadOutcome(StrEnum):
    UNLOADED = "Unloaded"
    NOT_LOADED = "NotLoaded"


def same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return os.path.normpath(a) == os.path.normpath(b)


class VLLMClient:
    """Client for one vLLM server; the caller owns the ``aiohttp.ClientSession`` (one per process).

    ``timeout`` (seconds) bounds every request; ``load_timeout`` the load call, which reads the
    adapter from disk and can take seconds for a large one on a busy GPU.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
        *,
        load_timeout: float | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._load_timeout = aiohttp.ClientTimeout(total=load_timeout or max(timeout, 60.0))
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def __repr__(self) -> str:
        return f"VLLMClient({self.base_url!r})"

    async def _request(
        self,
        method: str,
        path: str,
        *,
        payload: dict[str, Any] | None = None,
        limit: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, bytes]:
        """One call; the one place its failures are counted, by endpoint and class."""
        url = self.base_url + path
        errors = metrics.VLLM_API_ERRORS
        metrics.VLLM_API_CALLS.labels(ENDPOINTS[path]).inc()
        try:
            async with self._session.request(
                method,
                url,
                json=payload,
                headers=self._headers,
                timeout=limit or self._timeout,
            ) as response:
                status, body = response.status, await response.read()
        except TimeoutError as e:
            errors.labels(ENDPOINTS[path], "timeout").inc()
            raise TransientVLLMError(
                Reason.TRANSIENT, f"{method} {url} timed out after {self._describe(limit)}"
            ) from e
        except aiohttp.ClientError as e:
            errors.labels(ENDPOINTS[path], "unreachable").inc()
            # Connection refused while the server starts, reset when it dies, DNS, payload.
            raise TransientVLLMError(
                Reason.TRANSIENT, f"{method} {url} failed: {type(e).__name__}: {e}"
            ) from e
        if status >= 400 and not isinstance(error := classify(status, body), BENIGN):
            errors.labels(ENDPOINTS[path], error_class(error)).inc()
        return status, body

    def _describe(self, timeout: aiohttp.ClientTimeout | None) -> str:
        total = (timeout or self._timeout).total
        return f"{total:g}s" if total is not None else "no limit"

    async def health(self) -> bool:
        """True when ``GET /health`` answers 200; False on any other answer or none at all."""
        try:
            status, _ = await self._request("GET", "/health")
        except TransientVLLMError:
            return False
        return status == 200

    async def version(self) -> str | None:
        """The server's version, or None when it answers without one.

        Raises ``TransientVLLMError`` when the server cannot be reached.
        """
        status, body = await self._request("GET", "/version")
        if status != 200:
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        version = data.get("version") if isinstance(data, dict) else None
        return version if isinstance(version, str) else None

    async def list_models(self) -> ModelList:
        status, body = await self._request("GET", "/v1/models")
        if status != 200:
            raise classify(status, body)
        try:
            # One validation of the whole page: a pod serving a thousand adapters is listed at
            # every resync, and a card at a time cost most of a converged fleet's CPU.
            cards = _Page.model_validate_json(body).data
        except ValueError as e:  # pydantic's ValidationError among them
            raise VLLMServerError(
                Reason.SERVER_ERROR, f"GET /v1/models returned an unexpected body: {e}"
            ) from e
        return ModelList.from_cards(cards)

    async def load_adapter(self, name: str, path: str, *, inplace: bool = False) -> LoadOutcome:
        """Register adapter ``name`` from ``path``; idempotent for the same name and path.

        ``inplace=True`` (vLLM >= 0.11's ``load_inplace``) replaces the weights of a registered
        name with those at ``path``: the name stays served throughout. A load that timed out here
        but completed on the server is resolved by the next call (400 "already loaded" ->
        ``/v1/models``). Raises ``AdapterNameConflict`` when ``name`` is registered with another
        path,
        ``AdapterRejected`` (permanent) when vLLM refuses the adapter, other ``VLLMError``s
        otherwise.
        """
        # Two attempts: the name may be unloaded between the 400 and our look at /v1/models.
        for _ in range(2):
            status, body = await self._request(
                "POST",
                LOAD_PATH,
                # Sent only when asked: servers before vLLM 0.11 do not know the field.
                payload={"lora_name": name, "lora_path": path}
                | ({"load_inplace": True} if inplace else {}),
                limit=self._load_timeout,
            )
            if status == 200:
                logger.debug("loaded adapter %s from %s on %s", name, path, self.base_url)
                return LoadOutcome.LOADED
            error = self._route_error(status, body)
            if not isinstance(error, AlreadyLoaded):
                raise error
            card = (await self.list_models()).adapter(name)
            if card is None:
                continue
            if same_path(card.root, path):
                return LoadOutcome.ALREADY_LOADED
            raise AdapterNameConflict(name, card.root, path)
        raise VLLMServerError(
            Reason.SERVER_ERROR,
            f"adapter {name!r} is reported as loaded but is not listed in /v1/models",
        )

    async def unload_adapter(self, name: str) -> UnloadOutcome:
        """Unregister ``name``; a name the server does not know counts as unloaded.

        vLLM only drops the name from its API server: the engine keeps the weights until its LRU
        evicts them, so the files must stay readable until then (DESIGN.md §4).
        """
        status, body = await self._request("POST", UNLOAD_PATH, payload={"lora_name": name})
        if status == 200:
            logger.debug("unloaded adapter %s on %s", name, self.base_url)
            return UnloadOutcome.UNLOADED
        error = self._route_error(status, body)
        if isinstance(error, AdapterNotLoaded):
            return UnloadOutcome.NOT_LOADED
        raise error

    def _route_error(self, status: int, body: bytes) -> VLLMError:
        error = classify(status, body)
        if isinstance(error, RuntimeLoRAUpdatingDisabled):
            error.message = f"{self.base_url}: {error.message}"
            error.args = (error.message,)
        return error


async def wait_until_healthy(client: VLLMClient, within: float, interval: float = 0.5) -> None:
    """Poll ``/health`` until 200; raise ``TransientVLLMError`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if await client.health():
            return
        if loop.time() >= deadline:
            raise TransientVLLMError(
                Reason.TRANSIENT, f"{client.base_url} not healthy after {within:g}s"
            )
        await asyncio.sleep(interval)

"""The operator's side of the agent API: apply adapters, set what is required, prune files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from loraplane import metrics
from loraplane.agent import protocol

M = TypeVar("M", bound=BaseModel)

# The endpoint label of each route in loraplane_agent_api_errors_total.
ENDPOINTS = {
    protocol.APPLY: "apply",
    protocol.REQUIRED: "required",
    protocol.PRUNE: "prune",
    protocol.RESIDENCY: "residency",
}
UNAUTHORIZED = 401


def error_class(status: int) -> str:
    return "client_error" if status < 500 else "server_error"


class AgentError(Exception):
    """The agent could not be reached or answered something unexpected: worth a retry."""


class AgentUnauthorized(AgentError):
    """The agent refused the token: the Secret was made again since it was read (a base model
    deleted and created again), or the pod started before it changed."""


class AgentClient:
    def __init__(
        self, base_url: str, token: str, session: aiohttp.ClientSession, timeout: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, method: str, path: str, body: BaseModel | None) -> tuple[int, Any]:
        """One call; the one place its failures are counted, by endpoint and class."""
        errors = metrics.AGENT_API_ERRORS
        metrics.AGENT_API_CALLS.labels(ENDPOINTS[path]).inc()
        try:
            async with self._session.request(
                method,
                f"{self.base_url}{path}",
                json=(
                    body.model_dump(mode="json", by_alias=True, exclude_none=True)
                    if body is not None
                    else None
                ),
                headers=self._headers,
                timeout=self._timeout,
            ) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError as exc:
            errors.labels(ENDPOINTS[path], "timeout").inc()
            raise AgentError(f"agent at {self.base_url} timed out: {exc!r}") from exc
        except aiohttp.ClientError as exc:
            errors.labels(ENDPOINTS[path], "unreachable").inc()
            raise AgentError(f"agent at {self.base_url} unreachable: {exc!r}") from exc
        if status != 200:
            errors.labels(ENDPOINTS[path], error_class(status)).inc()
        if status == UNAUTHORIZED:
            raise AgentUnauthorized(f"agent at {self.base_url} refused the token")
        try:
            return status, json.loads(raw)
        except ValueError as exc:  # aiohttp's own refusals (401, 400) are text
            if status == 200:
                errors.labels(ENDPOINTS[path], "server_error").inc()
            text = raw[:200].decode(errors="replace")
            raise AgentError(
                f"agent at {self.base_url} answered {status}, not JSON: {text!r}"
            ) from exc

    @staticmethod
    def _parse(model: type[M], what: str, status: int, data: Any) -> M:
        if status != 200:
            raise AgentError(f"agent {what} answered {status}: {data}")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise AgentError(f"agent {what} answered an unexpected body: {exc}") from exc

    async def apply(
        self, request: protocol.ApplyRequest, line_timeout: float
    ) -> AsyncIterator[protocol.Applied]:
        """Each adapter's outcome as the agent tells it; `line_timeout` bounds the wait for the
        next line (the agent sends an empty one every `heartbeat_seconds` while it works, so a
        silent agent is a stuck one)."""
        endpoint, url = ENDPOINTS[protocol.APPLY], f"{self.base_url}{protocol.APPLY}"
        errors = metrics.AGENT_API_ERRORS
        metrics.AGENT_API_CALLS.labels(endpoint).inc()
        body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
        timeout = aiohttp.ClientTimeout(sock_connect=self._timeout.total, sock_read=line_timeout)
        try:
            async with self._session.request(
                "POST", url, json=body, headers=self._headers, timeout=timeout
            ) as resp:
                if resp.status == UNAUTHORIZED:
                    errors.labels(endpoint, error_class(resp.status)).inc()
                    raise AgentUnauthorized(f"agent at {self.base_url} refused the token")
                if resp.status != 200:
                    errors.labels(endpoint, error_class(resp.status)).inc()
                    text = (await resp.read()).decode(errors="replace")[:1024]
                    raise AgentError(f"agent apply answered {resp.status}: {text}")
                async for line in resp.content:
                    if line.strip():
                        yield protocol.Applied.model_validate_json(line)
        except TimeoutError as exc:
            errors.labels(endpoint, "timeout").inc()
            raise AgentError(f"agent at {self.base_url} timed out: {exc!r}") from exc
        except aiohttp.ClientError as exc:
            errors.labels(endpoint, "unreachable").inc()
            raise AgentError(f"agent at {self.base_url} unreachable: {exc!r}") from exc
        except ValidationError as exc:
            errors.labels(endpoint, "server_error").inc()
            raise AgentError(f"agent apply answered an unexpected line: {exc}") from exc

    async def set_required(self, names: list[str]) -> None:
        body = protocol.RequiredAdapters(adapters=sorted(names))
        status, data = await self._call("PUT", protocol.REQUIRED, body)
        self._parse(protocol.RequiredAdapters, "set-required", status, data)

    async def prune(self, keep: dict[str, str]) -> list[str]:
        status, data = await self._call("POST", protocol.PRUNE, protocol.PruneRequest(keep=keep))
        return self._parse(protocol.PruneResult, "prune", status, data).removed

    async def residency(self) -> protocol.Residency:
        status, data = await self._call("GET", protocol.RESIDENCY, None)
        return self._parse(protocol.Residency, "residency", status, data)

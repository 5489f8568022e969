"""The operator's side of the agent API: fetch an adapter, set what is required, prune files."""

from __future__ import annotations

from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from loraplane import metrics
from loraplane.agent import protocol

M = TypeVar("M", bound=BaseModel)

# The endpoint label of each route in loraplane_agent_api_errors_total.
ENDPOINTS = {
    protocol.FETCH: "fetch",
    protocol.REQUIRED: "required",
    protocol.PRUNE: "prune",
    protocol.RESIDENCY: "residency",
}
# Answers of the agent that are verdicts on the adapter, by class.
VERDICTS = {protocol.REJECTED_STATUS: "rejected", protocol.UNAVAILABLE_STATUS: "unavailable"}


def error_class(status: int) -> str:
    if status in VERDICTS:
        return VERDICTS[status]
    return "client_error" if status < 500 else "server_error"


class AgentError(Exception):
    """The agent could not be reached or answered something unexpected: worth a retry."""


class VersionUnavailable(AgentError):
    """The pinned version is in neither the store, the source nor a peer: retried."""

    def __init__(self, unavailable: protocol.Unavailable) -> None:
        super().__init__(unavailable.message)
        self.reason = unavailable.reason
        self.message = unavailable.message


class AdapterRejectedByAgent(Exception):
    """The adapter itself is bad: the same answer on every pod, do not retry."""

    def __init__(self, rejection: protocol.Rejection) -> None:
        super().__init__(rejection.message)
        self.reason = rejection.reason
        self.message = rejection.message


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
                status, data = resp.status, await resp.json(content_type=None)
        except TimeoutError as exc:
            errors.labels(ENDPOINTS[path], "timeout").inc()
            raise AgentError(f"agent at {self.base_url} timed out: {exc!r}") from exc
        except aiohttp.ClientError as exc:
            errors.labels(ENDPOINTS[path], "unreachable").inc()
            raise AgentError(f"agent at {self.base_url} unreachable: {exc!r}") from exc
        except ValueError as exc:  # an answer that is not JSON: not our agent answering
            errors.labels(ENDPOINTS[path], "server_error").inc()
            raise AgentError(f"agent at {self.base_url} answered no JSON: {exc!r}") from exc
        if status != 200:
            errors.labels(ENDPOINTS[path], error_class(status)).inc()
        return status, data

    @staticmethod
    def _parse(model: type[M], what: str, status: int, data: Any) -> M:
        if status != 200:
            raise AgentError(f"agent {what} answered {status}: {data}")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise AgentError(f"agent {what} answered an unexpected body: {exc}") from exc

    async def fetch(self, request: protocol.FetchRequest) -> protocol.Fetched:
        status, data = await self._call("POST", protocol.FETCH, request)
        if status == protocol.REJECTED_STATUS:
            rejection = self._parse(protocol.Rejection, "fetch", 200, data)
            raise AdapterRejectedByAgent(rejection)
        if status == protocol.UNAVAILABLE_STATUS:
            raise VersionUnavailable(self._parse(protocol.Unavailable, "fetch", 200, data))
        return self._parse(protocol.Fetched, "fetch", status, data)

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

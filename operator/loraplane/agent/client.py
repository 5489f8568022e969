"""The operator's side of the agent API: fetch an adapter, set what is required, prune files."""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import BaseModel


class AgentError(Exception):
    """The agent could not be reached or answered something unexpected: worth a retry."""


class AdapterRejectedByAgent(Exception):
    """The adapter itself is bad: the same answer on every pod, do not retry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Fetched(BaseModel):
    path: str
    summary: dict[str, Any]
    warnings: list[str]


class AgentClient:
    def __init__(
        self, base_url: str, token: str, session: aiohttp.ClientSession, timeout: float = 120.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        try:
            async with self._session.request(
                method,
                f"{self.base_url}{path}",
                json=body,
                headers=self._headers,
                timeout=self._timeout,
            ) as resp:
                data = await resp.json(content_type=None)
                return resp.status, data
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AgentError(f"agent at {self.base_url} unreachable: {exc!r}") from exc

    async def fetch(self, request: dict[str, Any]) -> Fetched:
        status, data = await self._call("POST", "/v1/adapters/fetch", request)
        if status == 422:
            raise AdapterRejectedByAgent(str(data.get("reason")), str(data.get("message")))
        if status != 200:
            raise AgentError(f"agent fetch answered {status}: {data}")
        warnings = [
            str(f.get("message")) for f in data.get("findings", []) if f.get("severity") != "error"
        ]
        return Fetched(path=data["path"], summary=data["summary"], warnings=warnings)

    async def set_required(self, names: list[str]) -> None:
        status, data = await self._call("PUT", "/v1/required", {"adapters": sorted(names)})
        if status != 200:
            raise AgentError(f"agent set-required answered {status}: {data}")

    async def prune(self, keep: dict[str, str]) -> list[str]:
        status, data = await self._call("POST", "/v1/adapters/prune", {"keep": keep})
        if status != 200:
            raise AgentError(f"agent prune answered {status}: {data}")
        return list(data.get("removed", []))

"""The operator's process-wide runtime: fleet, pod workers, HTTP session (kept in kopf's memo)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from loraplane.fleet import Fleet
from loraplane.workers import Workers


@dataclass
class Runtime:
    fleet: Fleet
    workers: Workers
    session: aiohttp.ClientSession

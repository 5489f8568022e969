"""What "this pod is Ready" means: vLLM healthy and every required adapter registered."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
    container) while a new pod starts empty, exactly like vLLM's own registrations.
    """

    def __init__(self, root: Path) -> None:
        self._path = root / REQUIRED_FILE

    def load(self) -> list[str]:
        try:
            data = json.loads(self._path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [str(x) for x in data] if isinstance(data, list) else []

    def save(self, names: Iterable[str]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(set(names))))
        os.replace(tmp, self._path)

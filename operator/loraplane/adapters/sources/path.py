"""The path source: a directory visible inside the pod (a volume the base model mounts)."""

from __future__ import annotations

import shutil
from pathlib import Path

from loraplane.adapters.inspect import Inspection, inspect_adapter
from loraplane.adapters.sources.protocol import SizeBudget, Verify, fetch_into_store
from loraplane.adapters.sources.versions import FetchResult


class PathFetcher:
    """Hashing the directory is its identity: an unchanged one is never copied again."""

    kind = "path"

    def __init__(self, source: Path | str) -> None:
        self.source = Path(source)
        self.description = str(source)
        self._summary: Inspection | None = None

    def resolve(self) -> str:
        self._summary = inspect_adapter(self.source)
        return f"{self.source}@{self._summary.digest}"

    def download(self, staged: Path, budget: SizeBudget) -> str | None:
        summary = self._summary or inspect_adapter(self.source)
        budget.announce(summary.size_bytes)
        for rel in summary.files:
            destination = staged / rel
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.source / rel, destination)
        # The files must still be those hashed: the directory may change while it is copied.
        return summary.digest


def fetch_path(
    source: Path | str,
    store: Path | str,
    name: str,
    *,
    size_limit: int | None = None,
    verify: Verify | None = None,
) -> FetchResult:
    """Copy the adapter directory ``source`` into the store; idempotent for unchanged files."""
    return fetch_into_store(PathFetcher(source), store, name, size_limit=size_limit, verify=verify)

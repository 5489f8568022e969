"""Fixtures of the adapter-source tests: real servers on 127.0.0.1 (tests/support/servers.py),
a CA they share, and the fixture adapters stored from a path source, the reference every other
source must reproduce byte for byte.

Nothing skips: a server binary that is not built fails the test with the command that builds it
(`hack/build-tools.sh --sources`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.adapters.sources import SourceContext, fetch_path
from tests.support import ensure_adapters
from tests.support.servers import LocalCA, make_ca


@pytest.fixture(scope="session")
def adapters() -> dict[str, Path]:
    return ensure_adapters()


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def context(ca: LocalCA) -> SourceContext:
    return SourceContext(timeout_seconds=10, ca_file=ca.cert)


@pytest.fixture(scope="session")
def reference(
    adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The digest of each fixture adapter as the path source stores it."""
    store = tmp_path_factory.mktemp("path-store")
    return {
        name: fetch_path(adapters[name], store, name).summary.digest
        for name in ("rank8", "rank8-v2", "rank16", "new-tokens")
    }


def versions(store: Path, name: str) -> list[str]:
    """What is under the adapter's directory that a reader could take for a version."""
    directory = store / name
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def leftovers(store: Path, name: str) -> list[str]:
    """Anything under the adapter's directory at all (staging directories included)."""
    directory = store / name
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def same_files(stored: Path, original: Path) -> bool:
    names = sorted(p.name for p in stored.iterdir() if not p.name.startswith("."))
    wanted = sorted(p.name for p in original.iterdir() if not p.name.startswith("."))
    return names == wanted and all(
        (stored / n).read_bytes() == (original / n).read_bytes() for n in names
    )

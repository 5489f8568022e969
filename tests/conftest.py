"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def loraplane_home() -> Path:
    home = Path(os.environ.get("LORAPLANE_HOME", Path.home() / ".cache" / "loraplane"))
    home.mkdir(parents=True, exist_ok=True)
    return home

"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The venv is shared by every checkout on the machine (it is cached outside them): test the code
# of this checkout, whichever one the editable install points at.
sys.path.insert(0, str(REPO / "operator"))
# The process node (hack/processnode) too: tests check what it stands in for.
sys.path.insert(1, str(REPO / "hack"))


@pytest.fixture(scope="session")
def loraplane_home() -> Path:
    home = Path(os.environ.get("LORAPLANE_HOME", Path.home() / ".cache" / "loraplane"))
    home.mkdir(parents=True, exist_ok=True)
    return home

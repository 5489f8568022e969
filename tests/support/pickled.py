"""Pickled peft adapters (adapter_model.bin, as `save_pretrained(safe_serialization=False)`
writes them) for the pre-flight of torch pickles, built once into
$LORAPLANE_HOME/adapters-pickled/<name>/, and the damaged kinds made from them in a test's own
directory.

They reuse the recipes of tests/support/adapters.py (same spec, same seeded weights), so a
pickled adapter and its safetensors twin hold the same tensors.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .adapters import RECIPE_VERSION, SPECS, build_adapter
from .cache import build_once, loraplane_home
from .tinymodel import RECIPE_VERSION as MODEL_RECIPE
from .tinymodel import ensure_tiny_model

PICKLE_NAME = "adapter_model.bin"
PICKLED_RECIPE = "pickled-v1"
# The pickled twins: name -> the safetensors fixture whose spec they are saved from.
PICKLED: dict[str, str] = {
    "rank8-bin": "rank8",  # valid on the tiny model
    "wrong-base-bin": "wrong-base",  # trained on the wide tiny Llama: shapes do not fit
}


def ensure_pickled_adapter(name: str, home: Path | None = None) -> Path:
    """One pickled fixture adapter by name (see PICKLED), built on first use."""
    home = home or loraplane_home()
    spec = SPECS[PICKLED[name]]
    model_dir = ensure_tiny_model(home)
    target = home / "adapters-pickled" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return build_once(
        target,
        f"{PICKLED_RECIPE}+{RECIPE_VERSION}+{MODEL_RECIPE}",
        lambda out: build_adapter(out, spec, model_dir, safe_serialization=False),
        extra_stamp={"description": f"{spec.description}, saved as {PICKLE_NAME}"},
    )


def copy_adapter(source: Path, target: Path) -> Path:
    """A private copy of a fixture (without its stamp) for a test to damage."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))
    return target


def truncate_pickle(directory: Path, keep: float = 0.5) -> None:
    """What a cut-off download leaves: the first part of the zip archive, no end record."""
    weights = directory / PICKLE_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])


class Payload:
    """What a malicious pickle holds: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def add_payload(directory: Path, command: str) -> None:
    """Rewrite the adapter's state dict with one more entry that runs `command` when unpickled."""
    import torch

    weights = directory / PICKLE_NAME
    state = torch.load(weights, weights_only=True)
    state["base_model.model.extra"] = Payload(command)
    torch.save(state, weights)

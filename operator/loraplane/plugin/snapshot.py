"""The residency snapshot: what the engine plugin publishes and the agent reads.

The contract between the two ends, imported by both; it imports no vLLM. The worker that holds
vLLM's LoRA manager writes one JSON file into a small in-memory volume it shares with the agent
(`LORAPLANE_RESIDENCY_DIR`), replacing it atomically, when something changed and at least every
`HEARTBEAT_SECONDS`. The agent serves it as metrics and to the operator.

Why a file, not vLLM's Prometheus registry or an endpoint of the plugin's own: vLLM shares
metrics across processes only through a multiprocess directory, which it uses only with several
API servers, and runtime LoRA updating forbids those; series removal does nothing in that mode
either. An endpoint in the worker would need its own port, on every rank, behind the same
NetworkPolicy, inside a process whose job is the forward pass. A file costs the worker one small
write per change and nothing per token, and the agent already serves the pod's state.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, Field, ValidationError

ENV_DIR: Final = "LORAPLANE_RESIDENCY_DIR"
FILE_NAME: Final = "residency.json"
# vLLM's LoRA manager keeps adapters in GPU slots (--max-loras) and a CPU cache
# (--max-cpu-loras); an adapter in neither is read from disk on its next request.
Tier = Literal["gpu", "cpu", "disk"]
# The writer rewrites the file at least this often while its engine lives; a reader drops a
# snapshot older than STALE_SECONDS: a stopped server's last word, not its state. Generous, since
# the writer is a thread of a process busy with the forward pass.
HEARTBEAT_SECONDS: Final = 5.0
STALE_SECONDS: Final = 30.0


class AdapterResidency(BaseModel):
    """One adapter in the engine, by the name vLLM serves it under; counts since it came."""

    path: str = Field(description="The directory vLLM loads it from.")
    tier: Tier = Field(description="Where its weights sit now.")
    activations: int = Field(0, description="Times it took a GPU slot.")
    gpu_evictions: int = Field(0, description="Times it lost its GPU slot to another adapter.")
    cpu_evictions: int = Field(0, description="Times it left the CPU cache for disk.")
    disk_loads: int = Field(0, description="Times its files were read into the CPU cache.")
    disk_load_seconds: float = Field(0.0, description="Time spent on those reads.")


class Snapshot(BaseModel):
    vllm_version: str
    pid: int
    written_at: float = Field(description="Unix time of this write (the heartbeat).")
    gpu_slots: int = Field(description="--max-loras.")
    cpu_slots: int = Field(description="--max-cpu-loras.")
    adapters: dict[str, AdapterResidency] = Field(default_factory=dict)

    def tiers(self) -> dict[str, Tier]:
        return {name: a.tier for name, a in self.adapters.items()}


def path_in(directory: Path | str) -> Path:
    return Path(directory) / FILE_NAME


def write(directory: Path | str, snapshot: Snapshot) -> None:
    """Replace the snapshot atomically: a reader sees the old file or the new, never half."""
    target = path_in(directory)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".residency-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(snapshot.model_dump_json())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(directory: Path | str, now: float | None = None) -> Snapshot | None:
    """The live engine's snapshot; None when there is none, it is unreadable, or stale."""
    try:
        raw = path_in(directory).read_bytes()
        snapshot = Snapshot.model_validate(json.loads(raw))
    except (OSError, ValueError, ValidationError):
        return None
    if (now if now is not None else time.time()) - snapshot.written_at > STALE_SECONDS:
        return None
    return snapshot

"""The operator's one settings object, read from LORAPLANE_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """Every knob of the operator and the agent. Environment: LORAPLANE_<FIELD_NAME_UPPER>."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str | None = Field(
        None, description="Watch only this namespace; empty means every namespace."
    )
    operator_image: str = Field(
        "ghcr.io/loraplane/loraplane:0.1.0",
        description="Image of the agent sidecar (the operator's own image).",
    )
    agent_port: int = Field(8081, description="Port of the agent sidecar in each vLLM pod.")
    vllm_port: int = Field(8000, description="Port vLLM listens on in each pod.")
    resync_seconds: float = Field(
        60.0, gt=0, description="Slow periodic per-pod check of /v1/models that catches drift."
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, description="Timeout of one call to vLLM or to an agent."
    )
    load_concurrency_per_pod: int = Field(
        4, ge=1, description="Adapter loads in flight at once on one vLLM server."
    )
    load_concurrency_total: int = Field(
        32, ge=1, description="Adapter loads in flight at once across all servers."
    )
    pod_status_cap: int = Field(32, ge=1, description="Per-pod entries kept in adapter status.")
    metrics_port: int = Field(8080, description="Port of the operator's /metrics endpoint.")
    health_port: int = Field(8082, description="Port of the operator's liveness endpoint.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for name in cls.model_fields:
            raw = env.get(f"LORAPLANE_{name.upper()}")
            if raw is not None and raw != "":
                values[name] = raw
        return cls.model_validate(values)


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()

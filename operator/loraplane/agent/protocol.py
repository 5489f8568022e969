"""The agent's HTTP contract: routes and bodies, imported by the agent and by the operator.

Bodies are camelCase on the wire, like the API's own models. A fetch answers 200 with a
`Fetched`; 422 with a `Rejection` when the adapter itself is bad (the same answer on every pod);
409 with an `Unavailable` when the source cannot be read now (unreachable, or refusing the
credentials) and no peer has the pinned version (transient: the source may come back); any
other answer is trouble worth a retry.
"""

from __future__ import annotations

from typing import Final

from pydantic import Field

from loraplane.adapters.pickled import PickledAdapters
from loraplane.adapters.sources.credentials import SourceCredentials
from loraplane.adapters.validate import Finding
from loraplane.api.adapter import AdapterSummary
from loraplane.api.common import K8sModel, StatusModel
from loraplane.api.sources import AdapterSource
from loraplane.plugin.snapshot import Tier

FETCH: Final = "/v1/adapters/fetch"
PRUNE: Final = "/v1/adapters/prune"
REQUIRED: Final = "/v1/required"
RESIDENCY: Final = "/v1/residency"
HEALTHZ: Final = "/healthz"
READYZ: Final = "/readyz"
# GET: a version directory as an uncompressed tar stream, for a peer that lacks it.
VERSION: Final = "/v1/adapters/{name}/{digest}"
REJECTED_STATUS: Final = 422
UNAVAILABLE_STATUS: Final = 409
SOURCE_UNAVAILABLE: Final = "SourceUnavailable"
SOURCE_CHANGED: Final = "SourceChanged"


class FetchRequest(K8sModel):
    """Fetch one adapter into the store and verify it against the base model."""

    name: str = Field(description="The LoRAAdapter's name: the store directory.")
    source: AdapterSource
    credentials: SourceCredentials | None = Field(
        default=None, description="What the source's Secret holds, for the kind of the source."
    )
    size_limit_bytes: int | None = Field(
        default=None,
        ge=1,
        description="The adapter store's size limit: a larger adapter is refused, not stored.",
    )
    max_lora_rank: int
    base_model: str | None = Field(default=None, description="The BaseModelDeployment's name.")
    expected_digest: str | None = Field(
        default=None,
        description=(
            "The pinned version (sha256:...): served from the store when there, else from the "
            "source or a peer only if the files have this digest."
        ),
    )
    peers: list[str] = Field(
        default_factory=list,
        description="Base URLs of agents of the same base model that hold the pinned version.",
    )
    follow: bool = Field(
        default=False,
        description=(
            "Read the source even when the pinned version is stored, and answer what it holds "
            "now (a new version); fall back to the pinned one when the source is unavailable."
        ),
    )
    pickled_adapters: PickledAdapters = Field(
        default="verify",
        description=(
            "Weights that are a torch pickle (adapter_model.bin or .pt): verify them like "
            "safetensors (parsed, never executed), or refuse them (the operator's "
            "pickledAdapters setting; an operator that does not send it gets verify, the "
            "setting's default)."
        ),
    )


class Fetched(StatusModel):
    path: str = Field(description="The verified version directory, as vLLM should load it.")
    summary: AdapterSummary
    findings: list[Finding] = Field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [f.message for f in self.findings if f.severity != "error"]


class Rejection(StatusModel):
    reason: str
    message: str
    findings: list[Finding] = Field(default_factory=list)


class Unavailable(StatusModel):
    reason: str  # SOURCE_UNAVAILABLE, SOURCE_CHANGED, SourceUnreachable or SourceUnauthorized
    message: str


def version_path(name: str, digest: str) -> str:
    return VERSION.format(name=name, digest=digest.removeprefix("sha256:"))


class RequiredAdapters(K8sModel):
    """Served names this pod must list before it may be Ready."""

    adapters: list[str]


class PruneRequest(K8sModel):
    """Keep exactly these versions (adapter name -> version directory); remove the rest."""

    keep: dict[str, str]


class PruneResult(StatusModel):
    removed: list[str] = Field(default_factory=list)


class Residency(StatusModel):
    """Where the engine holds each adapter now, by served name (absent from `tiers`: disk)."""

    available: bool = Field(
        description="The engine reports residency (a vLLM with loraplane's plugin, running)."
    )
    tiers: dict[str, Tier] = Field(default_factory=dict)

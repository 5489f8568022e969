"""The agent's HTTP contract: routes and bodies, imported by the agent and by the operator.

Bodies are camelCase on the wire, like the API's own models. An apply names every adapter the
operator wants on the pod that it does not list there yet: the agent fetches and verifies each
into its store and, where the operator pinned the version, registers it with the pod's vLLM. It
answers 200 at once and then one `Applied` per adapter, a JSON line each, as each is done: a
fetch that gives a `Fetched`, a `Rejection` when the adapter itself is bad (the same answer on
every pod), an `Unavailable` when the source cannot be read now and no peer has the pinned
version (transient), or an `error` worth a retry; then the load's outcome. An empty line now
and then says it is still at work. One call per pod for
a thousand adapters, where a call per adapter and another per load bounded a cold fleet.
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

APPLY: Final = "/v1/adapters/apply"
APPLY_CONTENT_TYPE: Final = "application/x-ndjson"
PRUNE: Final = "/v1/adapters/prune"
REQUIRED: Final = "/v1/required"
RESIDENCY: Final = "/v1/residency"
HEALTHZ: Final = "/healthz"
READYZ: Final = "/readyz"
# GET: a version directory as an uncompressed tar stream, for a peer that lacks it.
VERSION: Final = "/v1/adapters/{name}/{digest}"
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


class ApplyItem(FetchRequest):
    """One adapter to bring onto the pod: fetch and verify it; load it when `load`."""

    served_name: str = Field(description="The name vLLM serves it under.")
    load: bool = Field(
        description=(
            "Register the fetched files with vLLM. False for a version not pinned yet: the "
            "operator pins the first one verified, then asks again."
        )
    )
    registered_path: str | None = Field(
        default=None,
        description=(
            "What vLLM serves under the served name now (the operator's listing): other files "
            "are swapped in place, so no request sees the name missing; these files are not "
            "loaded again."
        ),
    )


class ApplyRequest(K8sModel):
    adapters: list[ApplyItem]
    concurrency: int = Field(ge=1, description="Adapters fetched and loaded at once.")
    load_timeout_seconds: float = Field(gt=0, description="Of one load call to vLLM.")
    heartbeat_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "An empty line after this long without an answer: a slow fetch or load is told "
            "apart from an agent that hangs, which the operator gives up on."
        ),
    )


class LoadFailure(StatusModel):
    """vLLM refused or failed a load, as the operator's classification of its answer says."""

    reason: str
    message: str
    permanent: bool = Field(description="The adapter itself is bad: not retried.")
    error_class: str = Field(
        description="rejected, client_error, server_error or unreachable (timeouts included)."
    )


class Applied(StatusModel):
    """What became of one adapter of an apply: exactly one of fetched, rejected, unavailable
    and error; a load outcome only after a fetch."""

    name: str
    fetched: Fetched | None = None
    rejected: Rejection | None = None
    unavailable: Unavailable | None = None
    error: str | None = Field(default=None, description="Trouble worth a retry.")
    fetch_seconds: float | None = None
    # Registered by this call (False: not asked, or the files were registered already).
    loaded: bool = False
    load_failure: LoadFailure | None = None
    load_seconds: float | None = None


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

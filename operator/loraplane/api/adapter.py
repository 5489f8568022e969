"""LoRAAdapter: one adapter, bound to a BaseModelDeployment in the same namespace."""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from loraplane.api.cel import (
    DNS1035_LABEL,
    MODEL_NAME,
    CelRule,
    is_model_name,
    matches,
    validations,
)
from loraplane.api.common import (
    GROUP,
    VERSION,
    Condition,
    K8sModel,
    ObjectMeta,
    StatusModel,
    conditions_field,
)
from loraplane.api.sources import AdapterSource

KIND: Final = "LoRAAdapter"
PLURAL = "loraadapters"
SINGULAR = "loraadapter"
SHORT_NAME = "lora"
LIST_KIND = "LoRAAdapterList"

# The operator keeps at most this many entries in status.pods (the schema enforces it).
MAX_STATUS_PODS = 32

Phase = Literal["Pending", "Loading", "Ready", "Degraded", "Failed"]
PodState = Literal[
    "Pending", "Loading", "Registered", "Outdated", "Failed", "Evicted", "NotAttempted"
]
AdapterConditionType = Literal["Validated", "Ready", "Progressing", "Split"]
UpdatePolicy = Literal["Pinned", "Follow"]

BASE_MODEL_NAME = CelRule(
    name="adapter-base-model-name",
    rule=f"self.matches('{DNS1035_LABEL}')",
    message=(
        "baseModel must be the name of a BaseModelDeployment in the same namespace "
        "(lowercase letters, digits and '-', starting with a letter)"
    ),
)
BASE_MODEL_IMMUTABLE = CelRule(
    name="adapter-base-model-immutable",
    rule="self == oldSelf",
    message=(
        "baseModel is immutable: create a new LoRAAdapter to serve this adapter on another "
        "base model"
    ),
)
SERVED_NAME_FORMAT = CelRule(
    name="adapter-served-name-format",
    rule=f"self.matches('{MODEL_NAME}') && !self.contains('..')",
    message=(
        "servedName must be a valid model name: 1-128 characters from letters, digits and "
        "'._:/-', starting with a letter or digit, without '..'"
    ),
)
DEFAULT_SERVED_NAME_LENGTH = CelRule(
    name="adapter-default-served-name-length",
    rule="has(self.spec.servedName) || size(self.metadata.name) <= 128",
    message=(
        "metadata.name is longer than 128 characters and cannot be the served model name: "
        "set spec.servedName"
    ),
    field_path=".spec",
)

CANARY_NOT_SELF = CelRule(
    name="adapter-canary-not-itself",
    rule="!has(self.spec.canary) || self.spec.canary.adapter != self.metadata.name",
    message="canary.adapter must name another LoRAAdapter, not this one",
    field_path=".spec.canary.adapter",
)


class CanarySpec(K8sModel):
    """Send a share of the requests for this adapter's served name to another adapter of the same
    base model, through the base model's router (spec.router)."""

    adapter: str = Field(
        min_length=1,
        max_length=253,
        description=(
            "Name of the other LoRAAdapter, in the same namespace and on the same base model. It "
            "gets traffic only once it is Ready."
        ),
    )
    weight: int = Field(
        ge=0,
        le=100,
        description="Percent of this adapter's requests sent to the other adapter (0 to 100).",
    )


class LoRAAdapterSpec(K8sModel):
    """Desired state of a LoRAAdapter."""

    base_model: str = Field(
        min_length=1,
        max_length=63,
        description=(
            "Name of the BaseModelDeployment, in the same namespace, whose servers load this "
            "adapter. Immutable."
        ),
        json_schema_extra=validations(BASE_MODEL_NAME, BASE_MODEL_IMMUTABLE),
    )
    served_name: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "Name clients put in the OpenAI 'model' field to use this adapter. "
            "Default: metadata.name."
        ),
        json_schema_extra=validations(SERVED_NAME_FORMAT),
    )
    source: AdapterSource = Field(description="Where the adapter's files come from.")
    update_policy: UpdatePolicy = Field(
        default="Pinned",
        description=(
            "Pinned (default): the files first verified for this spec are the version every pod "
            "serves, whatever happens to the source afterwards; to serve changed files, change "
            "the source or `refresh`. Follow: the source is checked at each resync, and changed "
            "files roll out to every pod as a new version (with an Event naming both digests)."
        ),
    )
    refresh: str | None = Field(
        default=None,
        max_length=253,
        description=(
            "Any value; changing it fetches the source again as a new version (for example after "
            "overwriting the files at the same path)."
        ),
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description=(
            "When a base model has more adapters than room (lora.maxAdaptersPerReplica), "
            "adapters of higher priority keep their place; ties go to the older adapter."
        ),
    )

    canary: CanarySpec | None = Field(
        default=None,
        description=(
            "Split this adapter's requests with another adapter, e.g. 10% to a new version: "
            "clients keep asking for this adapter's served name, and the base model's router "
            "sends the share to the other. Needs spec.router on the base model."
        ),
    )

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, v: str) -> str:
        BASE_MODEL_NAME.require(matches(DNS1035_LABEL, v))
        return v

    @field_validator("served_name")
    @classmethod
    def _served_name(cls, v: str | None) -> str | None:
        if v is not None:
            SERVED_NAME_FORMAT.require(is_model_name(v))
        return v

    def validate_update(self, old: LoRAAdapterSpec) -> None:
        """Python mirror of the transition rules, for an update from ``old`` to ``self``."""
        BASE_MODEL_IMMUTABLE.require(self.base_model == old.base_model)


class AdapterSummary(StatusModel):
    """What the adapter's files say, as found by the pre-flight checks."""

    rank: int | None = Field(
        default=None, description="LoRA rank (r); the largest value when rank_pattern is set."
    )
    alpha: float | None = Field(default=None, description="LoRA alpha.")
    target_modules: list[str] | None = Field(
        default=None, description="Modules the adapter adapts."
    )
    base_model: str | None = Field(
        default=None, description="Base model the adapter was trained on (its config's claim)."
    )
    size_bytes: int | None = Field(default=None, description="Size of the adapter's files.")
    digest: str | None = Field(default=None, description="Digest of the adapter's files.")
    path: str | None = Field(default=None, description="Path of the files inside the pods.")
    max_lora_rank: int | None = Field(
        default=None, description="The base model's maxLoraRank this version was verified against."
    )


class ReplicaCounts(StatusModel):
    """Pods that should hold the adapter, and pods where it is registered."""

    desired: int = Field(default=0, ge=0, description="Pods the adapter is placed on.")
    registered: int = Field(
        default=0, ge=0, description="Of those, pods that serve the current version."
    )
    outdated: int = Field(
        default=0, ge=0, description="Of those, pods that still serve an earlier version."
    )


class PodAdapterStatus(StatusModel):
    """The adapter on one pod."""

    name: str = Field(description="Pod name.")
    state: PodState = Field(
        description=(
            "Pending, Loading, Registered (serves the current version), Outdated (serves an "
            "earlier version), Failed, Evicted, or NotAttempted (the adapter was refused before "
            "this pod tried it)."
        )
    )
    digest: str | None = Field(
        default=None, description="The version this pod serves: the digest of its files."
    )
    since: datetime | None = Field(default=None, description="When the pod entered this state.")
    last_error: str | None = Field(default=None, description="Last error on this pod, if any.")
    tier: Literal["gpu", "cpu", "disk"] | None = Field(
        default=None,
        description=(
            "Where the pod's engine holds the weights it serves under this adapter's name, as "
            "the pod's last sync read it: gpu (a GPU slot), cpu (vLLM's CPU cache), disk (read "
            "again on its next request). Empty when the engine does not report it (a vLLM "
            "image without loraplane's plugin) or the pod does not serve the adapter."
        ),
    )


class TrafficShare(StatusModel):
    """One destination of the requests for a served name that a canary splits."""

    adapter: str = Field(description="The LoRAAdapter that serves these requests.")
    served_name: str = Field(description="Its served name, which the router rewrites to.")
    weight: int = Field(ge=0, le=100, description="Percent of the requests.")


class LoRAAdapterStatus(StatusModel):
    """Observed state of a LoRAAdapter, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    phase: Phase | None = Field(
        default=None, description="Pending, Loading, Ready, Degraded or Failed."
    )
    message: str | None = Field(default=None, description="Why the adapter is in this phase.")
    conditions: list[Condition] = conditions_field("Validated, Ready, Progressing, Split")
    adapter: AdapterSummary | None = Field(default=None, description="The adapter's files.")
    replicas: ReplicaCounts | None = Field(default=None, description="Pod counts.")
    ready: str | None = Field(
        default=None, description="Pods where the adapter is registered over desired, e.g. 2/3."
    )
    pods: list[PodAdapterStatus] | None = Field(
        default=None,
        max_length=MAX_STATUS_PODS,
        description=f"The adapter on each pod (at most {MAX_STATUS_PODS} pods are listed).",
    )
    traffic: list[TrafficShare] | None = Field(
        default=None,
        description=(
            "Where the router sends the requests of a served name that a canary splits: on the "
            "adapter with spec.canary, and on the adapter it names (absent without a canary)."
        ),
    )


class LoRAAdapter(K8sModel):
    """A whole LoRAAdapter object (apiVersion, kind, metadata, spec, status)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default=f"{GROUP}/{VERSION}", description="API version.")
    kind: Literal["LoRAAdapter"] = Field(default=KIND, description="Kind.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Object metadata.")
    spec: LoRAAdapterSpec = Field(description="Desired state.")
    status: LoRAAdapterStatus | None = Field(default=None, description="Observed state.")

    @model_validator(mode="after")
    def _default_served_name(self) -> Self:
        DEFAULT_SERVED_NAME_LENGTH.require(
            self.spec.served_name is not None or len(self.metadata.name) <= 128
        )
        CANARY_NOT_SELF.require(
            self.spec.canary is None or self.spec.canary.adapter != self.metadata.name
        )
        return self

    @property
    def served_name(self) -> str:
        """What clients put in the 'model' field for this adapter."""
        return self.spec.served_name or self.metadata.name


ROOT_RULES = (DEFAULT_SERVED_NAME_LENGTH, CANARY_NOT_SELF)
NAME_RULES: tuple[CelRule, ...] = ()

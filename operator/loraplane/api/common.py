"""Types shared by both kinds: the model base classes, sources, secret references, conditions."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from pydantic.alias_generators import to_camel

from loraplane.api.cel import HF_REPO_ID, QUANTITY, CelRule, matches, validations

GROUP = "loraplane.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "loraplane"


def plain(obj: Any) -> Any:
    """Deep-copy any Mapping / Sequence (kopf's Body, Spec, ...) into plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return [plain(v) for v in obj]
    return obj


class K8sModel(BaseModel):
    """camelCase on the wire, snake_case in Python; either is accepted on input."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> Self:
        """Parse a Kubernetes-shaped mapping (camelCase keys), e.g. ``body["spec"]``."""
        return cls.model_validate(plain(obj))

    def to_k8s(self) -> dict[str, Any]:
        """The Kubernetes-shaped dict: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(K8sModel):
    """Status is written by the operator; unknown keys (from another version) are ignored."""

    model_config = ConfigDict(extra="ignore")


# An arbitrary embedded Kubernetes object (Toleration, Affinity, ResourceRequirements, ...):
# the API server keeps it as is and the kubelet / scheduler validate it when the pod is created.
K8sObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]


def _named_object(what: str, name_max_length: int) -> Any:
    return Annotated[
        dict[str, Any],
        WithJsonSchema(
            {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "required": ["name"],
                "properties": {
                    "name": {
                        "type": "string",
                        "description": f"Name of the {what}.",
                        "minLength": 1,
                        "maxLength": name_max_length,
                    }
                },
            }
        ),
    ]


# Embedded objects that must carry a name: the schema checks it (CEL rules may use it).
EnvVar = _named_object("environment variable", 253)
Volume = _named_object("volume", 63)
VolumeMount = _named_object("volume to mount", 63)


def check_named(items: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    for i, item in enumerate(items):
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise ValueError(f"{what}[{i}] must have a non-empty string 'name'")
    return items


class ObjectMeta(K8sModel):
    """The part of metav1.ObjectMeta the operator reads; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="", description="Name of the object.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    uid: str | None = Field(default=None, description="UID of the object.")
    generation: int | None = Field(default=None, description="Generation of the spec.")
    labels: dict[str, str] | None = Field(default=None, description="Labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations.")


class SecretKeyRef(K8sModel):
    """A key of a Secret in the same namespace as the object."""

    name: str = Field(
        description="Name of the Secret, in the same namespace.",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    key: str = Field(
        description="Key inside the Secret's data.",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


HF_REPO_FORMAT = CelRule(
    name="huggingface-repo-format",
    rule=f"self.matches('{HF_REPO_ID}')",
    message=(
        "repo must be a Hugging Face repository id of the form 'owner/name' "
        "(e.g. meta-llama/Llama-3.1-8B-Instruct)"
    ),
)


class HuggingFaceSource(K8sModel):
    """Files downloaded from the Hugging Face Hub."""

    repo: str = Field(
        description=(
            "Hugging Face repository id, 'owner/name' (e.g. meta-llama/Llama-3.1-8B-Instruct)."
        ),
        max_length=193,
        json_schema_extra=validations(HF_REPO_FORMAT),
    )
    revision: str = Field(
        default="main",
        description=(
            "Branch, tag or commit of the repository. The operator resolves it to a commit so that "
            "what is served does not change under a moving branch until the object is updated."
        ),
        min_length=1,
        max_length=255,
        pattern=r"^[^\s]+$",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding a Hugging Face access token, for gated or private repositories."
        ),
    )

    @field_validator("repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        HF_REPO_FORMAT.require(matches(HF_REPO_ID, v))
        return v


SOURCE_EXACTLY_ONE = CelRule(
    name="source-exactly-one",
    rule="has(self.huggingface) != has(self.path)",
    message="set exactly one of source.huggingface or source.path",
)
PATH_ABSOLUTE = CelRule(
    name="source-path-absolute",
    rule="self.startsWith('/')",
    message="path must be absolute (start with '/'): it is read inside the pod",
)


class ModelSource(K8sModel):
    """Where files come from: exactly one of huggingface or path."""

    model_config = ConfigDict(json_schema_extra=validations(SOURCE_EXACTLY_ONE))

    huggingface: HuggingFaceSource | None = Field(
        default=None, description="Download from the Hugging Face Hub."
    )
    path: str | None = Field(
        default=None,
        description=(
            "Absolute path of a directory visible inside the pods (for example on a volume added "
            "with spec.template.volumes of the BaseModelDeployment)."
        ),
        min_length=1,
        max_length=4096,
        json_schema_extra=validations(PATH_ABSOLUTE),
    )

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            PATH_ABSOLUTE.require(v.startswith("/"))
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        SOURCE_EXACTLY_ONE.require((self.huggingface is None) != (self.path is None))
        return self


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(K8sModel):
    """One observation of the object's state, in the shape of metav1.Condition."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(description="Type of the condition, in CamelCase.", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str | None = Field(
        default=None,
        description="Machine-readable reason for the last transition, in CamelCase.",
        max_length=1024,
    )
    message: str | None = Field(
        default=None, description="Human-readable details of the last transition.", max_length=32768
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The .metadata.generation the condition was computed from.",
    )


def conditions_field(types: str) -> Any:
    return Field(
        default_factory=list,
        description=f"Current state, one entry per type ({types}).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


_QUANTITY_MANTISSA = re.compile(r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))")


def is_positive_quantity(value: str) -> bool:
    """Python mirror of ``isQuantity(v) && quantity(v).isGreaterThan(quantity('0'))``."""
    if not matches(QUANTITY, value):
        return False
    mantissa = _QUANTITY_MANTISSA.match(value)
    return mantissa is not None and any(c in "123456789" for c in mantissa.group(0))


_QUANTITY_SUFFIX: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def quantity_bytes(value: str) -> int:
    """A Kubernetes quantity (10Gi, 500M, 1e9) as a whole number of bytes, rounded up."""
    if not matches(QUANTITY, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number = re.match(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", value)
    assert number is not None  # the quantity pattern matched
    suffix = value[number.end() :]
    amount = Decimal(number.group(0)) * Decimal(_QUANTITY_SUFFIX[suffix])
    return int(amount.to_integral_value(rounding="ROUND_CEILING"))

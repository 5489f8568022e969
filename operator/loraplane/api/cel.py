"""CEL validation rules shared by the CRD schema and the pydantic models.

A rule is declared once, next to the model it guards: its CEL text goes into the generated CRD
(``x-kubernetes-validations``) and the model's validator calls :meth:`CelRule.require` with a Python
check of the same condition, so a bad object fails with the same message in unit tests and at
``kubectl apply``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Every rule ever declared, in declaration order: the unit tests check that each one appears in a
# generated CRD and is exercised by a bad object.
REGISTRY: list[CelRule] = []


class ValidationRuleError(ValueError):
    """A CEL-mirrored rule failed; str() is the message the API server would print."""

    def __init__(self, rule: CelRule) -> None:
        super().__init__(rule.message)
        self.rule = rule


@dataclass(frozen=True, eq=False)
class CelRule:
    """One ``x-kubernetes-validations`` entry."""

    name: str
    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        REGISTRY.append(self)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def require(self, ok: bool) -> None:
        """Raise the rule's message when the Python mirror of the rule does not hold."""
        if not ok:
            raise ValidationRuleError(self)


def validations(*rules: CelRule, **extra: Any) -> dict[str, Any]:
    """A ``json_schema_extra`` carrying the given rules (plus any other schema keywords)."""
    return {"x-kubernetes-validations": [r.schema() for r in rules], **extra}


# Patterns used both by CEL (RE2 syntax) and by Python's re; keep them to the common subset.
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
HF_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
# k8s.io/apimachinery resource.Quantity, as its OpenAPI definition spells it.
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16, 32, 64)


def matches(pattern: str, value: str) -> bool:
    """Python mirror of CEL ``value.matches(pattern)`` (RE2 search semantics)."""
    return re.search(pattern, value) is not None


def is_model_name(value: str) -> bool:
    return matches(MODEL_NAME, value) and ".." not in value


def cel_list(values: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"

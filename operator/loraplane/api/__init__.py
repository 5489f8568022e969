"""The loraplane.dev/v1alpha1 API: pydantic models of both CRDs, the single source of truth.

The CRDs in crds/ are generated from these models by ``python -m loraplane.api.crd``.
"""

from loraplane.api import adapter, base_model
from loraplane.api.adapter import (
    MAX_STATUS_PODS,
    AdapterConditionType,
    AdapterSummary,
    LoRAAdapter,
    LoRAAdapterSpec,
    LoRAAdapterStatus,
    Phase,
    PodAdapterStatus,
    PodState,
    ReplicaCounts,
)
from loraplane.api.base_model import (
    DEFAULT_IMAGE,
    RESERVED_PREFIX,
    RESERVED_VOLUME_PREFIX,
    VLLM_PORT,
    AdapterCounts,
    AdapterStoreSpec,
    BaseModelConditionType,
    BaseModelDeployment,
    BaseModelDeploymentSpec,
    BaseModelDeploymentStatus,
    DType,
    EmptyDirStore,
    EngineSpec,
    LoRADType,
    LoRASpec,
    ModelSpec,
    PersistentVolumeClaimStore,
    PodTemplateSpec,
    PullPolicy,
    Quantization,
    RouterMode,
    RouterScorers,
    RouterSpec,
    RouterStatus,
)
from loraplane.api.cel import LORA_RANKS, CelRule, ValidationRuleError
from loraplane.api.common import (
    API_VERSION,
    CATEGORY,
    GROUP,
    VERSION,
    Condition,
    ConditionStatus,
    HuggingFaceSource,
    K8sModel,
    ModelSource,
    ObjectMeta,
    SecretKeyRef,
)
from loraplane.api.sources import AdapterSource, OCISource, S3Source, SecretRef, URLSource

BASE_MODEL_KIND = base_model.KIND
BASE_MODEL_PLURAL = base_model.PLURAL
BASE_MODEL_SINGULAR = base_model.SINGULAR
BASE_MODEL_SHORT_NAME = base_model.SHORT_NAME
ADAPTER_KIND = adapter.KIND
ADAPTER_PLURAL = adapter.PLURAL
ADAPTER_SINGULAR = adapter.SINGULAR
ADAPTER_SHORT_NAME = adapter.SHORT_NAME

__all__ = [
    "ADAPTER_KIND",
    "ADAPTER_PLURAL",
    "ADAPTER_SHORT_NAME",
    "ADAPTER_SINGULAR",
    "API_VERSION",
    "BASE_MODEL_KIND",
    "BASE_MODEL_PLURAL",
    "BASE_MODEL_SHORT_NAME",
    "BASE_MODEL_SINGULAR",
    "CATEGORY",
    "DEFAULT_IMAGE",
    "GROUP",
    "LORA_RANKS",
    "MAX_STATUS_PODS",
    "RESERVED_PREFIX",
    "RESERVED_VOLUME_PREFIX",
    "VERSION",
    "VLLM_PORT",
    "AdapterConditionType",
    "AdapterCounts",
    "AdapterSource",
    "AdapterStoreSpec",
    "AdapterSummary",
    "BaseModelConditionType",
    "BaseModelDeployment",
    "BaseModelDeploymentSpec",
    "BaseModelDeploymentStatus",
    "CelRule",
    "Condition",
    "ConditionStatus",
    "DType",
    "EmptyDirStore",
    "EngineSpec",
    "HuggingFaceSource",
    "K8sModel",
    "LoRAAdapter",
    "LoRAAdapterSpec",
    "LoRAAdapterStatus",
    "LoRADType",
    "LoRASpec",
    "ModelSource",
    "ModelSpec",
    "OCISource",
    "ObjectMeta",
    "PersistentVolumeClaimStore",
    "Phase",
    "PodAdapterStatus",
    "PodState",
    "PodTemplateSpec",
    "PullPolicy",
    "Quantization",
    "ReplicaCounts",
    "RouterMode",
    "RouterScorers",
    "RouterSpec",
    "RouterStatus",
    "S3Source",
    "SecretKeyRef",
    "SecretRef",
    "URLSource",
    "ValidationRuleError",
    "adapter",
    "base_model",
]

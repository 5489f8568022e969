"""BaseModelDeployment: one base model served by N vLLM pods with LoRA enabled."""

from __future__ import annotations

from typing import Any, Final, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from loraplane.api.cel import (
    DNS1035_LABEL,
    LORA_RANKS,
    MODEL_NAME,
    TENSOR_PARALLEL_SIZES,
    CelRule,
    cel_list,
    is_model_name,
    matches,
    validations,
)
from loraplane.api.common import (
    GROUP,
    VERSION,
    Condition,
    EnvVar,
    K8sModel,
    K8sObject,
    ModelSource,
    ObjectMeta,
    SecretKeyRef,
    StatusModel,
    Volume,
    VolumeMount,
    check_named,
    conditions_field,
    is_positive_quantity,
)
from loraplane.api.sources import SHA256_HEX, AdapterSource

KIND: Final = "BaseModelDeployment"
PLURAL = "basemodeldeployments"
SINGULAR = "basemodeldeployment"
SHORT_NAME = "bmd"
LIST_KIND = "BaseModelDeploymentList"

DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"
VLLM_PORT = 8000
# Keys the operator puts on the objects it creates; users may not set them through the template.
RESERVED_PREFIX = "loraplane.dev/"
# Volume names the operator uses for the pods it builds.
RESERVED_VOLUME_PREFIX = "loraplane-"

Quantization = Literal[
    "awq",
    "awq_marlin",
    "gptq",
    "gptq_marlin",
    "fp8",
    "bitsandbytes",
    "compressed-tensors",
    "gguf",
    "experts_int8",
]
DType = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
LoRADType = Literal["auto", "float16", "bfloat16", "float32"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
BaseModelConditionType = Literal["Available", "Progressing", "Degraded", "Routed", "Merged"]
MergedPodState = Literal["Merging", "Starting", "Serving", "Failed"]
RouterMode = Literal["Envoy", "InferencePool"]
LoRASignal = Literal["Residency", "vLLM"]
# The scorers of the router's Endpoint Picker, by the name the spec and the chart use.
SCORERS: Final = ("queue", "kvCache", "prefix", "loraAffinity")

SERVED_NAME_FORMAT = CelRule(
    name="bmd-served-name-format",
    rule=f"self.matches('{MODEL_NAME}') && !self.contains('..')",
    message=(
        "servedName must be a valid model name: 1-128 characters from letters, digits and "
        "'._:/-', starting with a letter or digit, without '..'"
    ),
)
MAX_CPU_LORAS_AT_LEAST_MAX_LORAS = CelRule(
    name="max-cpu-loras-at-least-max-loras",
    rule="!has(self.maxCpuLoras) || self.maxCpuLoras >= self.maxLoras",
    message=(
        "maxCpuLoras must be greater than or equal to maxLoras (the CPU cache holds every "
        "adapter that is in a GPU slot)"
    ),
    field_path=".maxCpuLoras",
)
MAX_LORA_RANK_SUPPORTED = CelRule(
    name="max-lora-rank-supported",
    rule=f"self in {cel_list(LORA_RANKS)}",
    message="maxLoraRank must be one of the ranks vLLM supports: "
    + ", ".join(str(r) for r in LORA_RANKS),
)
TENSOR_PARALLEL_POWER_OF_TWO = CelRule(
    name="tensor-parallel-power-of-two",
    rule=f"self in {cel_list(TENSOR_PARALLEL_SIZES)}",
    message="tensorParallelSize must be a power of two: "
    + ", ".join(str(r) for r in TENSOR_PARALLEL_SIZES),
)
RESERVED_KEYS = CelRule(
    name="template-reserved-keys",
    rule=f"self.all(k, !k.startsWith('{RESERVED_PREFIX}'))",
    message=f"keys with the prefix '{RESERVED_PREFIX}' are reserved for the operator",
)
RESERVED_VOLUME_NAMES = CelRule(
    name="template-reserved-volume-names",
    rule=f"self.all(v, !v.name.startsWith('{RESERVED_VOLUME_PREFIX}'))",
    message=f"volume names starting with '{RESERVED_VOLUME_PREFIX}' are reserved for the operator",
)
SIZE_LIMIT_QUANTITY = CelRule(
    name="empty-dir-size-limit-quantity",
    rule="isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
    message="sizeLimit must be a positive Kubernetes quantity, such as 10Gi or 500Mi",
)
ADAPTER_STORE_EXACTLY_ONE = CelRule(
    name="adapter-store-exactly-one",
    rule="has(self.emptyDir) != has(self.persistentVolumeClaim)",
    message="set exactly one of adapterStore.emptyDir or adapterStore.persistentVolumeClaim",
)
MERGE_EXACTLY_ONE = CelRule(
    name="merge-adapter-or-source",
    rule="has(self.adapter) != has(self.source)",
    message="set exactly one of merge.adapter or merge.source",
)
MERGE_SOURCE_PINNED = CelRule(
    name="merge-source-pinned",
    rule="!has(self.source) || has(self.digest)",
    message=(
        "merge.source needs merge.digest, the version to merge (status.adapter.digest of the "
        "same files served by any LoRAAdapter): a merged model is built from one pinned version"
    ),
    field_path=".digest",
)
MERGE_NOT_QUANTIZED = CelRule(
    name="merge-not-quantized",
    rule="!has(self.merge) || !has(self.quantization)",
    message=(
        "merge needs an unquantized base model: a LoRA delta cannot be added to quantized "
        "weights; drop quantization or serve the adapter on the fly"
    ),
    field_path=".merge",
)
NAME_IS_DNS_LABEL = CelRule(
    name="bmd-name-dns-label",
    # Declared on metadata.name itself (the one metadata field a CRD may constrain).
    rule=f"size(self) <= 63 && self.matches('{DNS1035_LABEL}')",
    message=(
        "metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', "
        "starting with a letter): it names the Service"
    ),
)


class MergeSpec(K8sModel):
    """One adapter merged into the base model's weights (W = W0 + alpha/r B A): the pods serve
    the merged model as a plain model, at the base model's speed, under the adapter's name."""

    model_config = ConfigDict(json_schema_extra=validations(MERGE_EXACTLY_ONE, MERGE_SOURCE_PINNED))

    adapter: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=(
            "A LoRAAdapter in this namespace, bound to another BaseModelDeployment of the same "
            "model: the version it pins (its status.adapter.digest) is merged, and each new "
            "version rolls the pods. The pods answer to its servedName. If it is deleted, the "
            "last merged version keeps serving."
        ),
    )
    source: AdapterSource | None = Field(
        default=None, description="The adapter's files, given directly (with digest)."
    )
    digest: str | None = Field(
        default=None,
        pattern=SHA256_HEX,
        max_length=71,
        description="With source: the version to merge, sha256:<hex> of the adapter's files.",
    )
    served_name: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "With source: the name the pods answer to. Default: model.servedName, else "
            "metadata.name."
        ),
        json_schema_extra=validations(SERVED_NAME_FORMAT),
    )

    @field_validator("served_name")
    @classmethod
    def _served_name(cls, v: str | None) -> str | None:
        if v is not None:
            SERVED_NAME_FORMAT.require(is_model_name(v))
        return v

    @model_validator(mode="after")
    def _one(self) -> Self:
        MERGE_EXACTLY_ONE.require((self.adapter is None) != (self.source is None))
        MERGE_SOURCE_PINNED.require(self.source is None or self.digest is not None)
        return self


class ModelSpec(K8sModel):
    """The base model and how vLLM loads it."""

    model_config = ConfigDict(json_schema_extra=validations(MERGE_NOT_QUANTIZED))

    source: ModelSource = Field(description="Where the base model's files come from.")
    served_name: str | None = Field(
        default=None,
        description=(
            "Name clients put in the OpenAI 'model' field for the base model "
            "(--served-model-name). Default: metadata.name."
        ),
        max_length=128,
        json_schema_extra=validations(SERVED_NAME_FORMAT),
    )
    quantization: Quantization | None = Field(
        default=None,
        description="Quantization method of the weights (--quantization). Default: detected.",
    )
    dtype: DType = Field(
        default="auto", description="Data type of weights and activations (--dtype)."
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        description="Context length in tokens (--max-model-len). Default: the model's own.",
    )
    merge: MergeSpec | None = Field(
        default=None,
        description=(
            "Serve the base model with one adapter merged into it, instead of adapters on the "
            "fly: no per-token LoRA cost, one adapter only. The pods run without --enable-lora; "
            "LoRAAdapters bound to this deployment are refused. See docs/merge.md."
        ),
    )

    @field_validator("served_name")
    @classmethod
    def _served_name(cls, v: str | None) -> str | None:
        if v is not None:
            SERVED_NAME_FORMAT.require(is_model_name(v))
        return v

    @model_validator(mode="after")
    def _merge(self) -> Self:
        MERGE_NOT_QUANTIZED.require(self.merge is None or self.quantization is None)
        return self


class LoRASpec(K8sModel):
    """vLLM's LoRA settings, and the operator's cap of adapters per pod."""

    model_config = ConfigDict(json_schema_extra=validations(MAX_CPU_LORAS_AT_LEAST_MAX_LORAS))

    max_loras: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Adapters usable in one batch: LoRA slots on the GPU (--max-loras).",
    )
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description=(
            "Adapters cached in CPU memory (--max-cpu-loras); at least maxLoras. "
            "Default: vLLM's (equal to maxLoras)."
        ),
    )
    max_lora_rank: int = Field(
        default=16,
        description=(
            "Largest adapter rank the servers accept (--max-lora-rank): one of "
            + ", ".join(str(r) for r in LORA_RANKS)
            + ". Memory for LoRA slots grows with it."
        ),
        json_schema_extra=validations(MAX_LORA_RANK_SUPPORTED),
    )
    lora_dtype: LoRADType = Field(
        default="auto", description="Data type of the LoRA weights (--lora-dtype)."
    )
    fully_sharded_loras: bool = Field(
        default=False,
        description=(
            "Shard LoRA computation across tensor-parallel ranks (--fully-sharded-loras); "
            "faster with high ranks or large tensor parallelism."
        ),
    )
    max_adapters_per_replica: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most adapters the operator registers on one pod. With more adapters than this, "
            "those of lower priority (then the newer ones) are not placed. Default: no cap."
        ),
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, v: int) -> int:
        MAX_LORA_RANK_SUPPORTED.require(v in LORA_RANKS)
        return v

    @model_validator(mode="after")
    def _cpu_loras(self) -> Self:
        MAX_CPU_LORAS_AT_LEAST_MAX_LORAS.require(
            self.max_cpu_loras is None or self.max_cpu_loras >= self.max_loras
        )
        return self


class EngineSpec(K8sModel):
    """The vLLM container."""

    image: str = Field(
        default=DEFAULT_IMAGE,
        min_length=1,
        max_length=1024,
        description="vLLM server image (an OpenAI-compatible vLLM image).",
    )
    image_pull_policy: PullPolicy = Field(
        default="IfNotPresent", description="Pull policy of the vLLM image."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Extra vLLM command-line arguments, appended after the ones the operator derives from "
            "the spec. Flags vLLM removed or that break runtime LoRA loading are refused with a "
            "Degraded condition."
        ),
        json_schema_extra={"default": []},
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=256,
        description="Extra environment variables of the vLLM container (Kubernetes EnvVar).",
        json_schema_extra={"default": []},
    )
    resources: K8sObject | None = Field(
        default=None,
        description=(
            "Resources of the vLLM container (Kubernetes ResourceRequirements), e.g. "
            "limits: {nvidia.com/gpu: 1}."
        ),
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="GPUs one server shards the model over (--tensor-parallel-size).",
        json_schema_extra=validations(TENSOR_PARALLEL_POWER_OF_TWO),
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding the API key the vLLM servers require from clients (--api-key). "
            "The operator uses it too."
        ),
    )
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=86400,
        description=(
            "How long a vLLM server may take to become healthy after it starts (download, "
            "load, compile) before it is restarted: the startupProbe budget."
        ),
    )

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return check_named(v, "env")

    @field_validator("tensor_parallel_size")
    @classmethod
    def _tp(cls, v: int) -> int:
        TENSOR_PARALLEL_POWER_OF_TWO.require(v in TENSOR_PARALLEL_SIZES)
        return v


def _reserved_keys_ok(m: dict[str, str] | None) -> bool:
    return m is None or not any(k.startswith(RESERVED_PREFIX) for k in m)


class PodTemplateSpec(K8sModel):
    """Scheduling and extra pod settings of the vLLM pods."""

    node_selector: dict[str, str] | None = Field(
        default=None, max_length=64, description="Node labels the pods must be scheduled on."
    )
    tolerations: list[K8sObject] = Field(
        default_factory=list,
        description="Tolerations of the pods (Kubernetes Toleration).",
        json_schema_extra={"default": []},
    )
    affinity: K8sObject | None = Field(
        default=None, description="Affinity of the pods (Kubernetes Affinity)."
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Extra volumes of the pods (Kubernetes Volume), e.g. a model cache or a volume "
            f"holding base model or adapter paths. Names starting with '{RESERVED_VOLUME_PREFIX}' "
            "are reserved."
        ),
        json_schema_extra=validations(RESERVED_VOLUME_NAMES, default=[]),
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list,
        max_length=64,
        description="Extra volume mounts of the vLLM container (Kubernetes VolumeMount).",
        json_schema_extra={"default": []},
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        description="Service account of the pods. Default: the namespace's default.",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods."
    )
    labels: dict[str, str] | None = Field(
        default=None,
        max_length=64,
        description=(
            f"Extra labels of the pods. Keys with the prefix '{RESERVED_PREFIX}' are reserved."
        ),
        json_schema_extra=validations(RESERVED_KEYS),
    )
    annotations: dict[str, str] | None = Field(
        default=None,
        max_length=64,
        description=(
            f"Extra annotations of the pods. Keys with the prefix '{RESERVED_PREFIX}' are reserved."
        ),
        json_schema_extra=validations(RESERVED_KEYS),
    )

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        check_named(v, "volumes")
        RESERVED_VOLUME_NAMES.require(
            not any(str(x["name"]).startswith(RESERVED_VOLUME_PREFIX) for x in v)
        )
        return v

    @field_validator("volume_mounts")
    @classmethod
    def _mounts(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return check_named(v, "volumeMounts")

    @field_validator("labels", "annotations")
    @classmethod
    def _reserved(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        RESERVED_KEYS.require(_reserved_keys_ok(v))
        return v


class EmptyDirStore(K8sModel):
    """A node-local emptyDir: adapters are fetched again when a pod is replaced."""

    size_limit: str = Field(
        default="10Gi",
        max_length=64,
        description="Size limit of the volume (a Kubernetes quantity, e.g. 10Gi).",
        json_schema_extra=validations(SIZE_LIMIT_QUANTITY),
    )

    @field_validator("size_limit")
    @classmethod
    def _size(cls, v: str) -> str:
        SIZE_LIMIT_QUANTITY.require(is_positive_quantity(v))
        return v


class PersistentVolumeClaimStore(K8sModel):
    """An existing PersistentVolumeClaim, shared by all pods (it needs ReadWriteMany with
    more than one replica)."""

    claim_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Name of the PersistentVolumeClaim, in the same namespace.",
    )


class AdapterStoreSpec(K8sModel):
    """The volume adapter files are stored in, shared by the agent and vLLM in each pod."""

    model_config = ConfigDict(json_schema_extra=validations(ADAPTER_STORE_EXACTLY_ONE))

    empty_dir: EmptyDirStore | None = Field(default=None, description="A per-pod emptyDir volume.")
    persistent_volume_claim: PersistentVolumeClaimStore | None = Field(
        default=None, description="An existing PersistentVolumeClaim."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        ADAPTER_STORE_EXACTLY_ONE.require(
            (self.empty_dir is None) != (self.persistent_volume_claim is None)
        )
        return self


def _default_store() -> AdapterStoreSpec:
    return AdapterStoreSpec(empty_dir=EmptyDirStore())


ROUTER_SOME_SCORER = CelRule(
    name="router-some-scorer",
    # An unset weight takes the operator's default: only all four set to 0 is sure to be empty.
    rule="!(" + " && ".join(f"has(self.{k}) && self.{k} == 0" for k in SCORERS) + ")",
    message=(
        "router.scorers must leave at least one scorer a weight above 0 (all 0 leaves the "
        "Endpoint Picker nothing to choose a pod by)"
    ),
)


class RouterScorers(K8sModel):
    """Weights of the Endpoint Picker's scorers; an unset weight takes the operator's default
    (the chart's router.scorers values). 0 turns a scorer off."""

    model_config = ConfigDict(json_schema_extra=validations(ROUTER_SOME_SCORER))

    queue: int | None = Field(
        default=None, ge=0, le=100, description="Prefer pods with fewer requests waiting."
    )
    kv_cache: int | None = Field(
        default=None, ge=0, le=100, description="Prefer pods with more free KV cache."
    )
    prefix: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Prefer pods that likely hold the prompt's prefix (and adapter) in cache.",
    )
    lora_affinity: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description=(
            "Prefer pods where the request's adapter sits in a GPU slot, then in the CPU cache."
        ),
    )

    @model_validator(mode="after")
    def _some(self) -> Self:
        weights = [getattr(self, f) for f in type(self).model_fields]
        ROUTER_SOME_SCORER.require(any(w != 0 for w in weights))
        return self


class RouterSpec(K8sModel):
    """A router in front of the base model's pods that sends each request to the pod best placed
    to serve its adapter: the Gateway API Inference Extension's Endpoint Picker, fed by where
    each adapter really sits in each engine."""

    mode: RouterMode = Field(
        default="Envoy",
        description=(
            "Envoy: the operator runs <name>-router, a Deployment of the Endpoint Picker with "
            "Envoy in front of it, and its Service (clients call it instead of <name>). "
            "InferencePool: for clusters with a Gateway that implements the Inference Extension "
            "(Istio, kgateway, NGINX Gateway Fabric, agentgateway): the operator runs the "
            "Endpoint Picker and an InferencePool pointing at it; your HTTPRoute sends traffic "
            "to the pool."
        ),
    )
    replicas: int = Field(default=1, ge=1, le=16, description="Router pods.")
    fail_open: bool = Field(
        default=True,
        description=(
            "When the Endpoint Picker does not answer, send requests to any Ready pod (true) "
            "or answer 503 (false)."
        ),
    )
    lora_signal: LoRASignal = Field(
        default="Residency",
        description=(
            "What the LoRA affinity scorer reads from each pod: Residency, loraplane's gauge "
            "of the adapters in GPU slots and in the CPU cache (needs the operator's engine "
            "plugin; without it the pods publish nothing and the scorer scores every pod "
            "alike); vLLM, vLLM's own vllm:lora_requests_info, which lists only adapters with "
            "requests in flight."
        ),
    )
    scorers: RouterScorers = Field(
        default_factory=RouterScorers,
        description="Scorer weights of the Endpoint Picker.",
        json_schema_extra={"default": {}},
    )
    epp_resources: K8sObject | None = Field(
        default=None,
        description="Resources of the Endpoint Picker container (Kubernetes ResourceRequirements).",
    )
    envoy_resources: K8sObject | None = Field(
        default=None,
        description="Resources of the Envoy container (Kubernetes ResourceRequirements).",
    )


class BaseModelDeploymentSpec(K8sModel):
    """Desired state of a BaseModelDeployment."""

    replicas: int = Field(default=1, ge=0, description="Number of vLLM pods.")
    model: ModelSpec = Field(description="The base model.")
    lora: LoRASpec = Field(
        default_factory=LoRASpec,
        description="LoRA settings of the vLLM servers.",
        json_schema_extra={"default": {}},
    )
    engine: EngineSpec = Field(
        default_factory=EngineSpec,
        description="The vLLM container.",
        json_schema_extra={"default": {}},
    )
    template: PodTemplateSpec = Field(
        default_factory=PodTemplateSpec,
        description="Scheduling and extra settings of the pods.",
        json_schema_extra={"default": {}},
    )
    adapter_store: AdapterStoreSpec = Field(
        default_factory=_default_store,
        description="Volume holding adapter files in each pod. Default: an emptyDir of 10Gi.",
        json_schema_extra={"default": {"emptyDir": {}}},
    )
    router: RouterSpec | None = Field(
        default=None,
        description=(
            "Route requests by adapter: a router per base model that sends each request to the "
            "pod where its adapter already sits (opt-in; without it clients call the Service, "
            "which spreads requests at random)."
        ),
    )


class AdapterCounts(StatusModel):
    """How many LoRAAdapters point at this base model, and how many of them are Ready."""

    desired: int = Field(default=0, ge=0, description="LoRAAdapters bound to this base model.")
    ready: int = Field(default=0, ge=0, description="Of those, adapters in phase Ready.")


class RouterStatus(StatusModel):
    """The router of this base model, as the operator last saw it."""

    mode: RouterMode | None = Field(default=None, description="Envoy or InferencePool.")
    endpoint: str | None = Field(
        default=None,
        description=(
            "OpenAI-compatible base URL of the router's Service (Envoy mode), e.g. "
            "http://NAME-router.NS.svc:8000/v1; in InferencePool mode, the pool's name."
        ),
    )
    ready: str | None = Field(default=None, description="Ready router pods over desired.")


class MergedPod(StatusModel):
    """The merged model on one pod."""

    name: str = Field(description="Pod name.")
    digest: str | None = Field(default=None, description="The version this pod merges or serves.")
    state: MergedPodState = Field(
        description=(
            "Merging (its merge init container runs), Starting (merged, vLLM starting), "
            "Serving (ready), Failed (its merge failed: see message)."
        )
    )
    message: str | None = Field(default=None, description="Why the merge failed.")


class MergeFailure(StatusModel):
    """A version whose merge failed, remembered for the generation it was tried at."""

    digest: str = Field(description="The version that failed.")
    reason: str = Field(description="Why, in one word.")
    message: str = Field(description="What the merge said.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation it failed at: a new one retries."
    )


class MergeStatus(StatusModel):
    """The adapter merged into the base model (spec.model.merge)."""

    adapter: str | None = Field(default=None, description="The LoRAAdapter merged.")
    served_name: str | None = Field(default=None, description="The name the pods answer to.")
    digest: str | None = Field(
        default=None, description="The version the pods are rolled to (new pods merge it)."
    )
    pods: list[MergedPod] | None = Field(
        default=None, max_length=32, description="Each pod's merged version (at most 32)."
    )
    failed: MergeFailure | None = Field(
        default=None, description="The last version whose merge failed, if any."
    )


class BaseModelDeploymentStatus(StatusModel):
    """Observed state of a BaseModelDeployment, written by the operator."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this status describes."
    )
    replicas: int | None = Field(default=None, description="vLLM pods that exist.")
    ready_replicas: int | None = Field(default=None, description="vLLM pods that are ready.")
    updated_replicas: int | None = Field(
        default=None, description="vLLM pods running the current spec."
    )
    ready: str | None = Field(default=None, description="Ready pods over desired, e.g. 2/3.")
    selector: str | None = Field(
        default=None, description="Label selector of the pods (for the scale subresource)."
    )
    endpoint: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL of the Service, e.g. http://NAME.NS.svc:8000/v1.",
    )
    served_name: str | None = Field(
        default=None, description="Model name of the base model in the OpenAI API."
    )
    conditions: list[Condition] = conditions_field(
        "Available, Progressing, Degraded, Routed, Merged"
    )
    adapters: AdapterCounts | None = Field(default=None, description="LoRAAdapter counts.")
    router: RouterStatus | None = Field(
        default=None, description="The router (spec.router); absent without one."
    )
    merge: MergeStatus | None = Field(
        default=None, description="The merged adapter (spec.model.merge); absent without one."
    )


class BaseModelDeployment(K8sModel):
    """A whole BaseModelDeployment object (apiVersion, kind, metadata, spec, status)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default=f"{GROUP}/{VERSION}", description="API version.")
    kind: Literal["BaseModelDeployment"] = Field(default=KIND, description="Kind.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Object metadata.")
    spec: BaseModelDeploymentSpec = Field(description="Desired state.")
    status: BaseModelDeploymentStatus | None = Field(default=None, description="Observed state.")

    @model_validator(mode="after")
    def _name(self) -> Self:
        name = self.metadata.name
        if name:  # generateName objects have no name yet
            NAME_IS_DNS_LABEL.require(len(name) <= 63 and matches(DNS1035_LABEL, name))
        return self

    @property
    def served_name(self) -> str:
        """What clients put in the 'model' field for the base model."""
        return self.spec.model.served_name or self.metadata.name


ROOT_RULES: tuple[CelRule, ...] = ()
NAME_RULES = (NAME_IS_DNS_LABEL,)

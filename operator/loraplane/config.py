"""Every tunable of the operator and of the agent, as typed settings read from LORAPLANE_* env.

The chart renders these as environment variables; nothing else in the package reads the
environment for a tunable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraplane.adapters.pickled import PickledAdapters
from loraplane.adapters.sources.protocol import SourceContext
from loraplane.api.adapter import MAX_STATUS_PODS

ENV_PREFIX = "LORAPLANE_"


class _FromEnv(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for name in cls.model_fields:
            raw = env.get(env_name(name))
            if raw is not None and raw != "":
                values[name] = raw
        return cls.model_validate(values)


def env_name(field: str) -> str:
    """The environment variable of a settings field."""
    return f"{ENV_PREFIX}{field.upper()}"


class Settings(_FromEnv):
    """The operator's settings. Environment: LORAPLANE_<FIELD_NAME_UPPER>."""

    namespaces: tuple[str, ...] = Field(
        (),
        description=(
            "Watch only these namespaces (comma-separated in the environment); empty means "
            "every namespace."
        ),
    )
    operator_namespace: str | None = Field(
        None,
        description=(
            "The operator's own namespace: the NetworkPolicies let the operator's pods in it "
            "reach the vLLM and agent ports."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the operator."
    )
    trace: bool = Field(
        False,
        description=(
            "Log one JSON line per step of adapter work (logger loraplane.trace: watch events, "
            "pod syncs, agent applies, status writes) whatever logLevel is: a "
            "timeline of where time goes."
        ),
    )
    network_policy: bool = Field(
        False,
        description=(
            "Create a NetworkPolicy per BaseModelDeployment: only the operator (and the pod's "
            "peers, for copies of pinned versions) reach the agent port; only the operator and "
            "the clients reach the vLLM port, whose adapter routes vLLM leaves unguarded."
        ),
    )
    network_policy_clients: tuple[dict[str, Any], ...] = Field(
        ({"podSelector": {}},),
        description=(
            "Who may call the vLLM port (the OpenAI API) when network_policy is on: a JSON list "
            "of NetworkPolicyPeer objects (podSelector, namespaceSelector, ipBlock); the default "
            "is every pod of the base model's namespace; an empty list lets any source in. Add "
            "your Prometheus here to scrape vLLM's /metrics."
        ),
    )
    operator_image: str = Field(
        "ghcr.io/loraplane/loraplane:0.1.0",
        description="Image of the agent sidecar (the operator's own image).",
    )
    agent_port: int = Field(8081, description="Port of the agent sidecar in each vLLM pod.")
    vllm_port: int = Field(8000, description="Port vLLM listens on in each pod.")
    agent_metrics_port: int = Field(
        8082,
        description=(
            "Port of the agent's /metrics in each vLLM pod (engine residency and evictions), "
            "open to whoever may reach the vLLM port."
        ),
    )
    engine_plugin: bool = Field(
        True,
        description=(
            "Enable loraplane's vLLM plugin in the pods (VLLM_PLUGINS): per-adapter GPU and CPU "
            "residency and evictions. Needs a vLLM image with the loraplane package (images/vllm); "
            "other images serve as before, without residency."
        ),
    )
    merge_image: str = Field(
        "",
        description=(
            "Image of the merge init container of merged base models (spec.model.merge); empty: "
            "the base model's own vLLM image, which then needs the loraplane package (as "
            "images/vllm has) beside its torch and safetensors."
        ),
    )
    resync_seconds: float = Field(
        60.0, gt=0, description="Slow periodic per-pod check of /v1/models that catches drift."
    )
    residency_interval_seconds: float = Field(
        60.0,
        gt=0,
        description=(
            "Each pod's engine residency (status.pods[].tier) is read from its agent at most this "
            "often, and at once after the pod's registrations changed: one agent call per pod "
            "per interval."
        ),
    )
    base_model_resync_seconds: float = Field(
        300.0,
        gt=0,
        description=(
            "Periodic reconcile of each BaseModelDeployment from the watch cache (no API call "
            "unless something drifted); watch events of its children reconcile it at once."
        ),
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, description="Timeout of one call to vLLM other than an adapter load."
    )
    load_timeout_seconds: float = Field(
        60.0, gt=0, description="Timeout of one adapter load call to vLLM."
    )
    agent_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Timeout of one call to an agent (a fetch downloads and verifies the files).",
    )
    unload_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description=(
            "How long deleting a LoRAAdapter waits for its pods to unregister it; a pod that "
            "does not answer in time is skipped (its registrations end with its vLLM)."
        ),
    )
    secret_cache_seconds: float = Field(
        300.0,
        gt=0,
        description=(
            "How long a Secret value (API key, tokens) is reused: every pod sync needs the agent "
            "token, so this bounds the Secret reads per pod; a changed value is seen within it."
        ),
    )
    backoff_initial_seconds: float = Field(
        1.0, gt=0, description="First retry delay of a pod sync that failed."
    )
    backoff_max_seconds: float = Field(
        30.0, gt=0, description="Cap of the doubling retry delay of a pod sync."
    )
    starting_poll_seconds: float = Field(
        0.5,
        gt=0,
        description="How often a vLLM server that runs but is not healthy yet is asked again.",
    )
    status_progress_seconds: float = Field(
        1.0,
        ge=0,
        description=(
            "Within one phase an adapter's progress (pods registered so far, engine tiers) is "
            "written at most this often; a change of phase, version or condition is written at "
            "once. A base model's adapter counts follow within this long too. Coalesces the "
            "writes of a burst."
        ),
    )
    status_write_concurrency: int = Field(
        8, ge=1, description="Adapter status writes in flight at once."
    )
    agent_apply_batch: int = Field(
        100,
        ge=1,
        description=(
            "Adapters in one apply call to a pod's agent (fetched, pinned, then loaded, before "
            "the next batch): a pod of a thousand adapters costs ten calls a round, and each "
            "batch's adapters turn Ready while the next is fetched."
        ),
    )
    load_concurrency_per_pod: int = Field(
        4,
        ge=1,
        description=(
            "Adapters one pod's agent fetches and loads at once (vLLM itself loads one at a "
            "time). Pods work in parallel: nothing caps the fleet as a whole."
        ),
    )
    list_chunk_size: int = Field(
        500,
        ge=1,
        description=(
            "Objects per page when the operator lists a kind to know the fleet at start: "
            "bounds the memory a list of thousands of adapters takes at once."
        ),
    )
    pod_status_cap: int = Field(
        MAX_STATUS_PODS,
        ge=1,
        le=MAX_STATUS_PODS,
        description=f"Per-pod entries kept in adapter status (the CRD allows {MAX_STATUS_PODS}).",
    )
    metrics_port: int = Field(8080, description="Port of the operator's /metrics endpoint.")
    health_port: int = Field(8082, description="Port of the operator's liveness endpoint.")
    agent_cpu_request: str = Field("50m", description="CPU request of the agent sidecar.")
    agent_memory_request: str = Field("128Mi", description="Memory request of the agent sidecar.")
    agent_memory_limit: str = Field("512Mi", description="Memory limit of the agent sidecar.")
    source_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description=(
            "Timeout of connecting to an adapter source and of each read from it: the "
            "operator's pre-flight of huggingface adapters and the agents' downloads (the "
            "operator passes it to the agents it builds)."
        ),
    )
    source_ca_file: Path | None = Field(
        None,
        description=(
            "PEM file of CA certificates trusted for adapter sources besides the system's; "
            "passed to the agents, so the file must be mounted in the operator and in the "
            "base models' pods (spec.template.volumes) at this path."
        ),
    )
    huggingface_endpoint: str | None = Field(
        None,
        description=(
            "A hub-compatible server for huggingface adapter sources (default: the Hub); the "
            "operator passes it to the agents it builds."
        ),
    )
    pickled_adapters: PickledAdapters = Field(
        "verify",
        description=(
            "Adapters whose weights are a torch pickle (adapter_model.bin or .pt, no "
            "safetensors): verify reads their tensor names and shapes without executing the "
            "pickle and gives them the same pre-flight as safetensors, refusing any pickle that "
            "names code or objects other than tensors (UnsafePickle); refuse turns every one "
            "away (PickledWeightsRefused)."
        ),
    )

    router_epp_image: str = Field(
        "ghcr.io/loraplane/router:0.1.0",
        description=(
            "Image of the router's Endpoint Picker (spec.router): loraplane's router image (the "
            "Gateway API Inference Extension's EPP v1.5.0 and Envoy), or any EPP with the same "
            "flags and configuration, such as upstream's "
            "registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0 (set routerEppCommand "
            "to /epp for it) or llm-d-router's."
        ),
    )
    # A setting rather than a guess from the image's name: a mirrored copy of the router image
    # (another registry, the same content) needs the same command as the original.
    router_epp_command: str = Field(
        "epp",
        pattern=r"^\S+$",
        description=(
            "The executable the router's EPP container runs (its command; the operator sets the "
            "flags as args): epp, on the router image's PATH; /epp, the ENTRYPOINT of upstream's "
            "EPP image, which has no epp on its PATH."
        ),
    )
    router_envoy_image: str = Field(
        "ghcr.io/loraplane/router:0.1.0",
        description=(
            "Image of the router's Envoy (spec.router, mode Envoy): loraplane's router image, or "
            "any Envoy 1.40 such as docker.io/envoyproxy/envoy:distroless-v1.40.0."
        ),
    )
    router_envoy_command: str = Field(
        "envoy",
        pattern=r"^\S+$",
        description=(
            "The executable the router's Envoy container runs (its command; the operator sets "
            "the flags as args): envoy, on the PATH of both the router image and Envoy's own."
        ),
    )
    router_queue_weight: int = Field(
        2, ge=0, le=100, description="Default weight of the router's queue scorer."
    )
    router_kv_cache_weight: int = Field(
        2, ge=0, le=100, description="Default weight of the router's KV-cache scorer."
    )
    router_prefix_weight: int = Field(
        3, ge=0, le=100, description="Default weight of the router's prefix-cache scorer."
    )
    router_lora_affinity_weight: int = Field(
        4, ge=0, le=100, description="Default weight of the router's LoRA affinity scorer."
    )
    router_refresh_metrics_ms: int = Field(
        200,
        ge=10,
        le=60000,
        description=(
            "How often the router's Endpoint Picker scrapes each pod's /metrics (queue, KV "
            "cache, adapter residency), in milliseconds. The EPP's own default, 50, costs a "
            "vLLM API server a scrape 20 times a second."
        ),
    )
    router_envoy_concurrency: int = Field(
        2, ge=1, le=64, description="Worker threads of the router's Envoy (--concurrency)."
    )
    router_request_timeout_seconds: int = Field(
        600,
        ge=1,
        description="How long the router's Envoy waits for one request's whole answer.",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(ns.strip() for ns in value.split(",") if ns.strip())
        return value

    @field_validator("network_policy_clients", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def source_context(self) -> SourceContext:
        return SourceContext(
            timeout_seconds=self.source_timeout_seconds,
            ca_file=self.source_ca_file,
            huggingface_endpoint=self.huggingface_endpoint,
        )

    def agent_source_env(self) -> dict[str, str]:
        """The agent's environment for the source settings that are set."""
        values = {
            "source_timeout_seconds": self.source_timeout_seconds,
            "source_ca_file": self.source_ca_file,
            "huggingface_endpoint": self.huggingface_endpoint,
        }
        return {env_name(k): str(v) for k, v in values.items() if v is not None}

    def router_weights(self) -> dict[str, int]:
        """The default scorer weights, by the fields of api.RouterScorers."""
        return {
            "queue": self.router_queue_weight,
            "kv_cache": self.router_kv_cache_weight,
            "prefix": self.router_prefix_weight,
            "lora_affinity": self.router_lora_affinity_weight,
        }

    def agent_resources(self) -> dict[str, Any]:
        return {
            "requests": {"cpu": self.agent_cpu_request, "memory": self.agent_memory_request},
            "limits": {"memory": self.agent_memory_limit},
        }

    @model_validator(mode="after")
    def _backoff(self) -> Self:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("backoff_max_seconds must be at least backoff_initial_seconds")
        if not any(self.router_weights().values()):
            raise ValueError("at least one router_*_weight must be above 0")
        return self


class AgentSettings(_FromEnv):
    """The agent sidecar's settings, set by the operator in the pods it builds."""

    agent_port: int = Field(8081, description="Port the agent listens on.")
    vllm_url: str = Field(
        "http://127.0.0.1:8000", description="vLLM in the same pod, for the readiness check."
    )
    adapter_root: Path = Field(Path("/adapters"), description="The adapter store's mount path.")
    agent_token: str = Field("", description="Bearer token the operator presents.")
    model_path: Path | None = Field(
        None, description="Base model directory, to check adapter shapes against its config."
    )
    vllm_api_key: str | None = Field(None, description="vLLM's API key, when it has one.")
    peer_timeout_seconds: float = Field(
        120.0, gt=0, description="Timeout of copying a pinned version from a peer's agent."
    )
    vllm_probe_timeout_seconds: float = Field(
        2.0, gt=0, description="Timeout of the readiness check's calls to vLLM."
    )
    readiness_refresh_seconds: float = Field(
        30.0,
        gt=0,
        description=(
            "Longest the readiness check answers Ready from its last list of vLLM's adapters "
            "while vLLM stays healthy over the same connection and the required list is the same."
        ),
    )
    metrics_port: int | None = Field(
        None, description="Port of the agent's /metrics (engine residency); none: not served."
    )
    residency_dir: Path | None = Field(
        None,
        description=(
            "Where vLLM's loraplane plugin writes its residency snapshot (a memory volume both "
            "containers mount); none: the engine reports no residency."
        ),
    )
    base_model: str = Field("", description="The BaseModelDeployment's name, a metrics label.")
    source_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description=(
            "Timeout of connecting to an adapter source and of each read from it (a download "
            "that stalls this long fails as SourceUnreachable and is retried)."
        ),
    )
    source_ca_file: Path | None = Field(
        None,
        description=(
            "PEM file of CA certificates trusted for adapter sources besides the system's (a "
            "private registry, object store or web server)."
        ),
    )
    huggingface_endpoint: str | None = Field(
        None,
        description="A hub-compatible server to fetch huggingface sources from (default: the Hub).",
    )

    def source_context(self) -> SourceContext:
        return SourceContext(
            timeout_seconds=self.source_timeout_seconds,
            ca_file=self.source_ca_file,
            huggingface_endpoint=self.huggingface_endpoint,
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()

"""The chart's values, as one typed definition.

`values.yaml` (defaults with their descriptions), `values.schema.json` (what `helm install`
checks) and the values table of the chart's README are all generated from these models, so the
three cannot disagree. The operator's tunables are not repeated here: `settings` is derived from
`loraplane.config.Settings` field by field, and the env the chart renders is generated from the
same fields (see `render.settings_env`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from loraplane.api.common import K8sModel
from loraplane.config import Settings

IMAGE_REPOSITORY = "ghcr.io/loraplane/loraplane"
NONROOT_UID = 65532  # the operator image's USER (images/operator/Containerfile)

# Settings the chart fills in itself from other values (or from the release), not `settings`.
CHART_OWNED = {
    "namespaces": "watchNamespaces",
    "operator_namespace": "the release namespace",
    "operator_image": "image",
    "metrics_port": "metrics.port",
    "health_port": "health.port",
    "network_policy": "networkPolicy.enabled",
    "network_policy_clients": "networkPolicy.clients",
}

K8sObject = dict[str, Any]


def _settings_model() -> type[K8sModel]:
    """`settings:`: every other Settings field, with its default, range and description."""
    fields: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        if name in CHART_OWNED:
            continue
        copied = FieldInfo.merge_field_infos(info)
        fields[name] = (info.annotation, copied)
    return create_model("OperatorSettings", __base__=K8sModel, **fields)


OperatorSettings = _settings_model()


class Image(K8sModel):
    repository: str = Field(
        IMAGE_REPOSITORY, description="The operator image (it also runs the agent sidecars)."
    )
    tag: str = Field("", description="Image tag; empty means the chart's appVersion.")
    digest: str = Field(
        "", pattern=r"^(sha256:[0-9a-f]{64})?$", description="Pin by digest (wins over the tag)."
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="imagePullPolicy of the operator container."
    )


class Crds(K8sModel):
    enabled: bool = Field(
        True,
        description=(
            "Install and upgrade the CRDs with the release (templates, so `helm upgrade` "
            "updates them)."
        ),
    )
    keep: bool = Field(
        True,
        description=(
            "Annotate the CRDs `helm.sh/resource-policy: keep`: `helm uninstall` leaves them "
            "and every BaseModelDeployment and LoRAAdapter in place."
        ),
    )
    inference_extension: bool = Field(
        True,
        description=(
            "Install the Gateway API Inference Extension's InferencePool and "
            "InferenceModelRewrite CRDs (v1.5.0), which the router of a base model "
            "(spec.router) and canaries between adapters (spec.canary) need; turn off where a "
            "Gateway's own installation of the Inference Extension already provides them."
        ),
    )


class ServiceAccount(K8sModel):
    create: bool = Field(True, description="Create the operator's ServiceAccount.")
    name: str = Field("", description="Its name; empty means the release's full name.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations (e.g. a cloud IAM role)."
    )


class Rbac(K8sModel):
    create: bool = Field(
        True,
        description=(
            "Create the operator's (Cluster)Role and binding: a ClusterRole when "
            "watchNamespaces is empty, else a Role and RoleBinding in each watched namespace."
        ),
    )


class NetworkPolicy(K8sModel):
    enabled: bool = Field(
        False, description=Settings.model_fields["network_policy"].description or ""
    )
    clients: list[K8sObject] = Field(
        default_factory=lambda: [{"podSelector": {}}],
        description=Settings.model_fields["network_policy_clients"].description or "",
    )


class Monitor(K8sModel):
    enabled: bool = Field(False, description="Create it (needs the Prometheus Operator CRDs).")
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$", description="Scrape interval.")
    additional_labels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Extra labels; kube-prometheus-stack selects only monitors labelled with its "
            "release (e.g. release: kube-prometheus-stack)."
        ),
    )


class PrometheusRule(K8sModel):
    enabled: bool = Field(
        False, description="Create the alert rules (a PrometheusRule; needs its CRD)."
    )
    additional_labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels, as for the monitors."
    )


class Dashboard(K8sModel):
    enabled: bool = Field(
        False,
        description="Create a ConfigMap with the Grafana dashboard, for Grafana's sidecar.",
    )
    labels: dict[str, str] = Field(
        default_factory=lambda: {"grafana_dashboard": "1"},
        description="Labels Grafana's dashboard sidecar looks for.",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations (e.g. grafana_folder)."
    )


class MetricsService(K8sModel):
    enabled: bool = Field(True, description="Create the Service in front of /metrics.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Its annotations.")


class Metrics(K8sModel):
    port: int = Field(
        Settings.model_fields["metrics_port"].default,
        ge=1,
        le=65535,
        description=Settings.model_fields["metrics_port"].description or "",
    )
    service: MetricsService = Field(default_factory=MetricsService)
    service_monitor: Monitor = Field(
        default_factory=Monitor, description="A ServiceMonitor of the operator's /metrics."
    )
    pod_monitor: Monitor = Field(
        default_factory=Monitor,
        description="A PodMonitor of the vLLM pods' /metrics (vllm:* series beside ours).",
    )
    prometheus_rule: PrometheusRule = Field(default_factory=PrometheusRule)
    dashboard: Dashboard = Field(default_factory=Dashboard)


class Health(K8sModel):
    port: int = Field(
        Settings.model_fields["health_port"].default,
        ge=1,
        le=65535,
        description="Port of kopf's health endpoint (liveness and readiness probes).",
    )


class Values(K8sModel):
    """Every value of the loraplane chart."""

    name_override: str = Field("", description="Replaces the chart name in resource names.")
    fullname_override: str = Field("", description="Replaces the release-chart full name.")
    replicas: int = Field(
        1,
        ge=0,
        le=1,
        description=(
            "Operator replicas: 1, or 0 to stop it. The operator is a single writer "
            "(strategy Recreate, no peering): never two at once."
        ),
    )
    image: Image = Field(default_factory=Image)
    image_pull_secrets: list[K8sObject] = Field(
        default_factory=list, description="Pull secrets of the operator pod."
    )
    watch_namespaces: list[str] = Field(
        default_factory=list,
        description=(
            "Namespaces to watch; empty means every namespace (and cluster-wide RBAC). Each "
            "must exist before the install."
        ),
    )
    crds: Crds = Field(default_factory=Crds)
    service_account: ServiceAccount = Field(default_factory=ServiceAccount)
    rbac: Rbac = Field(default_factory=Rbac)
    network_policy: NetworkPolicy = Field(default_factory=NetworkPolicy)
    metrics: Metrics = Field(default_factory=Metrics)
    health: Health = Field(default_factory=Health)
    resources: K8sObject = Field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        },
        description="Resources of the operator container.",
    )
    pod_security_context: K8sObject = Field(
        default_factory=lambda: {
            "runAsNonRoot": True,
            "runAsUser": NONROOT_UID,
            "runAsGroup": NONROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        description="Pod securityContext of the operator.",
    )
    security_context: K8sObject = Field(
        default_factory=lambda: {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        description="Container securityContext of the operator.",
    )
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="Pod annotations.")
    pod_labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector.")
    tolerations: list[K8sObject] = Field(default_factory=list, description="tolerations.")
    affinity: K8sObject = Field(default_factory=dict, description="affinity.")
    priority_class_name: str = Field("", description="priorityClassName of the operator pod.")
    settings: OperatorSettings = Field(  # type: ignore[valid-type]
        default_factory=OperatorSettings,
        description="The operator's tunables, rendered as LORAPLANE_* environment variables.",
    )
    global_: K8sObject = Field(
        default_factory=dict,
        alias="global",
        description="Helm's global values (passed by a parent chart; unused).",
    )

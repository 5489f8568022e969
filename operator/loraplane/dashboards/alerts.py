"""The Prometheus alert rules, as data: what goes under a PrometheusRule's `spec.groups`.

Severity: `warning` for what one adapter suffers (often its own files or the capacity its owner
asked for); `critical` for the operator failing to converge, which leaves every adapter of the
base model without its pods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

# The runbooks are published with the sources: each alert links to its section of this file.
RUNBOOK_URL = "https://github.com/loraplane/loraplane/blob/main/docs/runbooks.md"

ADAPTER = "namespace, base_model, adapter"
# An adapter displaced more often than this within 15 minutes is cycling: evicted, placed (or
# loaded into memory) again, evicted again. One or two evictions are ordinary placement (a
# higher-priority adapter arrived) or LRU churn; four in 15 minutes, sustained for another 15,
# means the adapters in use do not fit in maxAdaptersPerReplica (tier server) or in maxLoras /
# maxCpuLoras (tiers gpu / cpu), and every return costs a load the requests wait for.
THRASHING_EVICTIONS_PER_15M = 3

# Engine evictions (GPU or CPU tier) per finished request above which the base model's engines
# thrash: more than one request in four then waits for an adapter to be moved or read from
# disk. Only over at least MIN_REQUESTS_PER_15M requests, so a quiet base model whose few
# requests each name a different adapter is not paged.
THRASHING_EVICTIONS_PER_REQUEST = 0.25
MIN_REQUESTS_PER_15M = 20

Severity = Literal["warning", "critical"]


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: Severity
    summary: str
    description: str

    @property
    def anchor(self) -> str:
        """The runbook section's anchor: GitHub's slug of a heading that is the alert's name."""
        return self.name.lower()

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{RUNBOOK_URL}#{self.anchor}",
            },
        }


ADAPTER_ALERTS = (
    Alert(
        "LoRAAdapterNotReady",
        f"max by ({ADAPTER}) (loraplane_adapter_ready) == 0",
        "10m",
        "warning",
        "LoRAAdapter {{ $labels.namespace }}/{{ $labels.adapter }} is not Ready.",
        "LoRAAdapter {{ $labels.adapter }} in namespace {{ $labels.namespace }} (base model "
        "{{ $labels.base_model }}) has not been Ready for 10 minutes: it is Pending, Loading, "
        "Degraded or Failed. `kubectl describe lora {{ $labels.adapter }} -n "
        "{{ $labels.namespace }}` shows why.",
    ),
    Alert(
        "LoRAAdapterLoadFailures",
        # Failed loads are retried at least every resync (60 s by default), so a cause that
        # persists keeps the 5-minute increase above zero; one transient error does not last
        # the 10 minutes. A rejected version is not retried: LoRAAdapterNotReady reports it.
        f"sum by ({ADAPTER}, result) "
        '(increase(loraplane_adapter_loads_total{result=~"error|rejected"}[5m])) > 0',
        "10m",
        "warning",
        "Loads of LoRAAdapter {{ $labels.namespace }}/{{ $labels.adapter }} keep failing "
        "({{ $labels.result }}).",
        "{{ $value | humanize }} loads of LoRAAdapter {{ $labels.adapter }} in namespace "
        "{{ $labels.namespace }} onto pods of {{ $labels.base_model }} ended in "
        "{{ $labels.result }} in the last 5 minutes, and loads have kept failing for 10 minutes.",
    ),
    Alert(
        "LoRAAdapterThrashing",
        f"sum by ({ADAPTER}, tier) (increase(loraplane_adapter_evictions_total[15m])) "
        f"> {THRASHING_EVICTIONS_PER_15M}",
        "15m",
        "warning",
        "LoRAAdapter {{ $labels.namespace }}/{{ $labels.adapter }} is evicted over and over "
        "(tier {{ $labels.tier }}).",
        "LoRAAdapter {{ $labels.adapter }} in namespace {{ $labels.namespace }} was evicted "
        "{{ $value | humanize }} times from tier {{ $labels.tier }} of {{ $labels.base_model }} "
        f"in the last 15 minutes (more than {THRASHING_EVICTIONS_PER_15M}, for 15 minutes): the "
        "adapters in use do not fit the base model's capacity.",
    ),
    Alert(
        "LoRAEngineThrashing",
        "sum by (namespace, base_model, tier) "
        '(increase(loraplane_adapter_evictions_total{reason="lru"}[15m]))\n'
        "/ ignoring (tier) group_left "
        "sum by (namespace, base_model) (increase(vllm:request_success_total[15m]))\n"
        f"> {THRASHING_EVICTIONS_PER_REQUEST}\n"
        "and ignoring (tier) "
        "sum by (namespace, base_model) (increase(vllm:request_success_total[15m]))\n"
        f"> {MIN_REQUESTS_PER_15M}",
        "15m",
        "warning",
        "The engines of {{ $labels.namespace }}/{{ $labels.base_model }} thrash their "
        "{{ $labels.tier }} tier.",
        "vLLM on the pods of {{ $labels.base_model }} in namespace {{ $labels.namespace }} evicted "
        '{{ $value | printf "%.2f" }} adapters from its {{ $labels.tier }} tier per finished '
        "request "
        "over the last 15 minutes (above "
        f"{THRASHING_EVICTIONS_PER_REQUEST}, for 15 minutes): the adapters in use do not fit "
        "maxLoras (gpu) or maxCpuLoras (cpu), and requests wait for loads.",
    ),
    Alert(
        "LoRAAdapterUnderReplicated",
        f"max by ({ADAPTER}) (loraplane_adapter_registered_replicas) "
        f"< max by ({ADAPTER}) (loraplane_adapter_desired_replicas)",
        "15m",
        "warning",
        "LoRAAdapter {{ $labels.namespace }}/{{ $labels.adapter }} is registered on fewer pods "
        "than desired.",
        "LoRAAdapter {{ $labels.adapter }} in namespace {{ $labels.namespace }} has been "
        "registered on only {{ $value }} of the pods of {{ $labels.base_model }} it is placed on "
        "for 15 minutes.",
    ),
)


def _source(source: str, errors: str) -> str:
    """`errors` where above zero, labelled with where they come from."""
    return f'label_replace({errors} > 0, "source", "{source}", "", "")'


OPERATOR_ALERTS = (
    Alert(
        "LoraplaneSyncErrors",
        # Three sources, told apart by `source`: pod syncs (per base model) and the API calls
        # under them (per endpoint and error class). Failed syncs are retried within 30 s, so a
        # cause that persists keeps every 5-minute window non-zero.
        "\nor ".join(
            [
                _source(
                    "pod_sync",
                    "sum by (namespace, base_model) "
                    '(increase(loraplane_pod_syncs_total{result="error"}[5m]))',
                ),
                _source(
                    "vllm_api",
                    "sum by (endpoint, class) (increase(loraplane_vllm_api_errors_total[5m]))",
                ),
                _source(
                    "agent_api",
                    "sum by (endpoint, class) (increase(loraplane_agent_api_errors_total[5m]))",
                ),
            ]
        ),
        "15m",
        "critical",
        "The loraplane operator keeps failing to sync pods ({{ $labels.source }}).",
        '{{ if eq $labels.source "pod_sync" }}Pod syncs of base model {{ $labels.base_model }} '
        "in namespace {{ $labels.namespace }} have failed for 15 minutes "
        "({{ $value | humanize }} errors in the last 5 minutes): its pods do not converge to "
        "their adapters.{{ else }}Calls to {{ $labels.endpoint }} ({{ $labels.source }}) "
        "have failed with {{ $labels.class }} for 15 minutes "
        "({{ $value | humanize }} errors in the last 5 minutes).{{ end }}",
    ),
)

GROUPS = (("loraplane.adapters", ADAPTER_ALERTS), ("loraplane.operator", OPERATOR_ALERTS))


def alerts() -> list[Alert]:
    return [a for _, group in GROUPS for a in group]


def groups() -> list[dict[str, Any]]:
    """The rule groups, as under a PrometheusRule's `spec.groups` or a rules file's `groups`."""
    return [{"name": name, "rules": [a.rule() for a in group]} for name, group in GROUPS]


HEADER = (
    "# Generated by `python -m loraplane.dashboards --out charts/loraplane/files` from\n"
    "# operator/loraplane/dashboards/alerts.py. Do not edit: change the rules and regenerate.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the longer exprs) as literal blocks, and no folded lines: a changed
    annotation is a one-line diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_yaml() -> str:
    """alerts.yaml: a Prometheus rules file; the chart puts its `groups` in a PrometheusRule."""
    return HEADER + yaml.dump({"groups": groups()}, Dumper=_Dumper, sort_keys=False, width=1 << 16)

"""The test Prometheus's configuration, derived from live ServiceMonitor, PodMonitor and
PrometheusRule objects, the way the Prometheus Operator derives it in users' clusters.

This covers the fields the loraplane chart uses (selector.matchLabels, namespaceSelector, one
port per endpoint, path, interval, honorLabels, relabelings with sourceLabels/targetLabel), with
the Operator's job names and target labels (namespace, pod, service, container, endpoint); any
other field is refused, so a monitor the translation would misread fails loudly instead.
"""

from __future__ import annotations

import re
from typing import Any

MONITOR_FIELDS = {"selector", "namespaceSelector", "endpoints", "podMetricsEndpoints"}
ENDPOINT_FIELDS = {"port", "path", "interval", "honorLabels", "relabelings"}


def _label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _keep_labels(meta_prefix: str, match: dict[str, str]) -> list[dict[str, Any]]:
    """Keep targets whose object has every label of `match` (as the Operator writes it)."""
    return [
        {
            "action": "keep",
            "source_labels": [
                f"{meta_prefix}label_{_label(k)}",
                f"{meta_prefix}labelpresent_{_label(k)}",
            ],
            "regex": f"({re.escape(v)});true",
        }
        for k, v in sorted(match.items())
    ]


def _sd(role: str, ns_selector: dict[str, Any], monitor_ns: str, api: dict[str, Any]) -> dict:
    sd: dict[str, Any] = {"role": role, **api}
    if not ns_selector.get("any"):
        sd["namespaces"] = {"names": ns_selector.get("matchNames") or [monitor_ns]}
    return sd


def _relabelings(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in items:
        unknown = set(r) - {"sourceLabels", "targetLabel", "regex", "replacement", "action"}
        if unknown:
            raise ValueError(f"relabeling fields not translated: {unknown}")
        rule: dict[str, Any] = {
            "source_labels": r["sourceLabels"],
            "target_label": r["targetLabel"],
        }
        for key in ("regex", "replacement", "action"):
            if key in r:
                rule[key] = r[key].lower() if key == "action" else r[key]
        out.append(rule)
    return out


def _check(spec: dict[str, Any], endpoints: list[dict[str, Any]], where: str) -> None:
    if set(spec) - MONITOR_FIELDS:
        raise ValueError(f"{where}: fields not translated: {set(spec) - MONITOR_FIELDS}")
    for ep in endpoints:
        if set(ep) - ENDPOINT_FIELDS:
            raise ValueError(
                f"{where}: endpoint fields not translated: {set(ep) - ENDPOINT_FIELDS}"
            )


def service_monitor_jobs(sm: dict[str, Any], api: dict[str, Any]) -> list[dict[str, Any]]:
    meta, spec = sm["metadata"], sm["spec"]
    _check(spec, spec["endpoints"], f"ServiceMonitor {meta['name']}")
    jobs = []
    for i, ep in enumerate(spec["endpoints"]):
        relabel = _keep_labels(
            "__meta_kubernetes_service_", spec["selector"].get("matchLabels") or {}
        )
        relabel += [
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpointslice_port_name"],
             "regex": ep["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
            {"target_label": "endpoint", "replacement": ep["port"]},
            *_relabelings(ep.get("relabelings") or []),
        ]  # fmt: skip
        jobs.append(
            {
                "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/{i}",
                "honor_labels": bool(ep.get("honorLabels", False)),
                "metrics_path": ep.get("path", "/metrics"),
                "scrape_interval": ep.get("interval", "30s"),
                "kubernetes_sd_configs": [
                    _sd(
                        "endpointslice", spec.get("namespaceSelector") or {}, meta["namespace"], api
                    )
                ],
                "relabel_configs": relabel,
            }
        )
    return jobs


def pod_monitor_jobs(pm: dict[str, Any], api: dict[str, Any]) -> list[dict[str, Any]]:
    meta, spec = pm["metadata"], pm["spec"]
    _check(spec, spec["podMetricsEndpoints"], f"PodMonitor {meta['name']}")
    jobs = []
    for i, ep in enumerate(spec["podMetricsEndpoints"]):
        relabel = _keep_labels("__meta_kubernetes_pod_", spec["selector"].get("matchLabels") or {})
        relabel += [
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": ep["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"],
             "target_label": "container"},
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
            {"target_label": "endpoint", "replacement": ep["port"]},
            *_relabelings(ep.get("relabelings") or []),
        ]  # fmt: skip
        jobs.append(
            {
                "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{i}",
                "honor_labels": bool(ep.get("honorLabels", False)),
                "metrics_path": ep.get("path", "/metrics"),
                "scrape_interval": ep.get("interval", "30s"),
                "kubernetes_sd_configs": [
                    _sd("pod", spec.get("namespaceSelector") or {}, meta["namespace"], api)
                ],
                "relabel_configs": relabel,
            }
        )
    return jobs


def prometheus_config(
    service_monitors: list[dict[str, Any]],
    pod_monitors: list[dict[str, Any]],
    api: dict[str, Any],
    rule_files: list[str],
    scrape_interval: str,
) -> dict[str, Any]:
    """`api`: how discovery reaches the API server (api_server, tls_config, authorization)."""
    jobs = [j for sm in service_monitors for j in service_monitor_jobs(sm, api)]
    jobs += [j for pm in pod_monitors for j in pod_monitor_jobs(pm, api)]
    for job in jobs:
        job["scrape_interval"] = scrape_interval  # the test's clock, not the chart's 30 s
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": rule_files,
        "scrape_configs": jobs,
    }

"""Container environment as a kubelet builds it: env, envFrom, valueFrom, $(VAR) expansion."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from .kube import ApiError, Kube, ns_path
from .sandbox import GATEWAY

Obj = dict[str, Any]

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


class ConfigError(Exception):
    """The container cannot be configured yet (CreateContainerConfigError)."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion: unknown references stay as written, $$ escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


class SourceCache:
    """Reads ConfigMaps and Secrets for one resolution pass, each once."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(self, kind: str, name: str) -> dict[str, str] | None:
        """Returns the object's data (secrets decoded) or None when it does not exist."""
        key = (kind, name)
        if key not in self._cache:
            try:
                obj = self.kube.get(ns_path(self.namespace, kind, name))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                self._cache[key] = None
            else:
                if kind == "secrets":
                    raw = obj.get("data") or {}
                    self._cache[key] = {
                        k: base64.b64decode(v).decode("utf-8", "replace") for k, v in raw.items()
                    }
                else:
                    self._cache[key] = {**(obj.get("binaryData") or {}), **(obj.get("data") or {})}
        return self._cache[key]


def field_ref(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    values: dict[str, Callable[[], str]] = {
        "metadata.name": lambda: meta["name"],
        "metadata.namespace": lambda: meta["namespace"],
        "metadata.uid": lambda: meta["uid"],
        "spec.nodeName": lambda: spec.get("nodeName", ""),
        "spec.serviceAccountName": lambda: spec.get("serviceAccountName", "default"),
        "status.podIP": lambda: pod_ip,
        "status.podIPs": lambda: pod_ip,
        "status.hostIP": lambda: host_ip,
        "status.hostIPs": lambda: host_ip,
    }
    if path not in values:
        raise ConfigError(f"unsupported fieldRef {path}")
    return values[path]()


def resolve_env(
    kube: Kube, pod: Obj, container: Obj, pod_ip: str, host_ip: str, api_host: str = GATEWAY
) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    sources = SourceCache(kube, ns)
    env: dict[str, str] = {
        "HOSTNAME": pod["metadata"]["name"],
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": "6443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "6443",
        "KUBERNETES_PORT": f"tcp://{api_host}:6443",
        "KUBERNETES_PORT_443_TCP": f"tcp://{api_host}:6443",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "6443",
        "KUBERNETES_PORT_443_TCP_ADDR": api_host,
    }
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            if key in src:
                ref = src[key]
                data = sources.data(kind, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'{kind[:-1]} "{ref["name"]}" not found')
                env.update({prefix + k: v for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        vf = item["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
            kind, ref = (
                ("secrets", vf["secretKeyRef"])
                if "secretKeyRef" in vf
                else ("configmaps", vf["configMapKeyRef"])
            )
            data = sources.data(kind, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                what = f'{kind[:-1]} "{ref["name"]}"'
                missing = "" if data is None else f"couldn't find key {ref['key']} in "
                raise ConfigError(f"{missing}{what}" + (" not found" if data is None else ""))
            env[name] = data[ref["key"]]
        elif "resourceFieldRef" in vf:
            env[name] = resource_field(container, vf["resourceFieldRef"])
    return env


def resource_field(container: Obj, ref: Obj) -> str:
    from .util import quantity  # local: only this rarely used path needs it

    section, _, res = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(section) or {}).get(res) or (resources.get("limits") or {}).get(res)
    fallback = {"cpu": "8", "memory": "24Gi", "ephemeral-storage": "100Gi"}
    divisor = quantity(ref.get("divisor", "1"))
    amount = quantity(value or fallback.get(res, "0")) / divisor
    return str(int(-(-amount // 1)))  # ceiling, as the kubelet rounds up

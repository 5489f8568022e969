"""A small dict-in, dict-out client for the few API calls a kubelet makes.

The official client's kubeconfig loader provides the credentials; requests go through urllib3
directly so that bodies stay plain dicts in the API's own field names and the patch content type
is always the one we mean (the generated client defaults to JSON patch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ApiError(Exception):
    """A failed API call; status 0 when the server could not be reached."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class Kube:
    def __init__(self, kubeconfig: str) -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg
        )
        self.base = cfg.host.rstrip("/")
        self.ca_file: str | None = cfg.ssl_ca_cert
        self.headers = {"Accept": "application/json", "User-Agent": "loraplane-processnode"}
        token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if token:
            self.headers["Authorization"] = token if " " in token else f"Bearer {token}"
        self.http = urllib3.PoolManager(
            num_pools=4,
            maxsize=16,
            cert_reqs="CERT_REQUIRED" if cfg.verify_ssl else "CERT_NONE",
            ca_certs=cfg.ssl_ca_cert,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Obj:
        url = self.base + path + (("?" + urlencode(params)) if params else "")
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        try:
            resp = self.http.request(
                method, url, body=data, headers=headers, timeout=timeout, retries=False
            )
        except urllib3.exceptions.HTTPError as exc:
            # Transport errors (API server restarting) look like any other failed call.
            raise ApiError(0, f"{method} {path}: {exc}") from exc
        text = resp.data.decode("utf-8", "replace")
        if resp.status >= 400:
            raise ApiError(resp.status, text)
        return json.loads(text) if text else {}

    def get(self, path: str, **params: Any) -> Obj:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Obj) -> Obj:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def strategic_patch(self, path: str, body: Obj) -> Obj:
        return self.request(
            "PATCH", path, body, content_type="application/strategic-merge-patch+json"
        )

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body)

    def watch(self, path: str, timeout_seconds: int = 300, **params: Any) -> Iterator[Obj]:
        """Yields watch events until the server ends the stream."""
        query = {"watch": "1", "timeoutSeconds": str(timeout_seconds), **params}
        url = f"{self.base}{path}?{urlencode(query)}"
        resp = self.http.request(
            "GET",
            url,
            headers=self.headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30),
            retries=False,
        )
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, resp.data.decode("utf-8", "replace"))
            buf = b""
            for chunk in resp.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def pod_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace)}/pods"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


def ns_path(namespace: str, kind: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/{kind}/{quote(name)}"

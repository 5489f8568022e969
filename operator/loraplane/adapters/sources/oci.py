"""The oci source: an artifact in a registry (OCI distribution API), as `oras push` lays it out.

A tag is resolved to its manifest digest once; the manifest and then every layer are pulled by
digest and checked against it while they stream, so a registry (or anything between) cannot hand
over other bytes than the ones named. Each layer is one file named by its
``org.opencontainers.image.title`` annotation, or a tarball of a directory when oras marked it
for unpacking (``io.deis.oras.content.unpack``).

Authentication is the registry's: anonymous first; on a 401 challenge, Basic with the pull
secret's credentials, or a Bearer token from the challenge's realm (Docker token protocol).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraplane.adapters.sources.credentials import RegistryCredentials, registry_host
from loraplane.adapters.sources.protocol import (
    InvalidArchive,
    SizeBudget,
    SourceContext,
    SourceNotFound,
    SourceUnauthorized,
)
from loraplane.adapters.sources.transfer import (
    Client,
    HTTPStatusError,
    adapter_root,
    hoist,
    relative_file,
    stream_to_file,
    unpack_tar,
)
from loraplane.adapters.sources.versions import DigestMismatch
from loraplane.api.sources import OCISource

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
TITLE = "org.opencontainers.image.title"
UNPACK = "io.deis.oras.content.unpack"
MAX_MANIFEST_BYTES = 4 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class Descriptor(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    media_type: str = Field(alias="mediaType")
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int = Field(ge=0)
    annotations: dict[str, str] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    media_type: str | None = Field(default=None, alias="mediaType")
    layers: list[Descriptor] = Field(default_factory=list)
    manifests: list[Descriptor] = Field(default_factory=list)


def split_reference(reference: str) -> tuple[str, str, str]:
    """(registry, repository, tag or digest) of registry/repository:tag|@digest."""
    host = registry_host(reference)
    rest = reference[len(host) + 1 :]
    if "@" in rest:
        repository, _, ref = rest.partition("@")
    else:
        repository, _, ref = rest.rpartition(":")
    return host, repository, ref


class OCIFetcher:
    kind = "oci"

    def __init__(
        self, source: OCISource, credentials: RegistryCredentials | None, context: SourceContext
    ) -> None:
        self.description = source.reference
        self.registry, self.repository, self.ref = split_reference(source.reference)
        self._credentials = credentials
        self._client = Client(context, source.reference)
        self._authorization: str | None = None
        self._manifest: Manifest | None = None

    def _url(self, kind: str, ref: str) -> str:
        return f"https://{self.registry}/v2/{self.repository}/{kind}/{ref}"

    def _basic(self) -> str:
        if self._credentials is None:
            raise SourceUnauthorized(
                f"{self.description}: the registry asks for credentials and no pullSecretRef is set"
            )
        pair = f"{self._credentials.username}:{self._credentials.password.get_secret_value()}"
        return "Basic " + base64.b64encode(pair.encode()).decode()

    def _authorize(self, challenge: str) -> None:
        """Answer a 401's WWW-Authenticate: Basic, or a Bearer token from the realm."""
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic":
            self._authorization = self._basic()
            return
        if scheme.lower() != "bearer":
            raise SourceUnauthorized(f"{self.description}: unsupported challenge {scheme!r}")
        fields = dict(_CHALLENGE_PARAM.findall(params))
        realm = fields.pop("realm", None)
        if not realm:
            raise SourceUnauthorized(f"{self.description}: a Bearer challenge without realm")
        fields.setdefault("scope", f"repository:{self.repository}:pull")
        url = f"{realm}?{urllib.parse.urlencode(fields)}"
        secret = {"Authorization": self._basic()} if self._credentials is not None else {}
        try:
            with self._client.open(url, secret_headers=secret) as response:
                answer: dict[str, Any] = json.loads(response.read(1 << 20))
        except HTTPStatusError as exc:
            raise self._client.failure(exc, "the token service refused") from None
        except ValueError as exc:
            raise SourceUnauthorized(
                f"{self.description}: the token service answered no JSON"
            ) from exc
        token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise SourceUnauthorized(f"{self.description}: the token service gave no token")
        self._authorization = f"Bearer {token}"

    def _get(self, url: str, accept: tuple[str, ...] = ()) -> Any:
        headers = {"Accept": ", ".join(accept)} if accept else {}
        for attempt in range(2):
            secret = {"Authorization": self._authorization} if self._authorization else {}
            try:
                return self._client.open(url, headers=headers, secret_headers=secret)
            except HTTPStatusError as exc:
                challenge = exc.headers.get("WWW-Authenticate")
                if exc.status == 401 and challenge and attempt == 0:
                    self._authorize(challenge)
                    continue
                raise self._client.failure(exc, _registry_error(exc.body)) from None
        raise AssertionError("unreachable")

    def _pull_manifest(self, ref: str) -> tuple[str, Manifest]:
        """(digest, manifest) of a tag or digest; an index is followed to its first manifest."""
        with self._get(self._url("manifests", ref), MANIFEST_TYPES + INDEX_TYPES) as response:
            raw = response.read(MAX_MANIFEST_BYTES + 1)
            header = response.headers.get("Docker-Content-Digest")
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InvalidArchive(f"{self.description}: the manifest is larger than 4 MiB")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.startswith("sha256:") and digest != ref:
            raise DigestMismatch(f"{self.description}: the registry sent manifest {digest}")
        if header and header != digest:
            raise DigestMismatch(
                f"{self.description}: manifest bytes hash to {digest}, the registry says {header}"
            )
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            raise InvalidArchive(f"{self.description}: not an OCI manifest ({exc})") from None
        if manifest.manifests:
            return self._pull_manifest(manifest.manifests[0].digest)
        return digest, manifest

    def resolve(self) -> str:
        digest, self._manifest = self._pull_manifest(self.ref)
        return f"{self.registry}/{self.repository}@{digest}"

    def download(self, staged: Path, budget: SizeBudget) -> str | None:
        manifest = self._manifest
        if manifest is None:
            _, manifest = self._pull_manifest(self.ref)
        layers = [d for d in manifest.layers if TITLE in d.annotations]
        if not layers:
            raise SourceNotFound(
                f"{self.description}: the artifact has no layer named by {TITLE} (push the "
                "adapter's files with oras)"
            )
        budget.announce(sum(d.size for d in layers))
        for layer in layers:
            title = relative_file(layer.annotations[TITLE], self.description)
            unpack = layer.annotations.get(UNPACK, "").lower() == "true"
            target = staged / (".layer" if unpack else title)
            got = stream_to_file(
                self._get(self._url("blobs", layer.digest)), target, budget, self.description
            )
            if f"sha256:{got}" != layer.digest:
                raise DigestMismatch(
                    f"{self.description}: layer {title} has digest sha256:{got}, the manifest "
                    f"names {layer.digest}"
                )
            if unpack:
                unpack_tar(
                    target, staged, SizeBudget(budget.limit, self.description), self.description
                )
                target.unlink()
        hoist(staged, adapter_root(staged))
        return None


def _registry_error(body: bytes) -> str:
    """The first error of the distribution API's error body, e.g. MANIFEST_UNKNOWN: ..."""
    try:
        first = json.loads(body)["errors"][0]
        return f"{first.get('code')}: {first.get('message')}"
    except (ValueError, KeyError, IndexError, TypeError):
        return ""

"""The huggingface source: a model repository on the Hugging Face Hub, or a hub-compatible server.

Spoken over the hub's HTTP API directly (the one huggingface_hub uses):
``/api/models/<repo>/revision/<rev>`` resolves a branch or tag to its commit,
``/api/models/<repo>/tree/<commit>`` lists the files with their sizes and hashes, and
``/<repo>/resolve/<commit>/<file>`` serves each. The revision is resolved once per fetch and
everything after is read at that commit, so a branch that moves midway cannot mix two versions.
Only the files vLLM reads are downloaded (no snapshot of the repository), each checked against
the hash the hub lists for it (sha256 for LFS files, the git blob id for the rest).

`inspect_huggingface` is the operator's pre-flight: the config and the safetensors header, two
small reads, before any pod downloads the weights.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import struct
import urllib.parse
from http.client import HTTPResponse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from loraplane.adapters.inspect import (
    CONFIG_FILE,
    MAX_HEADER_BYTES,
    SAFETENSORS_FILE,
    AdapterConfigMissing,
    CorruptSafetensors,
    Inspection,
    NoTensors,
    TensorInfo,
    parse_config,
    summarize,
)
from loraplane.adapters.sources.credentials import HuggingFaceCredentials
from loraplane.adapters.sources.protocol import (
    SizeBudget,
    SourceContext,
    SourceNotFound,
    SourceUnauthorized,
    SourceUnreachable,
)
from loraplane.adapters.sources.transfer import (
    Client,
    HTTPStatusError,
    relative_file,
    stream_to_file,
)
from loraplane.adapters.sources.versions import DigestMismatch
from loraplane.api.common import HuggingFaceSource

DEFAULT_ENDPOINT = "https://huggingface.co"
# What vLLM reads from an adapter directory: its config, weights and, for adapters that add
# tokens, tokenizer files. Anything else (README, training logs, checkpoints) stays on the hub.
HF_ALLOW_PATTERNS = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
]
# The hub names what went wrong in this header; a private repository answers 401 RepoNotFound.
NOT_FOUND_CODES = {"RepoNotFound", "RevisionNotFound", "EntryNotFound"}


class LFSInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    oid: str  # the sha256 of the file's content
    size: int


class TreeEntry(BaseModel):
    """One entry of ``/api/models/<repo>/tree/<commit>?recursive=true``."""

    model_config = ConfigDict(extra="ignore")

    type: str
    path: str
    oid: str | None = None  # the git blob id
    size: int = 0
    lfs: LFSInfo | None = None

    @property
    def content_size(self) -> int:
        return self.lfs.size if self.lfs is not None else self.size


class RepoRevision(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sha: str = Field(pattern=r"^[0-9a-f]{40}$")


_NEXT_LINK = re.compile(r'<([^>]+)>;\s*rel="next"')


def git_blob_id(path: Path) -> str:
    """The sha1 git names a file's content by (``git hash-object``)."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class HubClient:
    """The hub's HTTP API for one repository."""

    def __init__(
        self,
        repo: str,
        credentials: HuggingFaceCredentials | None,
        context: SourceContext,
    ) -> None:
        self.repo = repo
        self.endpoint = (context.huggingface_endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._credentials = credentials
        self._client = Client(context, f"huggingface {repo}")

    def _secret(self) -> dict[str, str]:
        if self._credentials is None:
            return {}
        return {"Authorization": f"Bearer {self._credentials.token.get_secret_value()}"}

    def get(self, path: str, what: str, headers: dict[str, str] | None = None) -> HTTPResponse:
        try:
            return self._client.open(
                path if path.startswith("https://") else self.endpoint + path,
                headers=headers,
                secret_headers=self._secret(),
            )
        except HTTPStatusError as exc:
            code = exc.headers.get("X-Error-Code") or ""
            said = f"huggingface {self.repo}: {what}: HTTP {exc.status}{' ' + code if code else ''}"
            if code in NOT_FOUND_CODES or exc.status == 404:
                hint = "" if self._credentials else " (a private repository needs tokenSecretRef)"
                raise SourceNotFound(said + hint) from None
            if exc.status in (401, 403) or code == "GatedRepo":
                raise SourceUnauthorized(said + " (check the token in tokenSecretRef)") from None
            raise SourceUnreachable(said) from None

    def commit(self, revision: str) -> str:
        """The commit a branch, tag or commit names now."""
        path = f"/api/models/{self.repo}/revision/{urllib.parse.quote(revision, safe='')}"
        with self.get(path, f"revision {revision}") as response:
            raw = response.read(16 << 20)
        try:
            return RepoRevision.model_validate_json(raw).sha
        except ValidationError as exc:
            raise SourceUnreachable(
                f"huggingface {self.repo}: unexpected answer for revision {revision}: {exc}"
            ) from None

    def files(self, commit: str) -> list[TreeEntry]:
        """Every file of the repository at `commit`, with its size and hashes (all pages)."""
        entries: list[TreeEntry] = []
        url: str | None = f"/api/models/{self.repo}/tree/{commit}?recursive=true"
        while url is not None:
            with self.get(url, f"files of {commit}") as response:
                raw = response.read(16 << 20)
                link = response.headers.get("Link") or ""
            try:
                entries += _TREE.validate_json(raw)
            except ValidationError as exc:
                raise SourceUnreachable(
                    f"huggingface {self.repo}: unexpected file list at {commit}: {exc}"
                ) from None
            found = _NEXT_LINK.search(link)
            url = found.group(1) if found else None
        return [e for e in entries if e.type == "file"]

    def file_path(self, commit: str, name: str) -> str:
        return f"/{self.repo}/resolve/{commit}/{urllib.parse.quote(name)}"


_TREE = TypeAdapter(list[TreeEntry])


def adapter_files(entries: list[TreeEntry]) -> list[TreeEntry]:
    """The files vLLM reads, at the top of the repository."""
    return sorted(
        (e for e in entries if any(fnmatch.fnmatch(e.path, p) for p in HF_ALLOW_PATTERNS)),
        key=lambda e: e.path,
    )


class HuggingFaceFetcher:
    kind = "huggingface"

    def __init__(
        self,
        source: HuggingFaceSource,
        credentials: HuggingFaceCredentials | None,
        context: SourceContext,
    ) -> None:
        self.revision = source.revision
        self.description = f"huggingface {source.repo}@{source.revision}"
        self._hub = HubClient(source.repo, credentials, context)
        self._commit: str | None = None

    def resolve(self) -> str:
        self._commit = self._hub.commit(self.revision)
        return f"{self._hub.endpoint}/{self._hub.repo}@{self._commit}"

    def download(self, staged: Path, budget: SizeBudget) -> str | None:
        commit = self._commit or self._hub.commit(self.revision)
        files = adapter_files(self._hub.files(commit))
        if CONFIG_FILE not in {f.path for f in files}:
            raise AdapterConfigMissing(
                f"{self.description} (commit {commit}) has no {CONFIG_FILE}: not a PEFT adapter"
            )
        budget.announce(sum(f.content_size for f in files))
        for entry in files:
            rel = relative_file(entry.path, self.description)
            response = self._hub.get(self._hub.file_path(commit, entry.path), str(rel))
            got = stream_to_file(response, staged / rel, budget, self.description)
            if entry.lfs is not None and got != entry.lfs.oid:
                raise DigestMismatch(
                    f"{self.description}: {rel} has sha256 {got}, the hub lists {entry.lfs.oid}"
                )
            if entry.lfs is None and entry.oid and git_blob_id(staged / rel) != entry.oid:
                raise DigestMismatch(
                    f"{self.description}: {rel} does not match its git blob {entry.oid}"
                )
        return None


def _read_range(hub: HubClient, commit: str, name: str, start: int, end: int) -> bytes:
    """Bytes start..end (inclusive) of a file; a server that ignores Range still works."""
    headers = {"Range": f"bytes={start}-{end}"}
    with hub.get(hub.file_path(commit, name), name, headers) as response:
        if response.status == 206:
            return bytes(response.read(end - start + 1))
        return bytes(response.read(end + 1)[start:])


def inspect_huggingface(
    source: HuggingFaceSource,
    credentials: HuggingFaceCredentials | None,
    context: SourceContext,
) -> Inspection:
    """Summarize an adapter on the hub from its adapter_config.json and the safetensors header,
    for the operator's pre-flight before any pod downloads it.

    The digest stays empty (it needs every byte); ``path`` reads ``hf://<repo>@<commit>``.
    """
    hub = HubClient(source.repo, credentials, context)
    commit = hub.commit(source.revision)
    where = f"{source.repo}@{commit}"
    files = {f.path: f for f in adapter_files(hub.files(commit))}
    if CONFIG_FILE not in files:
        raise AdapterConfigMissing(f"{where} has no {CONFIG_FILE}: not a PEFT adapter")
    with hub.get(hub.file_path(commit, CONFIG_FILE), CONFIG_FILE) as response:
        config = parse_config(response.read(1 << 20))
    tensors: dict[str, TensorInfo] = {}
    weights_file: str | None = None
    if SAFETENSORS_FILE in files:
        weights_file = SAFETENSORS_FILE
        size = files[SAFETENSORS_FILE].content_size
        tensors = _remote_header(hub, commit, size, where)
        if not tensors:
            raise NoTensors(f"{SAFETENSORS_FILE} of {where} holds no tensors")
    else:
        weights_file = next((f for f in ("adapter_model.bin",) if f in files), None)
    if weights_file is None:
        raise NoTensors(f"{where} has {CONFIG_FILE} but no adapter weights")
    return summarize(
        config,
        tensors,
        path=f"hf://{where}",
        weights_file=weights_file,
        size_bytes=sum(f.content_size for f in files.values()),
        files=sorted(files),
        weights_inspected=bool(tensors),
    )


def _remote_header(hub: HubClient, commit: str, size: int, where: str) -> dict[str, TensorInfo]:
    prefix = _read_range(hub, commit, SAFETENSORS_FILE, 0, 7)
    if len(prefix) < 8:
        raise CorruptSafetensors(f"{SAFETENSORS_FILE} of {where} is too short for a header")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES or (size and length > size - 8):
        raise CorruptSafetensors(f"{SAFETENSORS_FILE} of {where} declares a {length}-byte header")
    raw = _read_range(hub, commit, SAFETENSORS_FILE, 8, 8 + length - 1)
    try:
        header = json.loads(raw)
        return {
            name: TensorInfo(dtype=str(entry["dtype"]), shape=tuple(int(d) for d in entry["shape"]))
            for name, entry in header.items()
            if name != "__metadata__"
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptSafetensors(f"{SAFETENSORS_FILE} of {where} has an unreadable header") from exc

"""What every source kind implements, the outcomes they share, and the one fetch that drives them.

A source kind is a `Fetcher`: `resolve` names what the source holds now by something immutable
(a commit, a manifest digest, the pinned sha256, a listing's ETags), so a repeated fetch of an
unchanged source costs one small request and no download; `download` writes the files into a
staging directory under a `SizeBudget`. `fetch_into_store` does the rest the same way for all of
them: the version directory appears only complete and verified (see `versions`).

Failures are `AdapterInspectionError`s when the adapter itself is refused (not found, too large,
digest mismatch: the user must change something; the agent answers 422) and `SourceUnavailable`
when the source cannot be read now (unreachable, unauthorized: retried with backoff, 409).
Messages never carry credentials: fetchers build them from the source's spec only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loraplane.adapters.inspect import AdapterInspectionError, Inspection
from loraplane.adapters.sources.versions import (
    FetchResult,
    existing_version,
    install_directory,
    staging_dir,
    validate_name,
    version_dir,
)
from loraplane.vllm.errors import Reason

__all__ = [
    "AdapterTooLarge",
    "Fetcher",
    "InvalidArchive",
    "SizeBudget",
    "SourceContext",
    "SourceNotFound",
    "SourceUnauthorized",
    "SourceUnavailable",
    "SourceUnreachable",
    "Verify",
    "fetch_into_store",
    "stale_markers",
]

log = logging.getLogger(__name__)

Verify = Callable[[Inspection], None]
# Which version each resolved source identity was stored as: <store>/.sources/<name>/<key>.
# Hidden, so neither a version nor an adapter; the agent's prune drops those of removed versions.
MARKERS = ".sources"


class SourceNotFound(AdapterInspectionError):
    """The repository, object, artifact or file does not exist."""

    reason = Reason.ADAPTER_NOT_FOUND


class AdapterTooLarge(AdapterInspectionError):
    """The adapter's files exceed the store's size limit (known before, or found during, a
    download)."""

    reason = Reason.ADAPTER_TOO_LARGE


class InvalidArchive(AdapterInspectionError):
    """A tarball, OCI layer or listing that cannot be unpacked into an adapter directory."""

    reason = Reason.INVALID_ARCHIVE


class SourceUnavailable(Exception):
    """The source cannot be read now; a retry may succeed."""

    reason: Reason = Reason.SOURCE_UNREACHABLE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SourceUnreachable(SourceUnavailable):
    """No answer, a timeout, or a server error."""


class SourceUnauthorized(SourceUnavailable):
    """The source refused the credentials (or their absence)."""

    reason = Reason.SOURCE_UNAUTHORIZED


@dataclass(frozen=True)
class SourceContext:
    """How the agent reaches sources: the same for every fetch of one agent."""

    timeout_seconds: float = 30.0
    # Certificates trusted besides the system's (a private registry's or object store's CA).
    ca_file: Path | None = None
    huggingface_endpoint: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        return context


class SizeBudget:
    """Bytes an adapter may take in the store: checked against sizes a source announces before
    anything is downloaded, and against every chunk written while it is."""

    def __init__(self, limit: int | None, what: str) -> None:
        self.limit = limit
        self.used = 0
        self._what = what

    def announce(self, size: int) -> None:
        """The source says the adapter has `size` bytes: refuse it before downloading."""
        if self.limit is not None and size > self.limit:
            raise AdapterTooLarge(
                f"{self._what} holds {size} bytes, more than the store's size limit of "
                f"{self.limit} bytes"
            )

    def take(self, size: int) -> None:
        self.used += size
        if self.limit is not None and self.used > self.limit:
            raise AdapterTooLarge(
                f"{self._what} exceeded the store's size limit of {self.limit} bytes while "
                "downloading"
            )


class Fetcher(Protocol):
    """One source kind, bound to one source spec and its credentials."""

    kind: str
    # What messages and logs call the source (never with credentials), e.g. s3://bucket/prefix.
    description: str

    def resolve(self) -> str:
        """An immutable name of what the source holds now; the same name means the same files."""
        ...

    def download(self, staged: Path, budget: SizeBudget) -> str | None:
        """Write the adapter's files into `staged`; returns the digest the files must have when
        the source knows it (else None: inspection computes it)."""
        ...


def _marker(store: Path, name: str, kind: str, identity: str) -> Path:
    key = hashlib.sha256(f"{kind}\0{identity}".encode()).hexdigest()[:40]
    return store / MARKERS / validate_name(name) / key


def stale_markers(store: Path | str) -> list[Path]:
    """Markers that name a version no longer in the store."""
    stale: list[Path] = []
    for marker in Path(store).glob(f"{MARKERS}/*/*"):
        try:
            digest = str(json.loads(marker.read_text())["digest"])
            if version_dir(store, marker.parent.name, digest).is_dir():
                continue
        except (OSError, ValueError, KeyError):
            pass
        stale.append(marker)
    return stale


def fetch_into_store(
    fetcher: Fetcher,
    store: Path | str,
    name: str,
    *,
    size_limit: int | None = None,
    verify: Verify | None = None,
) -> FetchResult:
    """The source's current files as a verified version of `name` in `store`; downloads only
    when the source holds something not stored yet."""
    store = Path(store)
    identity = fetcher.resolve()
    marker = _marker(store, name, fetcher.kind, identity)
    with contextlib.suppress(OSError, ValueError, KeyError):
        digest = str(json.loads(marker.read_text())["digest"])
        existing = existing_version(version_dir(store, name, digest))
        if existing is not None:
            if verify is not None:
                verify(existing)
            return FetchResult(path=existing.path, summary=existing, created=False)
    staged = staging_dir(store, name)
    try:
        expected = fetcher.download(staged, SizeBudget(size_limit, fetcher.description))
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result = install_directory(staged, store, name, expected_digest=expected, verify=verify)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"source": fetcher.description, "digest": result.summary.digest}))
    log.info("%s %s is version %s of %s", fetcher.kind, fetcher.description, result.path, name)
    return result

"""Adapter sources: one module per kind (path, huggingface, s3, oci, url) behind one protocol
(`protocol.Fetcher`), all storing into the same immutable version directories (`versions`).

Blocking I/O: call these from ``asyncio.to_thread``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from loraplane.adapters.sources.credentials import (
    HuggingFaceCredentials,
    RegistryCredentials,
    S3Credentials,
    SourceCredentials,
)
from loraplane.adapters.sources.huggingface import (
    HF_ALLOW_PATTERNS,
    HuggingFaceFetcher,
    inspect_huggingface,
)
from loraplane.adapters.sources.oci import OCIFetcher
from loraplane.adapters.sources.path import PathFetcher, fetch_path
from loraplane.adapters.sources.protocol import (
    AdapterTooLarge,
    Fetcher,
    InvalidArchive,
    SourceContext,
    SourceNotFound,
    SourceUnauthorized,
    SourceUnavailable,
    SourceUnreachable,
    Verify,
    fetch_into_store,
    stale_markers,
)
from loraplane.adapters.sources.s3 import S3Fetcher
from loraplane.adapters.sources.url import URLFetcher
from loraplane.adapters.sources.versions import (
    SUMMARY_FILE,
    DigestMismatch,
    FetchResult,
    empty_trash,
    install_directory,
    remove_version,
    staging_dir,
    stored_version,
    validate_name,
    version_dir,
)
from loraplane.api.sources import AdapterSource

__all__ = [
    "HF_ALLOW_PATTERNS",
    "SUMMARY_FILE",
    "AdapterTooLarge",
    "DigestMismatch",
    "FetchResult",
    "Fetcher",
    "InvalidArchive",
    "SourceContext",
    "SourceNotFound",
    "SourceUnauthorized",
    "SourceUnavailable",
    "SourceUnreachable",
    "empty_trash",
    "fetch_path",
    "fetch_source",
    "fetcher_for",
    "inspect_huggingface",
    "install_directory",
    "remove_version",
    "staging_dir",
    "stale_markers",
    "stored_version",
    "validate_name",
    "version_dir",
]


C = TypeVar("C")


def _credentials(credentials: SourceCredentials | None, kind: type[C]) -> C | None:
    return credentials if isinstance(credentials, kind) else None


def fetcher_for(
    source: AdapterSource, credentials: SourceCredentials | None, context: SourceContext
) -> Fetcher:
    """The fetcher of the one kind `source` sets, with the credentials of that kind."""
    if source.path is not None:
        return PathFetcher(source.path)
    if source.huggingface is not None:
        hf = _credentials(credentials, HuggingFaceCredentials)
        return HuggingFaceFetcher(source.huggingface, hf, context)
    if source.s3 is not None:
        return S3Fetcher(source.s3, _credentials(credentials, S3Credentials), context)
    if source.oci is not None:
        return OCIFetcher(source.oci, _credentials(credentials, RegistryCredentials), context)
    if source.url is not None:
        return URLFetcher(source.url, context)
    raise AssertionError("AdapterSource guarantees exactly one kind")


def fetch_source(
    source: AdapterSource,
    store: Path | str,
    name: str,
    *,
    credentials: SourceCredentials | None = None,
    context: SourceContext | None = None,
    size_limit: int | None = None,
    verify: Verify | None = None,
) -> FetchResult:
    """Fetch `source` into `store` as a verified version of adapter `name`."""
    fetcher = fetcher_for(source, credentials, context or SourceContext())
    return fetch_into_store(fetcher, store, name, size_limit=size_limit, verify=verify)

"""HTTP(S) downloads and archives for the remote source kinds (url, oci, s3).

Blocking (urllib, run in the agent's fetch thread). Every request has the context's timeout
(connect and each read) and its CA bundle; HTTP errors become the shared failures by status, so
each kind only adds what its protocol says on top. Credentials travel in unredirected headers:
a redirect (a registry sending a blob to object storage, for one) never carries them elsewhere.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from http.client import HTTPResponse
from pathlib import Path, PurePosixPath

from loraplane.adapters.inspect import CONFIG_FILE
from loraplane.adapters.sources.protocol import (
    InvalidArchive,
    SizeBudget,
    SourceContext,
    SourceNotFound,
    SourceUnauthorized,
    SourceUnreachable,
)

CHUNK = 1 << 20


class HTTPStatusError(Exception):
    """An answer other than 2xx that the caller wants to read (e.g. a registry's challenge);
    its headers are looked up without regard to case, as HTTP wants."""

    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


class Client:
    """One opener with the context's TLS trust; `what` names the source in every message."""

    def __init__(self, context: SourceContext, what: str) -> None:
        self._timeout = context.timeout_seconds
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context.ssl_context())
        )
        self.what = what

    def open(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        secret_headers: Mapping[str, str] | None = None,
    ) -> HTTPResponse:
        """The response of a 2xx answer; raises HTTPStatusError for any other status and
        SourceUnreachable when there is no answer."""
        request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
        for key, value in (secret_headers or {}).items():
            request.add_unredirected_header(key, value)
        try:
            response: HTTPResponse = self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read(64 * 1024)
            raise HTTPStatusError(exc.code, exc.headers, body) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceUnreachable(f"{self.what}: no answer ({reason})") from None
        return response

    def failure(self, exc: HTTPStatusError, detail: str = "") -> Exception:
        """The shared failure for an HTTP error status."""
        said = f"{self.what}: HTTP {exc.status}{': ' + detail if detail else ''}"
        if exc.status in (401, 403):
            return SourceUnauthorized(f"{said} (check the credentials in the referenced Secret)")
        if exc.status in (404, 410):
            return SourceNotFound(said)
        return SourceUnreachable(said)

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        secret_headers: Mapping[str, str] | None = None,
    ) -> HTTPResponse:
        """open() with HTTP errors already turned into the shared failures."""
        try:
            return self.open(url, headers=headers, secret_headers=secret_headers)
        except HTTPStatusError as exc:
            raise self.failure(exc) from None


def announced_size(response: HTTPResponse) -> int | None:
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def stream_to_file(response: HTTPResponse, destination: Path, budget: SizeBudget, what: str) -> str:
    """Write the body to `destination` under the budget; returns its sha256 hex."""
    size = announced_size(response)
    if size is not None:
        budget.announce(budget.used + size)
    digest = hashlib.sha256()
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with response, open(destination, "wb") as out:
            while chunk := response.read(CHUNK):
                budget.take(len(chunk))
                digest.update(chunk)
                out.write(chunk)
    except (TimeoutError, ConnectionError) as exc:
        raise SourceUnreachable(f"{what}: the download broke off ({exc})") from None
    if size is not None and destination.stat().st_size != size:
        raise SourceUnreachable(f"{what}: the download broke off before its announced end")
    return digest.hexdigest()


def relative_file(name: str, what: str) -> PurePosixPath:
    """A file name inside the adapter directory, refusing anything that would leave it."""
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        raise InvalidArchive(f"{what}: refusing the file name {name!r} (outside the adapter)")
    return path


def unpack_tar(archive: Path, destination: Path, budget: SizeBudget, what: str) -> None:
    """Extract a (possibly compressed) tarball: regular files and directories only, their sizes
    counted against the budget before each is written."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InvalidArchive(f"{what}: {member.name!r} is not a regular file")
                rel = relative_file(member.name.removeprefix("./"), what)
                budget.take(member.size)
                source = tar.extractfile(member)
                if source is None:
                    raise InvalidArchive(f"{what}: cannot read {member.name!r}")
                target = destination / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidArchive(f"{what}: not a readable tarball ({exc})") from None


def adapter_root(directory: Path) -> Path:
    """Where the adapter's files are in an unpacked archive: the top, or its only directory
    (``tar czf a.tgz my-adapter/`` keeps that directory)."""
    if (directory / CONFIG_FILE).exists():
        return directory
    entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return adapter_root(entries[0])
    return directory


def hoist(staged: Path, root: Path) -> None:
    """Move the files under `root` (a directory inside `staged`) up into `staged` itself."""
    if root == staged:
        return
    holder = staged / ".unpacked"
    root.rename(holder)
    for leftover in [p for p in staged.iterdir() if p != holder]:
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    for item in holder.iterdir():
        item.rename(staged / item.name)
    holder.rmdir()

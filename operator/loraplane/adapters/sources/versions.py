"""The store's versions: each adapter at an immutable, versioned path ``<store>/<name>/<digest>/``.

vLLM re-reads an evicted adapter from its path inside the engine loop and dies when the files are
gone or half-written (DESIGN.md §4), so a version directory appears only complete: files are
copied (or downloaded) into a hidden temporary directory beside it, inspected, their digest
checked, and the directory renamed into place (atomic on one filesystem). A version that exists is
never rewritten. Blocking I/O: call these from ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from loraplane.adapters.inspect import AdapterInspectionError, Inspection, inspect_adapter
from loraplane.vllm.errors import Reason

__all__ = [
    "SUMMARY_FILE",
    "DigestMismatch",
    "FetchResult",
    "empty_trash",
    "existing_version",
    "install_directory",
    "remove_version",
    "staging_dir",
    "stored_version",
    "validate_name",
    "version_dir",
]

logger = logging.getLogger(__name__)

# Written inside each version directory (hidden, so not part of the digest): the summary of what
# was verified, which makes a repeated fetch cost one small read instead of a re-hash.
SUMMARY_FILE = ".loraplane-summary.json"
# Prefix of a version directory being removed: renamed first, so it never looks complete.
TRASH_PREFIX = ".del-"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class DigestMismatch(AdapterInspectionError):
    """The files differ from the digest the source or the caller pins (changed while copied,
    tampered with, or not what the spec names)."""

    reason = Reason.DIGEST_MISMATCH


class FetchResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    summary: Inspection
    created: bool


def validate_name(name: str) -> str:
    """Adapter names become directory names: lowercase DNS-like, no separators, no dot-names."""
    if not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"adapter name {name!r} is not a valid store directory name")
    return name


def version_dir(store: Path | str, name: str, digest: str) -> Path:
    """``<store>/<name>/<hex>``, the immutable directory of one version of an adapter."""
    hex_digest = digest.removeprefix("sha256:")
    if not _HEX.match(hex_digest):
        raise ValueError(f"digest {digest!r} is not a sha256 hex digest")
    return Path(store) / validate_name(name) / hex_digest


def _read_summary(directory: Path) -> Inspection | None:
    try:
        return Inspection.model_validate_json((directory / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_summary(directory: Path, summary: Inspection) -> None:
    (directory / SUMMARY_FILE).write_text(summary.model_dump_json())


def install_directory(
    staged: Path,
    store: Path | str,
    name: str,
    *,
    expected_digest: str | None = None,
    verify: Callable[[Inspection], None] | None = None,
) -> FetchResult:
    """Move the adapter ``staged`` (a directory under ``<store>/<name>/``, owned by the caller)
    into its version directory, after inspecting it and checking its digest.

    ``verify`` may raise to refuse the adapter (pre-flight validation); ``staged`` is removed in
    every case.
    """
    try:
        summary = inspect_adapter(staged)
        if expected_digest is not None and summary.digest != _prefixed(expected_digest):
            raise DigestMismatch(
                f"the files of adapter {name!r} have digest {summary.digest}, not the expected "
                f"{_prefixed(expected_digest)} (changed while copied, or tampered with)"
            )
        if verify is not None:
            verify(summary)
        target = version_dir(store, name, summary.digest)
        existing = existing_version(target)
        if existing is not None:
            return FetchResult(path=str(target), summary=existing, created=False)
        final = summary.model_copy(update={"path": str(target)})
        _write_summary(staged, final)
        try:
            staged.rename(target)
        except OSError:
            # Another fetch of the same version won the race: theirs is as good as ours.
            existing = existing_version(target)
            if existing is None:
                raise
            return FetchResult(path=str(target), summary=existing, created=False)
        logger.info("stored adapter %s version %s (%d bytes)", name, target.name, final.size_bytes)
        return FetchResult(path=str(target), summary=final, created=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def stored_version(store: Path | str, name: str, digest: str) -> Inspection | None:
    """The summary of a version already in the store, or None."""
    return existing_version(version_dir(store, name, digest))


def existing_version(target: Path) -> Inspection | None:
    """The summary of the version directory `target`, or None when it is not there."""
    if not target.is_dir():
        return None
    summary = _read_summary(target)
    if summary is None or not summary.weights_inspected:
        # Only a rename creates a version directory, so it is complete: re-inspect it (also a
        # pickled one stored before pickles were read, so that pre-flight judges its tensors).
        summary = inspect_adapter(target).model_copy(update={"path": str(target)})
        with contextlib.suppress(OSError):
            _write_summary(target, summary)
    return summary


def _prefixed(digest: str) -> str:
    return digest if digest.startswith("sha256:") else "sha256:" + digest


def staging_dir(store: Path | str, name: str) -> Path:
    """A hidden directory beside the versions of `name`, for files not verified yet."""
    parent = Path(store) / validate_name(name)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))


def remove_version(store: Path | str, name: str, digest: str) -> bool:
    """Delete one version directory (only once vLLM no longer has the name registered).

    It is first renamed to a hidden name, so a half-deleted directory never looks like a version.
    """
    target = version_dir(store, name, digest)
    if not target.exists():
        return False
    # A unique hidden name: an earlier removal killed halfway may have left its own behind.
    trash = Path(tempfile.mkdtemp(prefix=f"{TRASH_PREFIX}{target.name}-", dir=target.parent))
    target.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def empty_trash(store: Path | str) -> list[str]:
    """Finish removals that were killed halfway (hidden, so never taken for a version)."""
    removed: list[str] = []
    for trash in Path(store).glob(f"*/{TRASH_PREFIX}*"):
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(f"{trash.parent.name}/{trash.name}")
    return removed

"""Fetch an adapter into the store at an immutable, versioned path: ``<store>/<name>/<digest>/``.

vLLM re-reads an evicted adapter from its path inside the engine loop and dies when the files are
gone or half-written (DESIGN.md §4), so a version directory appears only complete: files are
copied (or downloaded) into a hidden temporary directory beside it, inspected, their digest
checked, and the directory renamed into place (atomic on one filesystem). A version that exists is
never rewritten. Blocking I/O: call these from ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from loraplane.adapters.inspect import (
    CONFIG_FILE,
    SAFETENSORS_FILE,
    AdapterConfigMissing,
    AdapterInspectionError,
    AdapterSummary,
    NoTensors,
    TensorInfo,
    inspect_adapter,
    parse_config,
    summarize,
)
from loraplane.vllm.errors import Reason

__all__ = [
    "HF_ALLOW_PATTERNS",
    "SUMMARY_FILE",
    "DigestMismatch",
    "FetchResult",
    "empty_trash",
    "fetch_huggingface",
    "fetch_path",
    "inspect_huggingface",
    "install_directory",
    "remove_version",
    "resolve_hf_revision",
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
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class DigestMismatch(AdapterInspectionError):
    """The copied files differ from what was verified, or from the digest the caller expects."""

    reason = Reason.CORRUPT_WEIGHTS


class FetchResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    summary: AdapterSummary
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


def _read_summary(directory: Path) -> AdapterSummary | None:
    try:
        return AdapterSummary.model_validate_json((directory / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_summary(directory: Path, summary: AdapterSummary) -> None:
    (directory / SUMMARY_FILE).write_text(summary.model_dump_json())


def install_directory(
    staged: Path,
    store: Path | str,
    name: str,
    *,
    expected_digest: str | None = None,
    verify: Callable[[AdapterSummary], None] | None = None,
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
                f"adapter {name!r} changed while it was copied: digest {summary.digest}, "
                f"expected {_prefixed(expected_digest)}"
            )
        if verify is not None:
            verify(summary)
        target = version_dir(store, name, summary.digest)
        existing = _existing(target)
        if existing is not None:
            return FetchResult(path=str(target), summary=existing, created=False)
        final = summary.model_copy(update={"path": str(target)})
        _write_summary(staged, final)
        try:
            staged.rename(target)
        except OSError:
            # Another fetch of the same version won the race: theirs is as good as ours.
            existing = _existing(target)
            if existing is None:
                raise
            return FetchResult(path=str(target), summary=existing, created=False)
        logger.info("stored adapter %s version %s (%d bytes)", name, target.name, final.size_bytes)
        return FetchResult(path=str(target), summary=final, created=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def stored_version(store: Path | str, name: str, digest: str) -> AdapterSummary | None:
    """The summary of a version already in the store, or None."""
    return _existing(version_dir(store, name, digest))


def _existing(target: Path) -> AdapterSummary | None:
    if not target.is_dir():
        return None
    summary = _read_summary(target)
    if summary is None:
        # Only a rename creates a version directory, so it is complete: re-inspect it.
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


def fetch_path(
    source: Path | str,
    store: Path | str,
    name: str,
    *,
    verify: Callable[[AdapterSummary], None] | None = None,
) -> FetchResult:
    """Copy the adapter directory ``source`` into the store; idempotent for unchanged files."""
    source = Path(source)
    summary = inspect_adapter(source)
    target = version_dir(store, name, summary.digest)
    existing = _existing(target)
    if existing is not None:
        if verify is not None:
            verify(existing)
        return FetchResult(path=str(target), summary=existing, created=False)
    staged = staging_dir(store, name)
    try:
        for rel in summary.files:
            destination = staged / rel
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, destination)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return install_directory(staged, store, name, expected_digest=summary.digest, verify=verify)


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


def resolve_hf_revision(
    repo: str, revision: str | None, token: str | None, *, endpoint: str | None = None
) -> str:
    """The commit sha a branch, tag or sha of a Hugging Face model repository points at."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision)
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not sha:
        raise ValueError(f"Hugging Face returned no commit for {repo}@{revision or 'main'}")
    return sha


def _revision_marker(store: Path | str, name: str, commit: str) -> Path:
    return Path(store) / validate_name(name) / f".hf-{commit}"


def fetch_huggingface(
    repo: str,
    revision: str | None,
    store: Path | str,
    name: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    verify: Callable[[AdapterSummary], None] | None = None,
) -> FetchResult:
    """Download ``repo`` at ``revision`` (resolved to a commit first, so the stored version never
    changes under a moving branch) into the store."""
    from huggingface_hub import snapshot_download

    commit = resolve_hf_revision(repo, revision, token, endpoint=endpoint)
    marker = _revision_marker(store, name, commit)
    with contextlib.suppress(OSError, ValueError):
        recorded: dict[str, Any] = json.loads(marker.read_text())
        existing = _existing(version_dir(store, name, str(recorded["digest"])))
        if existing is not None:
            if verify is not None:
                verify(existing)
            return FetchResult(path=existing.path, summary=existing, created=False)
    staged = staging_dir(store, name)
    try:
        snapshot_download(
            repo_id=repo,
            revision=commit,
            token=token,
            endpoint=endpoint,
            local_dir=str(staged),
            allow_patterns=HF_ALLOW_PATTERNS,
        )
        # huggingface_hub keeps its own bookkeeping there; it is not part of the adapter.
        shutil.rmtree(staged / ".cache", ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result = install_directory(staged, store, name, verify=verify)
    marker.write_text(json.dumps({"repo": repo, "commit": commit, "digest": result.summary.digest}))
    return result


def inspect_huggingface(
    repo: str, revision: str | None, token: str | None = None, *, endpoint: str | None = None
) -> AdapterSummary:
    """Summarize an adapter on the hub from its adapter_config.json and the safetensors header
    (two small range reads), for the operator's central pre-flight before any pod downloads it.

    The digest stays empty (it needs every byte); ``path`` reads ``hf://<repo>@<commit>``.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    api = HfApi(endpoint=endpoint, token=token)
    info = api.model_info(repo, revision=revision, files_metadata=True)
    commit = getattr(info, "sha", None) or revision or "main"
    siblings = {s.rfilename: s.size or 0 for s in (getattr(info, "siblings", None) or [])}
    if CONFIG_FILE not in siblings:
        raise AdapterConfigMissing(f"{repo}@{commit} has no {CONFIG_FILE}: not a PEFT adapter")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config_path = api.hf_hub_download(
                repo, CONFIG_FILE, revision=commit, local_dir=tmp, token=token
            )
            config = parse_config(Path(config_path).read_bytes())
    except EntryNotFoundError as e:
        raise AdapterConfigMissing(f"{repo}@{commit} has no {CONFIG_FILE}") from e
    tensors: dict[str, TensorInfo] = {}
    weights_file: str | None = None
    if SAFETENSORS_FILE in siblings:
        weights_file = SAFETENSORS_FILE
        metadata = api.parse_safetensors_file_metadata(
            repo, SAFETENSORS_FILE, revision=commit, token=token
        )
        tensors = {
            name: TensorInfo(dtype=str(t.dtype), shape=tuple(t.shape))
            for name, t in metadata.tensors.items()
        }
        if not tensors:
            raise NoTensors(f"{SAFETENSORS_FILE} of {repo}@{commit} holds no tensors")
    else:
        weights_file = next(
            (f for f in ("adapter_model.bin", "adapter_model.pt") if f in siblings), None
        )
    if weights_file is None:
        raise NoTensors(f"{repo}@{commit} has {CONFIG_FILE} but no adapter weights")
    files = sorted(f for f in siblings if any(fnmatch(f, p) for p in HF_ALLOW_PATTERNS))
    return summarize(
        config,
        tensors,
        path=f"hf://{repo}@{commit}",
        weights_file=weights_file,
        size_bytes=sum(siblings[f] for f in files),
        files=files,
        weights_inspected=bool(tensors),
    )

"""The agent's adapter store: fetch, verify and install adapters; prune what is unregistered."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tarfile
import tempfile
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from loraplane.adapters.inspect import AdapterInspectionError, Inspection
from loraplane.adapters.sources import (
    FetchResult,
    SourceContext,
    SourceUnavailable,
    empty_trash,
    fetch_source,
    install_directory,
    remove_version,
    staging_dir,
    stale_markers,
    stored_version,
    validate_name,
    version_dir,
)
from loraplane.adapters.validate import BaseModelFacts, Finding, errors, llama_base_facts, validate
from loraplane.agent import protocol
from loraplane.agent.protocol import Fetched, FetchRequest
from loraplane.api.adapter import AdapterSummary

log = logging.getLogger(__name__)


class Rejected(Exception):
    """The adapter cannot be served; `reason` is from the shared vocabulary."""

    def __init__(self, reason: str, message: str, findings: list[Finding] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.findings = findings or []


class VersionUnavailable(Exception):
    """The source cannot be read now (and no peer has the pinned version): worth a retry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def status_summary(summary: Inspection) -> AdapterSummary:
    """What status shows of an inspected adapter."""
    targets = summary.target_modules
    return AdapterSummary(
        rank=summary.max_rank,
        alpha=summary.alpha,
        target_modules=sorted(summary.module_suffixes)
        or ([targets] if isinstance(targets, str) else list(targets or [])),
        base_model=summary.base_model_name_or_path,
        size_bytes=summary.size_bytes,
        digest=summary.digest,
    )


class AdapterStore:
    """Adapters under `<root>/<name>/<digest>/`; one fetch per adapter at a time.

    A fetch that names a pinned digest is served from the store when the version is there,
    whatever the source holds meanwhile; otherwise from the source only if its files still have
    that digest, else from a peer's store (the same token, the digest checked again here).
    """

    def __init__(
        self,
        root: Path,
        model_path: Path | None,
        token: str = "",
        peer_timeout: float = 120.0,
        sources: SourceContext | None = None,
    ) -> None:
        self.root = root
        self.model_path = model_path
        self._token = token
        self._peer_timeout = peer_timeout
        self._sources = sources or SourceContext()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def base_facts(self, req: FetchRequest) -> BaseModelFacts:
        config = self.model_path / "config.json" if self.model_path else None
        if config is not None and config.is_file():
            try:
                return llama_base_facts(
                    config,
                    max_lora_rank=req.max_lora_rank,
                    model_name=str(self.model_path),
                    deployment=req.base_model,
                )
            except (ValueError, OSError, json.JSONDecodeError) as exc:
                log.info("base model facts unavailable (%s): checking rank only", exc)
        return BaseModelFacts(max_lora_rank=req.max_lora_rank, deployment=req.base_model)

    def _fetch_blocking(self, req: FetchRequest) -> Fetched:
        facts = self.base_facts(req)
        found: list[Finding] = []

        def verify(summary: Inspection) -> None:
            found[:] = validate(summary, facts, pickled_adapters=req.pickled_adapters)
            bad = errors(found)
            if bad:
                raise Rejected(bad[0].reason, "; ".join(f.message for f in bad), found)

        def answer(path: str, summary: Inspection) -> Fetched:
            return Fetched(path=path, summary=status_summary(summary), findings=found)

        pinned = req.expected_digest

        def from_store() -> Fetched | None:
            try:
                kept = stored_version(self.root, req.name, pinned) if pinned else None
            except AdapterInspectionError as exc:
                # A version stored before its weights could be inspected, refused now.
                raise Rejected(str(exc.reason), exc.message) from exc
            if kept is None or pinned is None:
                return None
            verify(kept)
            return answer(str(version_dir(self.root, req.name, pinned)), kept)

        if not req.follow and (kept := from_store()) is not None:
            return kept
        try:
            result = self._from_source(req, verify)
        except Rejected as exc:
            if pinned is None:
                raise
            missing = exc.reason == "AdapterNotFound"
            reason = protocol.SOURCE_UNAVAILABLE if missing else protocol.SOURCE_CHANGED
            problem = f"the source no longer holds version {pinned}: {exc.message}"
        except VersionUnavailable as exc:
            if pinned is None:
                raise
            reason, problem = exc.reason, f"the source cannot be read now: {exc.message}"
        else:
            if pinned is None or req.follow or result.summary.digest == pinned:
                return answer(result.path, result.summary)
            reason = protocol.SOURCE_CHANGED
            problem = f"the source now holds {result.summary.digest}, not the pinned {pinned}"
        if req.follow and (kept := from_store()) is not None:
            log.info("%s: source unavailable (%s); keeping version %s", req.name, reason, pinned)
            return kept
        assert pinned is not None  # a fetch without a pin has answered or raised by now
        for peer in req.peers:
            try:
                result = self._from_peer(peer, req.name, pinned, verify)
            except (OSError, tarfile.TarError, AdapterInspectionError) as exc:
                log.info("peer %s could not give %s %s: %s", peer, req.name, pinned, exc)
                continue
            log.info("got %s %s from peer %s", req.name, pinned, peer)
            return answer(result.path, result.summary)
        tried = f"; no peer had it ({len(req.peers)} asked)" if req.peers else "; no peer holds it"
        raise VersionUnavailable(reason, problem + tried)

    def size_limit(self, req: FetchRequest) -> int:
        """What one adapter may take: the store's size limit, and no more than is free."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        return min(free, req.size_limit_bytes) if req.size_limit_bytes else free

    def _from_source(self, req: FetchRequest, verify: Callable[[Inspection], None]) -> FetchResult:
        source = req.source
        try:
            return fetch_source(
                source,
                self.root,
                req.name,
                credentials=req.credentials,
                context=self._sources,
                size_limit=self.size_limit(req),
                verify=verify,
            )
        except AdapterInspectionError as exc:
            raise Rejected(str(exc.reason), str(exc)) from exc
        except SourceUnavailable as exc:
            raise VersionUnavailable(str(exc.reason), exc.message) from exc
        except FileNotFoundError as exc:
            raise Rejected("AdapterNotFound", f"no adapter at {source.path}: {exc}") from exc

    def _from_peer(
        self, peer: str, name: str, digest: str, verify: Callable[[Inspection], None]
    ) -> FetchResult:
        url = peer.rstrip("/") + protocol.version_path(name, digest)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}"})
        staged = staging_dir(self.root, name)
        try:
            with (
                urllib.request.urlopen(request, timeout=self._peer_timeout) as resp,
                tarfile.open(fileobj=resp, mode="r|") as archive,
            ):
                archive.extractall(staged, filter="data")
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        # The peer is trusted with nothing: the files must have the pinned digest.
        return install_directory(staged, self.root, name, expected_digest=digest, verify=verify)

    def archive(self, name: str, digest: str) -> Path | None:
        """A tar of one stored version, in a hidden temporary file the caller removes."""
        target = version_dir(self.root, name, digest)
        if stored_version(self.root, name, digest) is None:
            return None
        handle, path = tempfile.mkstemp(prefix=".tar-", dir=target.parent)
        with open(handle, "wb") as out, tarfile.open(fileobj=out, mode="w|") as archive:
            for item in sorted(target.iterdir()):
                archive.add(item, arcname=item.name)
        return Path(path)

    async def fetch(self, req: FetchRequest) -> Fetched:
        validate_name(req.name)
        async with self._locks[req.name]:
            return await asyncio.to_thread(self._fetch_blocking, req)

    def prune(self, keep: dict[str, str]) -> list[str]:
        """Remove every version not in `keep` (name -> digest dir). Returns what was removed.

        Each goes through `remove_version` (renamed away first), so a prune killed halfway never
        leaves a partial directory under a version's name for a later fetch to serve.
        """
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        empty_trash(self.root)
        for adapter_dir in self.root.iterdir():
            if not adapter_dir.is_dir() or adapter_dir.name.startswith("."):
                continue
            for version in adapter_dir.iterdir():
                if version.name.startswith(".") or keep.get(adapter_dir.name) == version.name:
                    continue
                try:
                    if remove_version(self.root, adapter_dir.name, version.name):
                        removed.append(f"{adapter_dir.name}/{version.name}")
                except ValueError:
                    log.warning("left alone %s: not a version directory", version)
            if not any(adapter_dir.iterdir()):
                adapter_dir.rmdir()
        for marker in stale_markers(self.root):
            marker.unlink(missing_ok=True)
        return removed

"""The agent's adapter store: fetch, verify and install adapters; prune what is unregistered."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from pathlib import Path

from loraplane.adapters.inspect import AdapterInspectionError
from loraplane.adapters.inspect import AdapterSummary as Inspected
from loraplane.adapters.sources import (
    empty_trash,
    fetch_huggingface,
    fetch_path,
    remove_version,
    validate_name,
)
from loraplane.adapters.validate import BaseModelFacts, Finding, errors, llama_base_facts, validate
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


def status_summary(summary: Inspected) -> AdapterSummary:
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
    """Adapters under `<root>/<name>/<digest>/`; one fetch per adapter at a time."""

    def __init__(self, root: Path, model_path: Path | None) -> None:
        self.root = root
        self.model_path = model_path
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

        def verify(summary: Inspected) -> None:
            found[:] = validate(summary, facts)
            bad = errors(found)
            if bad:
                raise Rejected(bad[0].reason, "; ".join(f.message for f in bad), found)

        source = req.source
        try:
            if source.path is not None:
                result = fetch_path(source.path, self.root, req.name, verify=verify)
            elif source.huggingface is not None:
                result = fetch_huggingface(
                    source.huggingface.repo,
                    source.huggingface.revision,
                    self.root,
                    req.name,
                    token=req.hf_token,
                    verify=verify,
                )
            else:
                raise Rejected("InvalidRequest", "no source given")
        except AdapterInspectionError as exc:
            raise Rejected(str(exc.reason), str(exc)) from exc
        except FileNotFoundError as exc:
            raise Rejected("AdapterNotFound", f"no adapter at {source.path}: {exc}") from exc
        return Fetched(path=result.path, summary=status_summary(result.summary), findings=found)

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
        return removed

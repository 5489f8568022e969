"""The agent's adapter store: fetch, verify and install adapters; prune what is unregistered."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loraplane.adapters.inspect import AdapterInspectionError, AdapterSummary
from loraplane.adapters.sources import fetch_huggingface, fetch_path, validate_name
from loraplane.adapters.validate import BaseModelFacts, Finding, errors, llama_base_facts, validate

log = logging.getLogger(__name__)


class FetchRequest(BaseModel):
    """What the operator asks of an agent for one adapter."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    path: str | None = None
    hf_repo: str | None = Field(None, alias="hfRepo")
    hf_revision: str | None = Field(None, alias="hfRevision")
    hf_token: str | None = Field(None, alias="hfToken")
    max_lora_rank: int = Field(alias="maxLoraRank")
    base_model: str | None = Field(None, alias="baseModel")


class Rejected(Exception):
    """The adapter cannot be served; `reason` is from the shared vocabulary."""

    def __init__(self, reason: str, message: str, findings: list[Finding] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.findings = findings or []


def summary_json(summary: AdapterSummary) -> dict[str, Any]:
    targets = summary.target_modules
    return {
        "rank": summary.max_rank,
        "alpha": summary.alpha,
        "targetModules": sorted(summary.module_suffixes)
        or ([targets] if isinstance(targets, str) else list(targets or [])),
        "baseModel": summary.base_model_name_or_path,
        "sizeBytes": summary.size_bytes,
        "digest": summary.digest,
    }


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

    def _fetch_blocking(self, req: FetchRequest) -> tuple[str, AdapterSummary, list[Finding]]:
        facts = self.base_facts(req)
        found: list[Finding] = []

        def verify(summary: AdapterSummary) -> None:
            found[:] = validate(summary, facts)
            bad = errors(found)
            if bad:
                raise Rejected(bad[0].reason, "; ".join(f.message for f in bad), found)

        try:
            if req.path is not None:
                result = fetch_path(req.path, self.root, req.name, verify=verify)
            elif req.hf_repo is not None:
                result = fetch_huggingface(
                    req.hf_repo,
                    req.hf_revision,
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
            raise Rejected("AdapterNotFound", f"no adapter at {req.path}: {exc}") from exc
        return result.path, result.summary, found

    async def fetch(self, req: FetchRequest) -> tuple[str, AdapterSummary, list[Finding]]:
        validate_name(req.name)
        async with self._locks[req.name]:
            return await asyncio.to_thread(self._fetch_blocking, req)

    def prune(self, keep: dict[str, str]) -> list[str]:
        """Remove every version not in `keep` (name -> digest dir). Returns what was removed."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for adapter_dir in self.root.iterdir():
            if not adapter_dir.is_dir() or adapter_dir.name.startswith("."):
                continue
            for version in adapter_dir.iterdir():
                if version.name.startswith("."):
                    continue
                if keep.get(adapter_dir.name) != version.name:
                    shutil.rmtree(version, ignore_errors=True)
                    removed.append(f"{adapter_dir.name}/{version.name}")
            if not any(adapter_dir.iterdir()):
                adapter_dir.rmdir()
        return removed

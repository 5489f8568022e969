"""The merge init container of a merged base model's pods (`python3 -m loraplane.merge`).

Runs in the pod's vLLM image (which has torch, safetensors and, in loraplane's vLLM image, this
package) before vLLM starts. It fetches the adapter's pinned version with the agent's own store
code (the digest checked, the pre-flight checks run against the base model's config), merges it
into the base checkpoint tensor by tensor, and publishes the result with one rename: vLLM never
sees a half-written model, and a pod restarted on the same volume finds it done.

A failure exits 1 after writing `Reason: message` to the termination message file, which the
kubelet puts in the init container's terminated state; the operator reads it there, keeps the
last good version serving and says why (merge/book.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from loraplane.adapters.sources.credentials import MissingSecret, SecretReader, read_credentials
from loraplane.agent.protocol import FetchRequest
from loraplane.agent.store import AdapterStore, Rejected, VersionUnavailable
from loraplane.config import AgentSettings
from loraplane.merge.inputs import (
    CREDENTIALS_PATH,
    FETCH_DIR,
    MOUNT_PATH,
    MergeInputs,
    secret_name,
)
from loraplane.merge.weights import MergeError, merge_checkpoint

log = logging.getLogger("loraplane.merge")
# Ranks are no limit on merged weights (there are no LoRA slots): the largest vLLM knows.
ANY_RANK = 512
# What the kubelet keeps of a termination message.
MESSAGE_LIMIT = 4096


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret(base: Path) -> SecretReader:
    """Reads the source's Secret from its volume, where the pod builder mounts it by name."""

    async def read(_namespace: str, name: str, key: str) -> str | None:
        path = base / name / key
        return path.read_text() if path.is_file() else None

    return read


def fetch(inputs: MergeInputs, root: Path, model_dir: Path, settings: AgentSettings) -> Path:
    """The pinned version's files, verified, in the pod's own store under `root`."""
    reader = _read_secret(Path(CREDENTIALS_PATH))
    credentials = (
        asyncio.run(read_credentials(reader, "", inputs.source))
        if secret_name(inputs.source)
        else None
    )
    store = AdapterStore(root, model_dir, sources=settings.source_context())
    request = FetchRequest(
        name=inputs.adapter,
        source=inputs.source,
        credentials=credentials,
        max_lora_rank=ANY_RANK,
        expected_digest=inputs.digest,
    )
    return Path(asyncio.run(store.fetch(request)).path)


def base_checkpoint(model: str, revision: str | None) -> Path:
    """The base model's directory: a path as it is, a hub repository downloaded into HF_HOME
    (the model cache volume vLLM then finds it in)."""
    if model.startswith("/"):
        return Path(model)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]
    return Path(snapshot_download(model, revision=revision, allow_patterns=patterns))


def run(args: argparse.Namespace) -> Path:
    inputs = MergeInputs.model_validate_json(args.inputs)
    out = Path(args.out) / Path(inputs.model_dir).name
    if out.is_dir():
        log.info("version %s is merged already in %s", inputs.digest, out)
        return out
    base = base_checkpoint(args.model, args.revision)
    settings = AgentSettings.from_env()
    adapter = fetch(inputs, out.parent / FETCH_DIR, base, settings)
    staging = out.parent / f".staging-{out.name}"
    shutil.rmtree(staging, ignore_errors=True)  # a merge killed halfway left it
    started = time.monotonic()
    report = merge_checkpoint(base, adapter, staging, args.dtype or None)
    _fsync_tree(staging)
    staging.rename(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    log.info(
        "merged %s (%s) into %s: %d modules, %d tensors, %d bytes read, %d written, %.2f s, "
        "peak RSS %d bytes",
        inputs.adapter,
        inputs.digest,
        out,
        report.merged_modules,
        report.tensors,
        report.bytes_read,
        report.bytes_written,
        time.monotonic() - started,
        peak,
    )
    shutil.rmtree(out.parent / FETCH_DIR, ignore_errors=True)  # merged: the files served nothing
    return out


def failure(exc: BaseException) -> tuple[str, str]:
    """(reason, message) of what stopped the merge."""
    if isinstance(exc, MergeError | Rejected | VersionUnavailable):
        return exc.reason, exc.message
    if isinstance(exc, MissingSecret):
        return "SecretNotFound", str(exc)
    if isinstance(exc, MemoryError):
        return "OutOfMemory", "the merge ran out of memory"
    return "MergeFailed", f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m loraplane.merge", description=__doc__)
    parser.add_argument("--inputs", required=True, help="MergeInputs as JSON")
    parser.add_argument("--model", required=True, help="the base model: a path or a hub repo")
    parser.add_argument("--revision", default=None, help="the hub repository's revision")
    parser.add_argument("--dtype", default="", help="F16, BF16 or F32; empty: the base's")
    parser.add_argument("--out", default=MOUNT_PATH, help="where merged versions are kept")
    parser.add_argument("--termination-log", default="/dev/termination-log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run(args)
    except Exception as exc:  # every failure is reported, none is retried by a crash loop
        reason, message = failure(exc)
        log.exception("merge failed: %s: %s", reason, message)
        try:
            Path(args.termination_log).write_text(f"{reason}: {message}"[:MESSAGE_LIMIT])
        except OSError as err:
            log.warning("no termination message written: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writing and drift-checking generated files (CRDs, the chart's parts, the dashboard)."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def write(files: Mapping[Path, str]) -> list[Path]:
    """Write each file whose content differs; the paths written."""
    written = []
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def diff(files: Mapping[Path, str]) -> str:
    """A unified diff from what is on disk to what is generated ('' when current)."""
    chunks: list[str] = []
    for path, text in files.items():
        current = path.read_text() if path.exists() else ""
        if current != text:
            chunks.extend(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=str(path),
                    tofile=f"{path} (generated)",
                )
            )
    return "".join(chunks)


def out_or_check(
    prog: str,
    description: str | None,
    what: str,
    write_to: Callable[[Path], list[Path]],
    diff_of: Callable[[Path], str],
    argv: Sequence[str] | None = None,
) -> int:
    """The `--out DIR` / `--check DIR` command line of a generator of one directory's files."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help=f"write {what} into this directory")
    group.add_argument("--check", type=Path, help="exit 1 with a diff if this directory is stale")
    args = parser.parse_args(argv)
    if args.out is not None:
        for path in write_to(args.out):
            sys.stdout.write(f"wrote {path}\n")
        return 0
    stale = diff_of(args.check)
    if stale:
        sys.stdout.write(stale)
        sys.stderr.write(f"{args.check} is stale: run `{prog} --out {args.check}`\n")
        return 1
    return 0

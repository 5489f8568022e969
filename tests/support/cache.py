"""Build-once directories under $LORAPLANE_HOME, safe against concurrent test processes.

A fixture directory is built in a temporary sibling and renamed into place, so a reader never
sees a half-written model or adapter. A stamp file records the recipe version: bumping the
version of a recipe makes the next call rebuild instead of serving stale files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

STAMP_NAME = ".loraplane-fixture.json"


def loraplane_home() -> Path:
    """$LORAPLANE_HOME, default ~/.cache/loraplane (the team convention)."""
    return Path(os.environ.get("LORAPLANE_HOME") or Path.home() / ".cache" / "loraplane")


def read_stamp(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads((path / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_current(path: Path, recipe: str) -> bool:
    stamp = read_stamp(path)
    return stamp is not None and stamp.get("recipe") == recipe


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock: pytest-xdist workers wait instead of building twice."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(
    target: Path,
    recipe: str,
    build: Callable[[Path], None],
    *,
    extra_stamp: dict[str, object] | None = None,
) -> Path:
    """Return `target`, first building it with `build(tmpdir)` unless its stamp says `recipe`."""
    if is_current(target, recipe):
        return target
    with file_lock(target.parent / f".{target.name}.lock"):
        if is_current(target, recipe):  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
        try:
            build(tmp)
            _make_readable(tmp)
            stamp = {"recipe": recipe, **(extra_stamp or {})}
            (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            old: Path | None = None
            if target.exists():
                # Move the stale one aside first: rename onto a non-empty directory fails.
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.rename(target, old / "stale")
            os.rename(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _make_readable(root: Path) -> None:
    """mkdtemp makes 0700 directories; pods and servers may read fixtures as another user."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

"""Command lines of the entry points: `--help` lists the settings (environment variables).

Every tunable is an environment variable (see config.py); the command lines take no options of
their own beyond `--help` and `--version`, so the list in the help is generated from the settings
class and cannot drift from it.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel

from loraplane.config import env_name

# Where help text wraps: the project's line length, which also fits a wide terminal.
WIDTH = 100


def package_version() -> str:
    try:
        return version("loraplane")
    except PackageNotFoundError:
        # Run from a source tree that was never installed (PYTHONPATH only): no metadata.
        return "unknown"


def env_default(value: Any) -> str:
    """A default as it would be written in the environment."""
    if value is None:
        return "unset"
    if isinstance(value, tuple | list) and all(isinstance(v, str) for v in value):
        return ",".join(value) or '""'  # comma-separated lists (namespaces)
    if isinstance(value, tuple | list | dict):
        return json.dumps(value, separators=(",", ":"))  # JSON-valued settings
    return str(value) if value != "" else '""'


def settings_epilog(settings: type[BaseModel]) -> str:
    lines = ["environment (every setting; empty or unset means the default):"]
    for name, field in settings.model_fields.items():
        default = env_default(field.default)
        lines.append(f"  {env_name(name)}  (default: {default})")
        lines.append(
            textwrap.fill(
                field.description or "", WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
        )
    return "\n".join(lines)


def parse_args(
    prog: str, description: str, settings: type[BaseModel], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.fill(description, WIDTH),
        epilog=settings_epilog(settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return parser.parse_args(argv)

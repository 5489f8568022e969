"""Does a live object already carry every field we would write? (Skip no-op applies.)"""

from __future__ import annotations

from typing import Any


def is_subset(desired: Any, live: Any) -> bool:
    if isinstance(desired, dict):
        # The API server drops empty maps and lists: a missing key matches an empty one.
        return isinstance(live, dict) and all(
            is_subset(v, live[k]) if k in live else v in ({}, []) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, x) for d, x in zip(desired, live, strict=True))
        )
    if isinstance(desired, int | float) and isinstance(live, str):
        return str(desired) == live
    return bool(desired == live)

"""Write or check the generated dashboard and alert rules (see the package docstring)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from loraplane import generated
from loraplane.dashboards import alerts, dashboard

PROG = "python -m loraplane.dashboards"


def files() -> dict[str, str]:
    """File name -> text of everything generated into the chart's files/."""
    return {"dashboard.json": dashboard.render_json(), "alerts.yaml": alerts.render_yaml()}


def write(out_dir: Path) -> list[Path]:
    return generated.write({out_dir / name: text for name, text in files().items()})


def diff(out_dir: Path) -> str:
    """A unified diff from what is in `out_dir` to what the code generates ('' if none)."""
    return generated.diff({out_dir / name: text for name, text in files().items()})


def main(argv: Sequence[str] | None = None) -> int:
    return generated.out_or_check(
        PROG, __doc__, "dashboard.json and alerts.yaml", write, diff, argv
    )


if __name__ == "__main__":
    sys.exit(main())

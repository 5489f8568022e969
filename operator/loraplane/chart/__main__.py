"""`python -m loraplane.chart`: write the chart's generated files, or check them (--check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loraplane.chart.render import generated
from loraplane.generated import diff, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraplane.chart", description=__doc__)
    parser.add_argument("--chart", type=Path, default=Path("charts/loraplane"))
    parser.add_argument("--crds", type=Path, default=Path("crds"))
    parser.add_argument(
        "--gie-crds",
        type=Path,
        required=True,
        help="the Inference Extension's CRDs (GIE_CRDS of hack/build-tools.sh --print-env)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff when stale")
    args = parser.parse_args(argv)
    files = generated(args.chart, args.crds, args.gie_crds)
    if not args.check:
        for path in write(files):
            print(f"wrote {path}")
        return 0
    stale = diff(files)
    if stale:
        sys.stdout.write(stale)
        print("generated chart files are stale: run `make chart`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

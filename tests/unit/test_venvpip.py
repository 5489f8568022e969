"""hack/venvpip.py and hack/venv.sh --print-install: where make venv gets the CPU torch, and the
pip commands it runs for each choice (PyTorch's CPU index, a WHEELS folder, another index)."""

from __future__ import annotations

import os
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
from venvpip import (
    PYTORCH_CPU_INDEX,
    TORCH_BUILD,
    TORCH_VERSION,
    SourceError,
    check,
    project_args,
    torch_args,
    torch_source,
)

from tests.conftest import REPO

WHEEL = f"torch-{TORCH_BUILD}-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / WHEEL).write_bytes(b"")
    return folder


def test_no_override_takes_torch_from_pytorchs_cpu_index_and_the_rest_from_pypi() -> None:
    for env in ({}, {"WHEELS": "", "TORCH_INDEX_URL": " "}):
        source = torch_source(env)
        check(source)  # nothing to look at: an index is not probed
        assert torch_args(source) == [
            "install",
            "-q",
            "--index-url",
            PYTORCH_CPU_INDEX,
            f"torch=={TORCH_BUILD}",
        ]
        assert project_args(source, "/src") == ["install", "-q", "-e", "/src[test,vllm]"]
    assert PYTORCH_CPU_INDEX == "https://download.pytorch.org/whl/cpu"


def test_a_wheels_folder_is_found_links_and_changes_no_index(wheels: Path) -> None:
    source = torch_source({"WHEELS": str(wheels), "TORCH_INDEX_URL": "https://ignored.example"})
    check(source)
    args = torch_args(source)
    assert args == ["install", "-q", "--find-links", str(wheels), f"torch=={TORCH_BUILD}"]
    project = project_args(source, "/src")
    assert project == ["install", "-q", "--find-links", str(wheels), "-e", "/src[test,vllm]"]
    for pip in (args, project):
        assert not any("index" in a for a in pip)


def test_an_index_override(wheels: Path) -> None:
    source = torch_source({"TORCH_INDEX_URL": "https://mirror.example/pytorch/whl/cpu"})
    check(source)
    assert torch_args(source)[2:] == [
        "--index-url",
        "https://mirror.example/pytorch/whl/cpu",
        f"torch=={TORCH_BUILD}",
    ]
    # The project and the rest of its dependencies come from PyPI, whatever served torch.
    assert project_args(source, "/src") == ["install", "-q", "-e", "/src[test,vllm]"]
    assert "TORCH_INDEX_URL" in source.describe()


def test_a_wheels_folder_without_the_wheel_says_so(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"missing the CPU torch wheel .* not on PyPI"):
        check(torch_source({"WHEELS": str(tmp_path)}))
    with pytest.raises(SourceError, match="is not a folder"):
        check(torch_source({"WHEELS": str(tmp_path / "absent")}))


def test_the_torch_pin_is_pyprojects() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert f"torch=={TORCH_VERSION}" in pyproject["project"]["optional-dependencies"]["vllm"]
    assert f"{TORCH_VERSION}+cpu" == TORCH_BUILD


def print_install(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"WHEELS", "TORCH_INDEX_URL"}}
    return subprocess.run(
        ["bash", str(REPO / "hack" / "venv.sh"), "--print-install", "/v", "/src"],
        capture_output=True,
        text=True,
        env={**clean, **env},
    )


def commands(proc: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if not line.startswith("#")]


def test_venv_sh_print_install_runs_what_venvpip_builds(wheels: Path) -> None:
    pip = ["/v/bin/python", "-m", "pip"]
    uninstall = [*pip, "uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"]
    default = print_install()
    assert commands(default) == [
        [*pip, *torch_args(torch_source({}))],
        [*pip, "install", "-q", "-e", "/src[test,vllm]"],
        uninstall,
    ]
    assert "PyTorch's CPU index" in default.stdout

    local = commands(print_install(WHEELS=str(wheels)))
    assert local[0] == [*pip, "install", "-q", "--find-links", str(wheels), f"torch=={TORCH_BUILD}"]
    assert local[2] == uninstall

    index = commands(print_install(TORCH_INDEX_URL="https://mirror.example/cpu"))
    assert index[0][4:7] == ["-q", "--index-url", "https://mirror.example/cpu"]

    missing = print_install(WHEELS=str(wheels.parent))
    assert missing.returncode == 1 and "not on PyPI" in missing.stderr


def test_no_default_points_at_a_folder_beside_the_checkout() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "WHEELS ?=\n" in makefile
    for path in ("Makefile", "hack/venv.sh", "README.md"):
        assert "../shared" not in (REPO / path).read_text(), path

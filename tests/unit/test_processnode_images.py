"""The process node's image table (hack/processnode/images.py): which local command runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from processnode.images import BinaryMissing, ImageNotMapped, resolve
from tests.conftest import REPO

VENV = "/venv"
CHECKOUT = "/src/loraplane"


@pytest.mark.parametrize(
    "image", ["loraplane/fakevllm:bench", "ghcr.io/loraplane/fakevllm:0.1", "fakevllm"]
)
def test_fakevllm_runs_the_fake_before_the_vllm_and_loraplane_rows(image: str) -> None:
    args = ["--model", "/models/m", "--served-model-name", "m", "--enable-lora"]
    local = resolve(image, ["ignored"], args, VENV, CHECKOUT, pod_ip="10.0.0.3")
    assert local.argv == [f"{VENV}/bin/python", "-m", "fakevllm", *args]
    assert local.env_defaults == {"PYTHONUNBUFFERED": "1"}
    assert local.env_prepend == {"PYTHONPATH": f"{CHECKOUT}/hack"}


def test_fakevllm_takes_vllm_serve_style_args() -> None:
    local = resolve("loraplane/fakevllm:bench", [], ["serve", "org/m", "--port", "8000"], VENV, "")
    assert local.argv[3:] == ["--model", "org/m", "--port", "8000"]
    local = resolve("loraplane/fakevllm:bench", [], ["org/m"], VENV, "")
    assert local.argv[3:] == ["--model", "org/m"]


def test_vllm_and_loraplane_rows_are_unchanged() -> None:
    local = resolve("vllm/vllm-openai:v0.32.0", [], ["serve", "org/m"], VENV, CHECKOUT, "10.0.0.4")
    assert local.argv == [
        f"{VENV}/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "org/m",
    ]
    assert local.env_defaults["HF_HUB_OFFLINE"] == "1"
    local = resolve("loraplane/loraplane:dev", ["/bin/true"], [], VENV, CHECKOUT)
    assert local.argv == ["/bin/true"]
    assert local.env_prepend == {"PYTHONPATH": f"{CHECKOUT}/operator"}
    with pytest.raises(ImageNotMapped, match="fakevllm") as refused:
        resolve("busybox", [], [], VENV, CHECKOUT)
    assert "envoyproxy/envoy" in str(refused.value)
    assert "gateway-api-inference-extension/epp" in str(refused.value)


def _version(checkout: Path, key: str) -> str:
    for line in (checkout / "hack" / "versions.env").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"no {key} in versions.env")


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    """A node's home (HOME/venv the venv) with the EPP and Envoy binaries, and the checkout."""
    home = tmp_path / "home"
    epp = home / "bin" / f"epp-{_version(REPO, 'GIE_VERSION')}" / "epp"
    envoy = home / "venv" / "lib" / "python3.11" / "site-packages" / "envoy" / "_bin" / "envoy"
    for binary in (epp, envoy):
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return home, REPO


def test_epp_image_runs_the_built_epp_with_the_containers_args(node: tuple[Path, Path]) -> None:
    home, checkout = node
    epp = str(home / "bin" / f"epp-{_version(checkout, 'GIE_VERSION')}" / "epp")
    image = "registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0"
    args = ["--pool-name", "tiny", "--secure-serving=false"]
    local = resolve(image, [], args, str(home / "venv"), str(checkout))
    assert local.argv == [epp, *args]
    assert local.env_defaults == {} and local.env_prepend == {}
    # The image's entrypoint named as a command is the same binary; another command is refused.
    assert resolve(image, ["/epp"], args, str(home / "venv"), str(checkout)).argv == [epp, *args]
    with pytest.raises(ImageNotMapped, match="/bin/sh"):
        resolve(image, ["/bin/sh", "-c", "epp"], [], str(home / "venv"), str(checkout))
    # A node whose venv is elsewhere names its home.
    moved = resolve(image, [], args, "/elsewhere/venv", str(checkout), home=str(home))
    assert moved.argv == [epp, *args]


def test_envoy_image_runs_the_venvs_envoy(node: tuple[Path, Path]) -> None:
    home, checkout = node
    venv = str(home / "venv")
    envoy = f"{venv}/lib/python3.11/site-packages/envoy/_bin/envoy"
    for image in ("docker.io/envoyproxy/envoy:distroless-v1.40.0", "envoyproxy/envoy:v1.40-latest"):
        args = ["-c", "/etc/loraplane-router/envoy.yaml", "--concurrency", "1"]
        assert resolve(image, [], args, venv, str(checkout)).argv == [envoy, *args]
        # GIE's chart: command "envoy" plus args.
        assert resolve(image, ["envoy"], args, venv, str(checkout)).argv == [envoy, *args]
        # No args: the image's CMD.
        assert resolve(image, [], [], venv, str(checkout)).argv == [
            envoy,
            "-c",
            "/etc/envoy/envoy.yaml",
        ]


def test_a_missing_binary_says_what_builds_it(tmp_path: Path) -> None:
    venv = str(tmp_path / "venv")
    with pytest.raises(BinaryMissing, match=r"hack/build-tools\.sh --epp"):
        resolve(
            "registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0", [], [], venv, str(REPO)
        )
    with pytest.raises(BinaryMissing, match="make venv"):
        resolve("envoyproxy/envoy:distroless-v1.40.0", [], [], venv, str(REPO))
    # The runner shows both as ImageNotMapped, retried until the binary is there.
    assert issubclass(BinaryMissing, ImageNotMapped)


ROUTER_IMAGE = "ghcr.io/loraplane/router:0.1.0"


def test_router_image_runs_the_binary_its_command_names(node: tuple[Path, Path]) -> None:
    """images/router holds both binaries and no ENTRYPOINT: the command picks one."""
    home, checkout = node
    venv = str(home / "venv")
    epp = str(home / "bin" / f"epp-{_version(checkout, 'GIE_VERSION')}" / "epp")
    envoy = f"{venv}/lib/python3.11/site-packages/envoy/_bin/envoy"
    epp_args = ["--pool-name", "tiny", "--secure-serving=false"]
    envoy_args = ["-c", "/etc/loraplane-router/envoy.yaml", "--concurrency", "1"]
    for image in (ROUTER_IMAGE, "ghcr.io/loraplane/router:vllm-0.32", "ghcr.io/loraplane/router"):
        assert resolve(image, ["epp"], epp_args, venv, str(checkout)).argv == [epp, *epp_args]
        assert resolve(image, ["envoy"], envoy_args, venv, str(checkout)).argv == [
            envoy,
            *envoy_args,
        ]
    # By name, wherever the image puts them; words after the command stay before the args.
    path_epp = resolve(ROUTER_IMAGE, ["/usr/local/bin/epp", "-v=2"], epp_args, venv, str(checkout))
    assert path_epp.argv == [epp, "-v=2", *epp_args]
    # No ENTRYPOINT: what a runtime would not run either.
    with pytest.raises(ImageNotMapped, match="has none"):
        resolve(ROUTER_IMAGE, [], envoy_args, venv, str(checkout))
    with pytest.raises(ImageNotMapped, match="'python3' is neither"):
        resolve(ROUTER_IMAGE, ["python3"], [], venv, str(checkout))
    # A node whose venv is elsewhere names its home, as for the EPP image.
    moved = resolve(
        ROUTER_IMAGE, ["epp"], epp_args, "/elsewhere/venv", str(checkout), home=str(home)
    )
    assert moved.argv == [epp, *epp_args]


def test_router_row_is_the_repository_only(node: tuple[Path, Path]) -> None:
    home, checkout = node
    # Another repository that shares the prefix is not the router image.
    with pytest.raises(ImageNotMapped, match="has no local command"):
        resolve("ghcr.io/loraplane/router-extras:1", ["epp"], [], str(home / "venv"), str(checkout))
    digest = "ghcr.io/loraplane/router@sha256:" + "0" * 64
    local = resolve(digest, ["envoy"], ["--version"], str(home / "venv"), str(checkout))
    assert local.argv[1:] == ["--version"]


def test_router_image_says_what_builds_a_missing_binary(tmp_path: Path) -> None:
    venv = str(tmp_path / "venv")
    with pytest.raises(BinaryMissing, match=r"hack/build-tools\.sh --epp"):
        resolve(ROUTER_IMAGE, ["epp"], [], venv, str(REPO))
    with pytest.raises(BinaryMissing, match="make venv"):
        resolve(ROUTER_IMAGE, ["envoy"], [], venv, str(REPO))


@pytest.mark.parametrize("python", ["python3", "python", "/usr/bin/python3"])
def test_vllm_image_runs_its_python_when_the_command_names_it(python: str) -> None:
    """The merge init container of a merged base model runs the vLLM image's Python."""
    args = ["--inputs", "{}", "--model", "/models/m"]
    local = resolve(
        "vllm/vllm-openai:v0.32.0", [python, "-m", "loraplane.merge"], args, VENV, CHECKOUT
    )
    assert local.argv == [f"{VENV}/bin/python", "-m", "loraplane.merge", *args]
    assert local.env_prepend == {"PYTHONPATH": f"{CHECKOUT}/operator"}
    assert local.env_defaults == {"PYTHONUNBUFFERED": "1"}

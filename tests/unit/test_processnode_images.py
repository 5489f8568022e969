"""The process node's image table (hack/processnode/images.py): which local command runs."""

from __future__ import annotations

import pytest

from processnode.images import ImageNotMapped, resolve

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
    with pytest.raises(ImageNotMapped, match="fakevllm"):
        resolve("busybox", [], [], VENV, CHECKOUT)

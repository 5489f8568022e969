"""`make demo-fixtures`: the demo builds exactly the adapters examples/tiny/ serves, and building
fixtures prints only its own progress (no peft or transformers warnings)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.support.adapters import DEMO, SPECS, build_adapter
from tests.support.tinymodel import ensure_tiny_model


def test_demo_fixtures_are_the_adapter_sources_of_the_tiny_example() -> None:
    docs = list(yaml.safe_load_all((REPO / "examples/tiny/adapters.yaml").read_text()))
    sources = {d["spec"]["source"]["path"] for d in docs if d and d["kind"] == "LoRAAdapter"}
    assert sources == {f"/adapter-sources/{name}" for name in DEMO}
    assert set(DEMO) <= set(SPECS)
    # The Makefile's demo builds these, not the whole set.
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: .*\bdemo-fixtures\b", makefile, re.M)
    assert not re.search(r"^demo: .*(?<![-\w])fixtures\b", makefile, re.M)


@pytest.mark.parametrize("name", ["lora-bias", "new-tokens", "embed-default"])
def test_building_a_fixture_prints_and_warns_nothing(
    name: str, loraplane_home: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("peft", reason="the fixtures need the vllm extra")
    model = ensure_tiny_model(loraplane_home)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_adapter(tmp_path, SPECS[name], model)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [str(w.message) for w in seen] == []
    assert (tmp_path / "adapter_model.safetensors").is_file()
    # Warnings raised outside a build are untouched.
    with pytest.warns(UserWarning, match="still heard"):
        warnings.warn("still heard", UserWarning, stacklevel=1)

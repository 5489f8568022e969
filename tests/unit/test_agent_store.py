"""The agent's store end to end through its protocol types: fetch, verify, prune."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from loraplane.agent.protocol import FetchRequest
from loraplane.agent.store import AdapterStore, Rejected
from loraplane.api import ModelSource
from tests.support import ensure_adapters


@pytest.fixture(scope="session")
def adapters() -> dict[str, Path]:
    return ensure_adapters()


def request(source: Path, name: str = "sql", rank: int = 16) -> FetchRequest:
    return FetchRequest(name=name, source=ModelSource(path=str(source)), max_lora_rank=rank)


def test_fetch_answers_the_verified_summary(adapters: dict[str, Path], tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, None)
    fetched = asyncio.run(store.fetch(request(adapters["rank8"])))
    assert fetched.summary.rank == 8 and fetched.summary.digest
    assert Path(fetched.path).parent == tmp_path / "sql"
    with pytest.raises(Rejected) as refused:
        asyncio.run(store.fetch(request(adapters["rank64"], name="big")))
    assert refused.value.reason == "RankExceedsMax"


def test_a_prune_killed_halfway_never_leaves_a_partial_version(
    adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent killed while deleting must not leave a directory under the version's name that
    a later fetch of the same digest serves to vLLM (which then dies on a missing file)."""
    store = AdapterStore(tmp_path, None)
    fetched = asyncio.run(store.fetch(request(adapters["rank8"])))
    version = Path(fetched.path)
    real_rmtree = shutil.rmtree

    def killed_midway(path: str | Path, *args: object, **kwargs: object) -> None:
        first = sorted(p for p in Path(path).iterdir() if not p.name.startswith("."))[0]
        first.unlink()
        raise KeyboardInterrupt("agent killed")

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        store.prune({})
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert not version.exists(), "a half-deleted directory kept the version's name"
    again = asyncio.run(store.fetch(request(adapters["rank8"])))
    assert again.path == fetched.path
    for rel in ("adapter_config.json", "adapter_model.safetensors"):
        assert (version / rel).is_file()
    # The next prune finishes what the killed one left behind.
    store.prune({"sql": version.name})
    assert sorted(p.name for p in (tmp_path / "sql").iterdir()) == [version.name]

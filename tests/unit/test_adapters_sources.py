"""The versioned store: ``<store>/<name>/<digest>/`` appears complete or not at all, is never
rewritten, and a repeated fetch is a no-op. Exercised with the path source on real adapters (the
Hugging Face source cannot reach a hub here; it shares install_directory with the path source)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from loraplane.adapters.inspect import AdapterConfigMissing, CorruptSafetensors, Inspection
from loraplane.adapters.sources import (
    SUMMARY_FILE,
    DigestMismatch,
    fetch_path,
    install_directory,
    remove_version,
    validate_name,
    version_dir,
)
from loraplane.vllm.errors import Reason
from tests.support import ensure_adapters


@pytest.fixture(scope="session")
def adapters() -> dict[str, Path]:
    return ensure_adapters()


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_fetch_lays_out_name_and_digest(adapters: dict[str, Path], tmp_path: Path) -> None:
    result = fetch_path(adapters["rank8"], tmp_path, "rank8")
    assert result.created
    target = Path(result.path)
    assert target == tmp_path / "rank8" / result.summary.digest_hex
    assert target == version_dir(tmp_path, "rank8", result.summary.digest)
    assert result.summary.path == str(target)
    assert entries(target) == sorted([*result.summary.files, SUMMARY_FILE])
    for rel in result.summary.files:
        assert (target / rel).read_bytes() == (adapters["rank8"] / rel).read_bytes()
    # No temporary directory is left behind.
    assert entries(tmp_path / "rank8") == [target.name]


def test_fetch_is_idempotent(adapters: dict[str, Path], tmp_path: Path) -> None:
    first = fetch_path(adapters["rank8"], tmp_path, "rank8")
    mtime = Path(first.path).stat().st_mtime_ns
    again = fetch_path(adapters["rank8"], tmp_path, "rank8")
    assert not again.created
    assert again.path == first.path and again.summary == first.summary
    assert Path(first.path).stat().st_mtime_ns == mtime


def test_existing_version_without_summary_is_reinspected(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    first = fetch_path(adapters["rank8"], tmp_path, "rank8")
    (Path(first.path) / SUMMARY_FILE).unlink()
    again = fetch_path(adapters["rank8"], tmp_path, "rank8")
    assert not again.created and again.summary.digest == first.summary.digest
    assert (Path(first.path) / SUMMARY_FILE).exists()


def test_new_revision_gets_a_new_directory_and_old_one_stays(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    v1 = fetch_path(adapters["rank8"], tmp_path, "chat")
    v2 = fetch_path(adapters["rank8-v2"], tmp_path, "chat")
    assert v1.path != v2.path
    assert sorted(entries(tmp_path / "chat")) == sorted(
        [v1.summary.digest_hex, v2.summary.digest_hex]
    )
    assert remove_version(tmp_path, "chat", v1.summary.digest)
    assert not remove_version(tmp_path, "chat", v1.summary.digest)
    assert entries(tmp_path / "chat") == [v2.summary.digest_hex]


def test_broken_adapter_leaves_nothing(adapters: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CorruptSafetensors):
        fetch_path(adapters["corrupt"], tmp_path, "corrupt")
    assert not (tmp_path / "corrupt").exists() or entries(tmp_path / "corrupt") == []


def test_a_file_inside_an_adapter_is_not_its_directory(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    config = adapters["rank8"] / "adapter_config.json"
    with pytest.raises(AdapterConfigMissing) as info:
        fetch_path(config, tmp_path, "rank8")
    assert info.value.message == (
        f"{config} is a file, not an adapter directory; did you mean its directory "
        f"{adapters['rank8']}?"
    )
    assert info.value.reason == Reason.ADAPTER_NOT_FOUND
    assert entries(tmp_path) == []


def test_a_lone_file_is_not_an_adapter_directory(tmp_path: Path) -> None:
    weights = tmp_path / "adapter.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(AdapterConfigMissing) as info:
        fetch_path(weights, tmp_path / "store", "lone")
    assert info.value.message == (
        f"{weights} is a file, not an adapter directory: give the directory that holds "
        "adapter_config.json"
    )


def test_verify_refusal_leaves_nothing(adapters: dict[str, Path], tmp_path: Path) -> None:
    class Refused(Exception):
        pass

    def verify(summary: Inspection) -> None:
        if summary.max_rank > 16:
            raise Refused(summary.max_rank)

    with pytest.raises(Refused):
        fetch_path(adapters["rank64"], tmp_path, "big", verify=verify)
    assert entries(tmp_path / "big") == []
    assert fetch_path(adapters["rank16"], tmp_path, "big", verify=verify).created


def test_source_changed_during_copy_is_refused(adapters: dict[str, Path], tmp_path: Path) -> None:
    staged = tmp_path / "store" / "a" / ".tmp-x"
    shutil.copytree(adapters["rank8"], staged)
    expected = fetch_path(adapters["rank8-v2"], tmp_path / "other", "a").summary.digest
    with pytest.raises(DigestMismatch, match="changed while copied"):
        install_directory(staged, tmp_path / "store", "a", expected_digest=expected)
    assert entries(tmp_path / "store" / "a") == []


def test_concurrent_fetches_of_one_version(adapters: dict[str, Path], tmp_path: Path) -> None:
    results = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(fetch_path(adapters["rank16"], tmp_path, "r16"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.path for r in results}) == 1
    assert sum(r.created for r in results) >= 1
    assert entries(tmp_path / "r16") == [results[0].summary.digest_hex]


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b", "A", "-a", "a" * 300])
def test_names_that_are_not_directory_names(name: str) -> None:
    with pytest.raises(ValueError):
        validate_name(name)


def test_digest_must_be_sha256(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        version_dir(tmp_path, "a", "sha256:../../etc")

"""The url source against a real HTTPS server (the standard library's, TLS from the test CA)."""

from __future__ import annotations

import hashlib
import shutil
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraplane.adapters.sources import (
    AdapterTooLarge,
    DigestMismatch,
    SourceContext,
    SourceNotFound,
    SourceUnreachable,
    fetch_source,
)
from loraplane.agent.protocol import FetchRequest
from loraplane.agent.store import AdapterStore, Rejected, VersionUnavailable
from loraplane.api import AdapterSource
from loraplane.vllm.errors import Reason
from tests.sources.conftest import leftovers, same_files, versions
from tests.support import tools
from tests.support.servers import LocalCA, Server, https_files


def tarball(directory: Path, out: Path, *, top: str | None = None) -> str:
    """A .tgz of `directory`'s files (under `top`/ when given); its sha256."""
    with tarfile.open(out, "w:gz") as tar:
        for f in sorted(directory.iterdir()):
            tar.add(f, arcname=f"{top}/{f.name}" if top else f.name)
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def site(
    adapters: dict[str, Path], ca: LocalCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path, dict[str, str]]]:
    root = tmp_path_factory.mktemp("site")
    sums = {
        "rank8.tgz": tarball(adapters["rank8"], root / "rank8.tgz"),
        "rank8-in-dir.tgz": tarball(adapters["rank8"], root / "rank8-in-dir.tgz", top="rank8"),
        "rank8-v2.tgz": tarball(adapters["rank8-v2"], root / "rank8-v2.tgz"),
        "new-tokens.tgz": tarball(adapters["new-tokens"], root / "new-tokens.tgz"),
    }
    shutil.copytree(adapters["rank8"], root / "rank8", ignore=shutil.ignore_patterns(".*"))
    # A small tarball that unpacks large: zeros compress a thousandfold.
    bomb = root / "bomb"
    shutil.copytree(adapters["rank8"], bomb, ignore=shutil.ignore_patterns(".*"))
    (bomb / "tokenizer.json").write_bytes(b"\0" * (4 << 20))
    sums["bomb.tgz"] = tarball(bomb, root / "bomb.tgz")
    with https_files(root, ca, truncate=frozenset({"/rank8-v2.tgz"})) as server:
        yield server, root, sums


def url_source(url: str, sha256: str) -> AdapterSource:
    return AdapterSource.model_validate({"url": {"url": url, "sha256": sha256}})


def test_a_tarball_stores_what_the_path_source_stores(
    site: tuple[Server, Path, dict[str, str]],
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    server, _, sums = site
    for name in ("rank8.tgz", "rank8-in-dir.tgz"):
        source = url_source(f"{server.url}/{name}", sums[name])
        result = fetch_source(source, tmp_path, "chat", context=context)
        assert result.summary.digest == reference["rank8"], name
        assert same_files(Path(result.path), adapters["rank8"])
    # Both tarballs hold the same files: one version.
    assert versions(tmp_path, "chat") == [reference["rank8"].removeprefix("sha256:")]


def test_tokenizer_files_come_along(
    site: tuple[Server, Path, dict[str, str]],
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    server, _, sums = site
    source = url_source(f"{server.url}/new-tokens.tgz", sums["new-tokens.tgz"])
    result = fetch_source(source, tmp_path, "tok", context=context)
    assert result.summary.digest == reference["new-tokens"]
    assert same_files(Path(result.path), adapters["new-tokens"])


def test_a_directory_index_is_pinned_by_the_adapter_digest(
    site: tuple[Server, Path, dict[str, str]],
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    server, _, _ = site
    source = url_source(f"{server.url}/rank8/", reference["rank8"])
    result = fetch_source(source, tmp_path, "chat", context=context)
    assert result.summary.digest == reference["rank8"]
    assert same_files(Path(result.path), adapters["rank8"])
    again = fetch_source(source, tmp_path, "chat", context=context)
    assert not again.created
    wrong = url_source(f"{server.url}/rank8/", reference["rank8-v2"])
    with pytest.raises(DigestMismatch):
        fetch_source(wrong, tmp_path / "other", "chat", context=context)
    assert versions(tmp_path / "other", "chat") == []


def test_a_tampered_tarball_is_refused_before_it_is_unpacked(
    site: tuple[Server, Path, dict[str, str]], context: SourceContext, tmp_path: Path
) -> None:
    server, _, sums = site
    source = url_source(f"{server.url}/rank8.tgz", sums["rank8-v2.tgz"])
    with pytest.raises(DigestMismatch) as caught:
        fetch_source(source, tmp_path, "chat", context=context)
    assert caught.value.reason == Reason.DIGEST_MISMATCH
    assert leftovers(tmp_path, "chat") == []


def test_missing_file_is_not_found(
    site: tuple[Server, Path, dict[str, str]], context: SourceContext, tmp_path: Path
) -> None:
    server, _, _ = site
    source = url_source(f"{server.url}/nothing.tgz", "0" * 64)
    with pytest.raises(SourceNotFound) as caught:
        fetch_source(source, tmp_path, "chat", context=context)
    assert caught.value.reason == Reason.ADAPTER_NOT_FOUND


def test_too_large_before_and_while_unpacking(
    site: tuple[Server, Path, dict[str, str]], context: SourceContext, tmp_path: Path
) -> None:
    server, root, sums = site
    small = url_source(f"{server.url}/rank8.tgz", sums["rank8.tgz"])
    with pytest.raises(AdapterTooLarge, match="holds"):  # the announced length
        fetch_source(small, tmp_path, "chat", context=context, size_limit=1000)
    bomb = url_source(f"{server.url}/bomb.tgz", sums["bomb.tgz"])
    assert (root / "bomb.tgz").stat().st_size < 1 << 20
    with pytest.raises(AdapterTooLarge, match="exceeded") as caught:
        fetch_source(bomb, tmp_path, "bomb", context=context, size_limit=1 << 20)
    assert caught.value.reason == Reason.ADAPTER_TOO_LARGE
    assert leftovers(tmp_path, "chat") == leftovers(tmp_path, "bomb") == []


def test_a_download_that_breaks_off_leaves_nothing(
    site: tuple[Server, Path, dict[str, str]], context: SourceContext, tmp_path: Path
) -> None:
    server, _, sums = site
    source = url_source(f"{server.url}/rank8-v2.tgz", sums["rank8-v2.tgz"])
    with pytest.raises(SourceUnreachable, match="broke off"):
        fetch_source(source, tmp_path, "chat", context=context)
    assert leftovers(tmp_path, "chat") == []


def test_unreachable_and_untrusted_servers_are_transient(
    site: tuple[Server, Path, dict[str, str]], tmp_path: Path, context: SourceContext
) -> None:
    server, _, sums = site
    nobody = url_source(f"https://127.0.0.1:{tools.free_port()}/rank8.tgz", sums["rank8.tgz"])
    with pytest.raises(SourceUnreachable) as caught:
        fetch_source(nobody, tmp_path, "chat", context=context)
    assert caught.value.reason == Reason.SOURCE_UNREACHABLE
    # Without the test CA the server's certificate is not trusted: nothing is downloaded.
    untrusted = url_source(f"{server.url}/rank8.tgz", sums["rank8.tgz"])
    with pytest.raises(SourceUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_source(untrusted, tmp_path, "chat", context=SourceContext(timeout_seconds=5))


def test_a_new_pin_is_a_new_version(
    site: tuple[Server, Path, dict[str, str]],
    context: SourceContext,
    reference: dict[str, str],
    tmp_path: Path,
    ca: LocalCA,
    adapters: dict[str, Path],
) -> None:
    server, root, sums = site
    first = fetch_source(
        url_source(f"{server.url}/rank8.tgz", sums["rank8.tgz"]), tmp_path, "a", context=context
    )
    # rank8-v2.tgz breaks off on this server; the same bytes under another name do not.
    shutil.copy(root / "rank8-v2.tgz", root / "v2.tgz")
    second = fetch_source(
        url_source(f"{server.url}/v2.tgz", sums["rank8-v2.tgz"]), tmp_path, "a", context=context
    )
    assert first.summary.digest == reference["rank8"]
    assert second.summary.digest == reference["rank8-v2"]
    assert len(versions(tmp_path, "a")) == 2


async def test_the_agent_answers_each_failure_with_its_reason(
    site: tuple[Server, Path, dict[str, str]], context: SourceContext, tmp_path: Path
) -> None:
    """What the operator sees in the agent's answer: a refusal (Rejected) for a bad adapter, the
    version unavailable (VersionUnavailable) for a source that may come back."""
    server, _, sums = site
    store = AdapterStore(tmp_path, None, sources=context)

    def request(url: str, sha256: str, limit: int | None = None) -> FetchRequest:
        return FetchRequest(
            name="chat" if limit is None else "small",
            source=url_source(url, sha256),
            max_lora_rank=16,
            size_limit_bytes=limit,
        )

    good = await store.fetch(request(f"{server.url}/rank8.tgz", sums["rank8.tgz"]))
    assert good.summary.rank == 8
    cases = [
        (request(f"{server.url}/rank8.tgz", "0" * 64), Rejected, "DigestMismatch"),
        (request(f"{server.url}/gone.tgz", "0" * 64), Rejected, "AdapterNotFound"),
        (request(f"{server.url}/rank8.tgz", sums["rank8.tgz"], 100), Rejected, "AdapterTooLarge"),
        (
            request(f"https://127.0.0.1:{tools.free_port()}/a.tgz", "0" * 64),
            VersionUnavailable,
            "SourceUnreachable",
        ),
    ]
    for req, outcome, reason in cases:
        with pytest.raises(outcome) as caught:
            await store.fetch(req)
        assert caught.value.reason == reason, caught.value.message


def test_a_server_that_never_answers_times_out(
    site: tuple[Server, Path, dict[str, str]], ca: LocalCA, tmp_path: Path
) -> None:
    """Connected, then silence (a hung server, a black-holing proxy): the timeout ends it."""
    _, _, sums = site
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel completes the connection; nobody ever reads or writes
        port = silent.getsockname()[1]
        source = url_source(f"https://127.0.0.1:{port}/rank8.tgz", sums["rank8.tgz"])
        context = SourceContext(timeout_seconds=1, ca_file=ca.cert)
        started = time.monotonic()
        with pytest.raises(SourceUnreachable, match="timed out"):
            fetch_source(source, tmp_path, "chat", context=context)
        assert time.monotonic() - started < 10
    assert leftovers(tmp_path, "chat") == []

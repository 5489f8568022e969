"""The huggingface source against olah (a self-hosted hub-compatible server, from PyPI), offline,
serving git repositories laid out as the hub keeps them (weights in LFS), over TLS.

olah has no access control, so private repositories go through `private_hub`, a gate that
answers as the hub does for them (tests/support/servers.py says why it is the one fake here).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from loraplane.adapters.inspect import AdapterConfigMissing, inspect_adapter
from loraplane.adapters.sources import (
    AdapterTooLarge,
    DigestMismatch,
    SourceContext,
    SourceNotFound,
    SourceUnauthorized,
    fetch_source,
    inspect_huggingface,
)
from loraplane.adapters.sources.credentials import HuggingFaceCredentials
from loraplane.adapters.validate import BaseModelFacts, errors, validate
from loraplane.api import AdapterSource, HuggingFaceSource
from loraplane.config import Settings
from loraplane.fleet import Fleet
from loraplane.vllm.errors import Reason
from tests.sources.conftest import leftovers, same_files, versions
from tests.support.servers import Hub, LocalCA, olah, private_hub
from tests.unit.test_metrics import (
    FakeAgent,
    FakeRuntime,
    base_obj,
    fetched,
    lora_obj,
    pod_obj,
    run_register,
)
from tests.unit.test_metrics import context as metrics_context

TOKEN = "hf_loraplane_test_token"


@pytest.fixture
def hub(tmp_path: Path, ca: LocalCA) -> Iterator[Hub]:
    with olah(tmp_path / "hub", ca) as server:
        yield server


def hub_context(context: SourceContext, url: str) -> SourceContext:
    return SourceContext(
        timeout_seconds=context.timeout_seconds, ca_file=context.ca_file, huggingface_endpoint=url
    )


def hf(repo: str, revision: str = "main") -> AdapterSource:
    return AdapterSource.model_validate({"huggingface": {"repo": repo, "revision": revision}})


def token(value: str = TOKEN) -> HuggingFaceCredentials:
    return HuggingFaceCredentials(token=SecretStr(value))


def test_a_repository_stores_what_the_path_source_stores_and_nothing_else(
    hub: Hub,
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    hub.repo("team/tok").commit(adapters["new-tokens"], "v1")  # with tokenizer files
    ctx = hub_context(context, hub.url)
    result = fetch_source(hf("team/tok"), tmp_path / "store", "tok", context=ctx)
    assert result.summary.digest == reference["new-tokens"]
    # The repository's README stays on the hub.
    assert same_files(Path(result.path), adapters["new-tokens"])
    again = fetch_source(hf("team/tok"), tmp_path / "store", "tok", context=ctx)
    assert not again.created


def test_a_revision_is_resolved_to_its_commit_once(
    hub: Hub,
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    repo = hub.repo("team/chat")
    first_commit = repo.commit(adapters["rank8"], "v1")
    ctx = hub_context(context, hub.url)
    first = fetch_source(hf("team/chat"), tmp_path, "chat", context=ctx)
    repo.commit(adapters["rank8-v2"], "v2")  # main moves on
    moved = fetch_source(hf("team/chat"), tmp_path, "chat", context=ctx)
    pinned = fetch_source(hf("team/chat", first_commit), tmp_path, "chat", context=ctx)
    assert (first.summary.digest, moved.summary.digest) == (
        reference["rank8"],
        reference["rank8-v2"],
    )
    assert moved.created
    # The commit of the first fetch still names the first files: the same version, not fetched.
    assert pinned.path == first.path and not pinned.created
    assert len(versions(tmp_path, "chat")) == 2


def test_a_private_repository_needs_its_token(
    hub: Hub, ca: LocalCA, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    hub.repo("team/secret").commit(adapters["rank8"], "v1")
    with private_hub(hub, ca, TOKEN) as gate:
        ctx = hub_context(context, gate.url)
        ok = fetch_source(hf("team/secret"), tmp_path, "s", credentials=token(), context=ctx)
        assert ok.summary.rank == 8
        with pytest.raises(SourceUnauthorized) as wrong:
            fetch_source(
                hf("team/secret"), tmp_path, "t", credentials=token("hf_wrong"), context=ctx
            )
        assert wrong.value.reason == Reason.SOURCE_UNAUTHORIZED
        assert "hf_wrong" not in wrong.value.message and TOKEN not in wrong.value.message
        # Anonymous, the hub does not even say the repository exists.
        with pytest.raises(SourceNotFound, match="needs tokenSecretRef"):
            fetch_source(hf("team/secret"), tmp_path, "u", context=ctx)
    assert leftovers(tmp_path, "t") == leftovers(tmp_path, "u") == []


def test_a_missing_repository_or_revision_is_not_found(
    hub: Hub, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    hub.repo("team/chat").commit(adapters["rank8"], "v1")
    ctx = hub_context(context, hub.url)
    for source in (hf("team/nobody"), hf("team/chat", "no-such-branch")):
        with pytest.raises(SourceNotFound) as caught:
            fetch_source(source, tmp_path, "chat", context=ctx)
        assert caught.value.reason == Reason.ADAPTER_NOT_FOUND


def test_a_tampered_lfs_object_is_refused(
    hub: Hub, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    repo = hub.repo("team/chat")
    repo.commit(adapters["rank8"], "v1")
    objects = sorted((repo.path / ".git" / "lfs" / "objects").glob("*/*/*"))
    raw = bytearray(objects[0].read_bytes())
    raw[-1] ^= 0xFF
    objects[0].write_bytes(bytes(raw))
    with pytest.raises(DigestMismatch, match="the hub lists") as caught:
        fetch_source(hf("team/chat"), tmp_path, "chat", context=hub_context(context, hub.url))
    assert caught.value.reason == Reason.DIGEST_MISMATCH
    assert leftovers(tmp_path, "chat") == []


def test_too_large_is_refused_from_the_file_list(
    hub: Hub, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    hub.repo("team/chat").commit(adapters["rank8"], "v1")
    with pytest.raises(AdapterTooLarge) as caught:
        fetch_source(
            hf("team/chat"),
            tmp_path,
            "chat",
            context=hub_context(context, hub.url),
            size_limit=10_000,
        )
    assert caught.value.reason == Reason.ADAPTER_TOO_LARGE
    assert leftovers(tmp_path, "chat") == []


def test_the_central_preflight_reads_config_and_header_only(
    hub: Hub, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    """What the operator checks before any pod downloads: the same summary as the files give,
    and a rank above the base model's maxLoraRank refused."""
    ctx = hub_context(context, hub.url)
    hub.repo("team/chat").commit(adapters["rank8"], "v1")
    hub.repo("team/big").commit(adapters["rank64"], "v1")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no adapter here")
    hub.repo("team/empty").commit(empty, "v1")

    remote = inspect_huggingface(HuggingFaceSource(repo="team/chat"), None, ctx)
    local = inspect_adapter(adapters["rank8"])
    assert (remote.max_rank, remote.module_suffixes, remote.tensors) == (
        local.max_rank,
        local.module_suffixes,
        local.tensors,
    )
    assert remote.size_bytes == local.size_bytes
    big = inspect_huggingface(HuggingFaceSource(repo="team/big"), None, ctx)
    found = errors(validate(big, BaseModelFacts(max_lora_rank=16, deployment="tiny")))
    assert [f.reason for f in found] == [Reason.RANK_EXCEEDS_MAX]
    with pytest.raises(AdapterConfigMissing):
        inspect_huggingface(HuggingFaceSource(repo="team/empty"), None, ctx)
    shutil.rmtree(empty)


def test_the_operator_refuses_a_bad_adapter_before_any_pod_downloads(
    hub: Hub, ca: LocalCA, adapters: dict[str, Path]
) -> None:
    """The pre-flight wired into the per-pod sync: a rank the base model cannot serve is a
    verdict on the adapter before the agent is asked for anything; a good one goes on to it."""
    hub.repo("team/big").commit(adapters["rank64"], "v1")
    hub.repo("team/chat").commit(adapters["rank8"], "v1")
    fleet = Fleet()
    fleet.observe_base(base_obj("hf"))
    fleet.observe_pod(pod_obj("hf", "p0"))
    fleet.observe_adapter(lora_obj("hf", "big", source={"huggingface": {"repo": "team/big"}}))
    fleet.observe_adapter(lora_obj("hf", "chat", source={"huggingface": {"repo": "team/chat"}}))
    settings = Settings(huggingface_endpoint=hub.url, source_ca_file=ca.cert)
    rt = FakeRuntime(fleet, settings=settings)

    agent = FakeAgent(fetched("chat"))
    for name in ("big", "chat"):
        pc = metrics_context(fleet, "p0", agent=agent)
        run_register(rt, pc, name)
    failure = fleet.failure(("hf", "big"))
    assert failure is not None and failure.reason == Reason.RANK_EXCEEDS_MAX
    assert {item.name for request in agent.requests for item in request.adapters} == {"chat"}

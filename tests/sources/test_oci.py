"""The oci source against the CNCF distribution registry (built from its Go module), with
htpasswd auth over TLS, and adapters pushed by the oras CLI as users push them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from loraplane.adapters.sources import (
    AdapterTooLarge,
    DigestMismatch,
    SourceContext,
    SourceNotFound,
    SourceUnauthorized,
    fetch_source,
)
from loraplane.adapters.sources.credentials import RegistryCredentials
from loraplane.api import AdapterSource
from loraplane.vllm.errors import Reason
from tests.sources.conftest import leftovers, same_files, versions
from tests.support import tools
from tests.support.servers import LocalCA, Registry, oras_push, registry


@pytest.fixture
def reg(tmp_path: Path, ca: LocalCA) -> Iterator[Registry]:
    """A registry of each test's own: starting one takes a fraction of a second."""
    with registry(tmp_path / "registry", ca) as r:
        yield r


def oci(reference: str) -> AdapterSource:
    return AdapterSource.model_validate({"oci": {"reference": reference}})


def login(reg: Registry, password: str | None = None) -> RegistryCredentials:
    return RegistryCredentials(username=reg.username, password=SecretStr(password or reg.password))


def test_a_pushed_artifact_stores_what_the_path_source_stores(
    reg: Registry,
    ca: LocalCA,
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    manifest = oras_push(reg, f"{reg.host}/team/chat:v1", adapters["rank8"], ca)
    store = tmp_path / "store"
    by_tag = fetch_source(
        oci(f"{reg.host}/team/chat:v1"), store, "chat", credentials=login(reg), context=context
    )
    assert by_tag.summary.digest == reference["rank8"]
    assert same_files(Path(by_tag.path), adapters["rank8"])
    by_digest = fetch_source(
        oci(f"{reg.host}/team/chat@{manifest}"),
        store,
        "chat",
        credentials=login(reg),
        context=context,
    )
    assert by_digest.path == by_tag.path
    assert not by_digest.created


def test_a_pushed_directory_is_unpacked(
    reg: Registry,
    ca: LocalCA,
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    """`oras push ref adapter-dir/` makes one tar+gzip layer marked for unpacking."""
    work = tmp_path / "push"
    shutil.copytree(
        adapters["new-tokens"], work / "my-adapter", ignore=shutil.ignore_patterns(".*")
    )
    subprocess.run(
        [
            str(tools.oras()),
            "push",
            "--ca-file",
            str(ca.cert),
            "--username",
            reg.username,
            "--password-stdin",
            f"{reg.host}/team/tok:v1",
            "my-adapter/",
        ],
        cwd=work,
        input=reg.password,
        text=True,
        check=True,
        capture_output=True,
    )
    result = fetch_source(
        oci(f"{reg.host}/team/tok:v1"),
        tmp_path / "s",
        "tok",
        credentials=login(reg),
        context=context,
    )
    assert result.summary.digest == reference["new-tokens"]


def test_wrong_or_missing_credentials_are_unauthorized(
    reg: Registry, ca: LocalCA, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    oras_push(reg, f"{reg.host}/team/chat:v1", adapters["rank8"], ca)
    source = oci(f"{reg.host}/team/chat:v1")
    for credentials in (login(reg, "not-the-password"), None):
        with pytest.raises(SourceUnauthorized) as caught:
            fetch_source(source, tmp_path, "chat", credentials=credentials, context=context)
        assert caught.value.reason == Reason.SOURCE_UNAUTHORIZED
        assert reg.password not in caught.value.message
    assert leftovers(tmp_path, "chat") == []


def test_a_missing_tag_or_repository_is_not_found(
    reg: Registry, ca: LocalCA, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    oras_push(reg, f"{reg.host}/team/chat:v1", adapters["rank8"], ca)
    for ref in (f"{reg.host}/team/chat:v9", f"{reg.host}/team/nobody:v1"):
        with pytest.raises(SourceNotFound, match=r"MANIFEST_UNKNOWN|NAME_UNKNOWN") as caught:
            fetch_source(oci(ref), tmp_path, "chat", credentials=login(reg), context=context)
        assert caught.value.reason == Reason.ADAPTER_NOT_FOUND


def test_a_tampered_blob_is_refused(
    reg: Registry, ca: LocalCA, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    oras_push(reg, f"{reg.host}/team/chat:v1", adapters["rank8"], ca)
    # The registry serves what its storage holds without checking it: change one layer's bytes.
    manifests = sorted(reg.storage.glob("docker/registry/v2/blobs/sha256/*/*/data"))
    layer = next(
        json.loads(m.read_bytes())["layers"][0]["digest"]
        for m in manifests
        if m.stat().st_size < 4096 and b'"layers"' in m.read_bytes()
    )
    data = reg.blob_path(layer)
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatch, match="the manifest names") as caught:
        fetch_source(
            oci(f"{reg.host}/team/chat:v1"),
            tmp_path,
            "chat",
            credentials=login(reg),
            context=context,
        )
    assert caught.value.reason == Reason.DIGEST_MISMATCH
    assert leftovers(tmp_path, "chat") == []


def test_too_large_is_refused_from_the_manifest(
    reg: Registry, ca: LocalCA, context: SourceContext, adapters: dict[str, Path], tmp_path: Path
) -> None:
    oras_push(reg, f"{reg.host}/team/chat:v1", adapters["rank8"], ca)
    with pytest.raises(AdapterTooLarge) as caught:
        fetch_source(
            oci(f"{reg.host}/team/chat:v1"),
            tmp_path,
            "chat",
            credentials=login(reg),
            context=context,
            size_limit=10_000,
        )
    assert caught.value.reason == Reason.ADAPTER_TOO_LARGE
    assert leftovers(tmp_path, "chat") == []


def test_a_moved_tag_is_a_new_version(
    reg: Registry,
    ca: LocalCA,
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    source = oci(f"{reg.host}/team/chat:latest")
    oras_push(reg, f"{reg.host}/team/chat:latest", adapters["rank8"], ca)
    first = fetch_source(source, tmp_path, "chat", credentials=login(reg), context=context)
    oras_push(reg, f"{reg.host}/team/chat:latest", adapters["rank8-v2"], ca)
    second = fetch_source(source, tmp_path, "chat", credentials=login(reg), context=context)
    assert (first.summary.digest, second.summary.digest) == (
        reference["rank8"],
        reference["rank8-v2"],
    )
    assert second.created
    # The first version stays where it was: vLLM may still read it.
    assert sorted(versions(tmp_path, "chat")) == sorted(
        d.removeprefix("sha256:") for d in (reference["rank8"], reference["rank8-v2"])
    )

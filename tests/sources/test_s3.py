"""The s3 source against versitygw (an S3 gateway built from its Go module) over TLS, its posix
backend keeping the objects in a directory; objects are uploaded through its S3 API."""

from __future__ import annotations

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
from loraplane.adapters.sources.credentials import S3Credentials
from loraplane.api import AdapterSource
from loraplane.vllm.errors import Reason
from tests.sources.conftest import leftovers, same_files, versions
from tests.support.servers import LocalCA, S3Server, versitygw

ACCESS_KEY = "LORAPLANETESTKEY"
SECRET_KEY = "loraplane-test-secret-key-0123456789"


@pytest.fixture
def s3(tmp_path: Path, ca: LocalCA, adapters: dict[str, Path]) -> Iterator[S3Server]:
    with versitygw(tmp_path / "s3", ca, ACCESS_KEY, SECRET_KEY) as server:
        server.make_bucket("adapters")
        server.upload("adapters", "team/chat", adapters["rank8"])
        yield server


def s3_source(server: S3Server, uri: str) -> AdapterSource:
    return AdapterSource.model_validate({"s3": {"uri": uri, "endpoint": server.url}})


def keys(access: str = ACCESS_KEY, secret: str = SECRET_KEY) -> S3Credentials:
    return S3Credentials(access_key_id=SecretStr(access), secret_access_key=SecretStr(secret))


def test_objects_under_a_prefix_store_what_the_path_source_stores(
    s3: S3Server,
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    for uri in ("s3://adapters/team/chat", "s3://adapters/team/chat/"):
        result = fetch_source(
            s3_source(s3, uri), store, "chat", credentials=keys(), context=context
        )
        assert result.summary.digest == reference["rank8"]
        assert same_files(Path(result.path), adapters["rank8"])
    assert len(versions(store, "chat")) == 1


def test_wrong_keys_are_unauthorized(s3: S3Server, context: SourceContext, tmp_path: Path) -> None:
    source = s3_source(s3, "s3://adapters/team/chat")
    for credentials, code in (
        (keys(secret="not-the-secret"), "SignatureDoesNotMatch"),
        (keys(access="NOBODY"), ""),  # AWS says InvalidAccessKeyId, versitygw its own code
        (None, "AccessDenied"),
    ):
        with pytest.raises(SourceUnauthorized) as caught:
            fetch_source(source, tmp_path, "chat", credentials=credentials, context=context)
        assert caught.value.reason == Reason.SOURCE_UNAUTHORIZED
        assert code in caught.value.message, caught.value.message
        assert SECRET_KEY not in caught.value.message
    assert leftovers(tmp_path, "chat") == []


def test_a_missing_prefix_or_bucket_is_not_found(
    s3: S3Server, context: SourceContext, tmp_path: Path
) -> None:
    for uri in ("s3://adapters/team/nothing", "s3://no-such-bucket/team/chat"):
        with pytest.raises(SourceNotFound) as caught:
            fetch_source(s3_source(s3, uri), tmp_path, "chat", credentials=keys(), context=context)
        assert caught.value.reason == Reason.ADAPTER_NOT_FOUND


def test_a_tampered_object_is_refused_by_its_etag(
    s3: S3Server, context: SourceContext, tmp_path: Path
) -> None:
    # Bytes changed behind the server's back (bit rot, a bad disk): its ETag still names the
    # uploaded content.
    stored = s3.root / "adapters" / "team" / "chat" / "adapter_model.safetensors"
    raw = bytearray(stored.read_bytes())
    raw[-1] ^= 0xFF
    stored.write_bytes(bytes(raw))
    source = s3_source(s3, "s3://adapters/team/chat")
    with pytest.raises(DigestMismatch, match="ETag") as caught:
        fetch_source(source, tmp_path, "chat", credentials=keys(), context=context)
    assert caught.value.reason == Reason.DIGEST_MISMATCH
    assert leftovers(tmp_path, "chat") == []


def test_too_large_is_refused_from_the_listing(
    s3: S3Server, context: SourceContext, tmp_path: Path
) -> None:
    source = s3_source(s3, "s3://adapters/team/chat")
    with pytest.raises(AdapterTooLarge) as caught:
        fetch_source(
            source, tmp_path, "chat", credentials=keys(), context=context, size_limit=10_000
        )
    assert caught.value.reason == Reason.ADAPTER_TOO_LARGE
    assert leftovers(tmp_path, "chat") == []


def test_changed_objects_are_a_new_version(
    s3: S3Server,
    context: SourceContext,
    adapters: dict[str, Path],
    reference: dict[str, str],
    tmp_path: Path,
) -> None:
    source = s3_source(s3, "s3://adapters/team/chat")
    first = fetch_source(source, tmp_path, "chat", credentials=keys(), context=context)
    again = fetch_source(source, tmp_path, "chat", credentials=keys(), context=context)
    assert not again.created
    s3.upload("adapters", "team/chat", adapters["rank8-v2"])
    second = fetch_source(source, tmp_path, "chat", credentials=keys(), context=context)
    assert (first.summary.digest, second.summary.digest) == (
        reference["rank8"],
        reference["rank8-v2"],
    )
    assert len(versions(tmp_path, "chat")) == 2

"""Credentials of each source kind: read from the Secrets the source names, carried to the agent
in the fetch request's JSON, and shown nowhere else (repr, str, logs)."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from loraplane.adapters.sources.credentials import (
    HuggingFaceCredentials,
    MissingSecret,
    RegistryCredentials,
    S3Credentials,
    read_credentials,
)
from loraplane.adapters.sources.protocol import AdapterTooLarge, SizeBudget
from loraplane.agent.protocol import FetchRequest
from loraplane.api import AdapterSource
from loraplane.api.common import quantity_bytes

SECRETS = {
    ("ns", "hf", "token"): "hf_secret_token",
    ("ns", "s3", "AWS_ACCESS_KEY_ID"): "AKIAEXAMPLE",
    ("ns", "s3", "AWS_SECRET_ACCESS_KEY"): "s3-secret-key",
    ("ns", "s3-temp", "AWS_ACCESS_KEY_ID"): "ASIAEXAMPLE",
    ("ns", "s3-temp", "AWS_SECRET_ACCESS_KEY"): "s3-temp-secret",
    ("ns", "s3-temp", "AWS_SESSION_TOKEN"): "s3-session",
    ("ns", "pull", ".dockerconfigjson"): json.dumps(
        {
            "auths": {
                "other.example": {"username": "x", "password": "y"},
                "https://registry.example:5000": {
                    "auth": base64.b64encode(b"robot:registry-password").decode()
                },
            }
        }
    ),
}


async def read(namespace: str, name: str, key: str) -> str | None:
    return SECRETS.get((namespace, name, key))


def source(spec: dict[str, object]) -> AdapterSource:
    return AdapterSource.model_validate(spec)


async def test_each_kind_reads_its_own_secret() -> None:
    hf = await read_credentials(
        read,
        "ns",
        source({"huggingface": {"repo": "o/r", "tokenSecretRef": {"name": "hf", "key": "token"}}}),
    )
    assert isinstance(hf, HuggingFaceCredentials)
    assert hf.token.get_secret_value() == "hf_secret_token"
    s3 = await read_credentials(
        read, "ns", source({"s3": {"uri": "s3://bkt/p", "credentialsSecretRef": {"name": "s3"}}})
    )
    assert isinstance(s3, S3Credentials) and s3.session_token is None
    temp = await read_credentials(
        read,
        "ns",
        source({"s3": {"uri": "s3://bkt/p", "credentialsSecretRef": {"name": "s3-temp"}}}),
    )
    assert isinstance(temp, S3Credentials) and temp.session_token is not None
    oci = await read_credentials(
        read,
        "ns",
        source(
            {
                "oci": {
                    "reference": "registry.example:5000/t/a:v1",
                    "pullSecretRef": {"name": "pull"},
                }
            }
        ),
    )
    assert isinstance(oci, RegistryCredentials)
    assert (oci.username, oci.password.get_secret_value()) == ("robot", "registry-password")
    assert await read_credentials(read, "ns", source({"path": "/a"})) is None


async def test_a_missing_secret_or_key_says_which() -> None:
    with pytest.raises(MissingSecret, match="ns/gone"):
        await read_credentials(
            read,
            "ns",
            source({"s3": {"uri": "s3://bkt/p", "credentialsSecretRef": {"name": "gone"}}}),
        )
    with pytest.raises(MissingSecret, match=r"no username and password for registry r\.example"):
        await read_credentials(
            read,
            "ns",
            source({"oci": {"reference": "r.example/t/a:v1", "pullSecretRef": {"name": "pull"}}}),
        )


def test_secrets_travel_in_the_request_json_only(caplog: pytest.LogCaptureFixture) -> None:
    credentials = S3Credentials.model_validate(
        {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "s3-secret-key"}
    )
    request = FetchRequest(
        name="a",
        source=source({"s3": {"uri": "s3://bkt/p"}}),
        credentials=credentials,
        max_lora_rank=16,
    )
    wire = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["credentials"]["secretAccessKey"] == "s3-secret-key"
    assert FetchRequest.model_validate(wire).credentials == credentials
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("request %s / %r", request, request)
    for shown in (repr(request), str(request), caplog.text):
        assert "s3-secret-key" not in shown and "AKIAEXAMPLE" not in shown


@pytest.mark.parametrize(
    ("quantity", "size"),
    [("10Gi", 10 << 30), ("500M", 500_000_000), ("1.5Ki", 1536), ("1e3", 1000), ("100m", 1)],
)
def test_quantity_bytes(quantity: str, size: int) -> None:
    assert quantity_bytes(quantity) == size


def test_size_budget_refuses_before_and_during() -> None:
    budget = SizeBudget(100, "s3://bkt/p")
    budget.announce(100)
    with pytest.raises(AdapterTooLarge, match="holds 101 bytes"):
        budget.announce(101)
    budget.take(60)
    with pytest.raises(AdapterTooLarge, match="while downloading"):
        budget.take(41)

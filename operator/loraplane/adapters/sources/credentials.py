"""Credentials of the source kinds: read from Secrets by the operator, sent to the agent in its
fetch request, and nowhere else.

Values are `SecretStr`: repr, str and logging show ``**********``; only the JSON the operator
sends the agent (over the pod network, with the agent's token) carries them in clear.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from pydantic import Field, PlainSerializer, SecretStr

from loraplane.api.common import K8sModel
from loraplane.api.sources import AdapterSource

__all__ = [
    "HuggingFaceCredentials",
    "MissingSecret",
    "RegistryCredentials",
    "S3Credentials",
    "SourceCredentials",
    "read_credentials",
    "registry_host",
]

Secret = Annotated[
    SecretStr, PlainSerializer(lambda v: v.get_secret_value(), return_type=str, when_used="json")
]
# The Secret keys of S3 credentials: the names every AWS SDK and CLI reads from the environment.
S3_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
S3_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
S3_SESSION_TOKEN = "AWS_SESSION_TOKEN"
DOCKER_CONFIG_KEY = ".dockerconfigjson"


class HuggingFaceCredentials(K8sModel):
    kind: Literal["huggingface"] = "huggingface"
    token: Secret


class S3Credentials(K8sModel):
    kind: Literal["s3"] = "s3"
    access_key_id: Secret
    secret_access_key: Secret
    session_token: Secret | None = None


class RegistryCredentials(K8sModel):
    kind: Literal["oci"] = "oci"
    username: str
    password: Secret


SourceCredentials = Annotated[
    HuggingFaceCredentials | S3Credentials | RegistryCredentials, Field(discriminator="kind")
]
SecretReader = Callable[[str, str, str], Awaitable[str | None]]


class MissingSecret(Exception):
    """A Secret the source names, or a key it needs, does not exist (the message says which)."""


def registry_host(reference: str) -> str:
    """The registry part of an OCI reference: everything before the first '/'."""
    return reference.split("/", 1)[0]


def _docker_config_entry(raw: str, host: str, secret: str) -> RegistryCredentials:
    try:
        auths = json.loads(raw).get("auths") or {}
    except (ValueError, AttributeError) as exc:
        raise MissingSecret(f"Secret {secret}: {DOCKER_CONFIG_KEY} is not JSON") from exc
    for server, entry in auths.items():
        name = str(server).removeprefix("https://").removeprefix("http://").rstrip("/")
        if name.split("/", 1)[0] != host or not isinstance(entry, dict):
            continue
        username, password = entry.get("username"), entry.get("password")
        if (not username or not password) and entry.get("auth"):
            username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        if username and password:
            return RegistryCredentials(username=str(username), password=SecretStr(str(password)))
    raise MissingSecret(f"Secret {secret} holds no username and password for registry {host}")


async def read_credentials(
    read: SecretReader, namespace: str, source: AdapterSource
) -> SourceCredentials | None:
    """The credentials `source` names, read through `read(namespace, secret, key)`."""

    async def required(secret: str, key: str) -> str:
        value = await read(namespace, secret, key)
        if value is None:
            raise MissingSecret(f"Secret {namespace}/{secret} does not exist or has no key {key}")
        return value

    if source.huggingface is not None and source.huggingface.token_secret_ref is not None:
        ref = source.huggingface.token_secret_ref
        return HuggingFaceCredentials(token=SecretStr(await required(ref.name, ref.key)))
    if source.s3 is not None and source.s3.credentials_secret_ref is not None:
        name = source.s3.credentials_secret_ref.name
        session = await read(namespace, name, S3_SESSION_TOKEN)
        return S3Credentials(
            access_key_id=SecretStr(await required(name, S3_ACCESS_KEY_ID)),
            secret_access_key=SecretStr(await required(name, S3_SECRET_ACCESS_KEY)),
            session_token=SecretStr(session) if session else None,
        )
    if source.oci is not None and source.oci.pull_secret_ref is not None:
        name = source.oci.pull_secret_ref.name
        raw = await required(name, DOCKER_CONFIG_KEY)
        return _docker_config_entry(raw, registry_host(source.oci.reference), name)
    return None

"""The s3 source: every object under a prefix, from AWS S3 or an S3-compatible server.

Requests are signed with AWS Signature Version 4 (access key, secret key, optional session
token, as every S3 client takes them); without credentials they are anonymous. A custom endpoint
is addressed path-style (``endpoint/bucket/key``), which self-hosted servers expect; AWS
virtual-hosted style (``bucket.s3.region.amazonaws.com/key``).

The listing (keys, sizes, ETags) is the identity: unchanged objects are not downloaded again.
A single-part ETag is the MD5 of the object, and is checked after the download, so an object
that changed or was damaged on its way is refused rather than stored.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path

from loraplane.adapters.sources.credentials import S3Credentials
from loraplane.adapters.sources.protocol import (
    SizeBudget,
    SourceContext,
    SourceNotFound,
    SourceUnauthorized,
    SourceUnreachable,
)
from loraplane.adapters.sources.transfer import Client, HTTPStatusError, relative_file
from loraplane.adapters.sources.versions import DigestMismatch
from loraplane.api.sources import S3Source

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# S3 error codes by outcome (besides 404 and 401/403); anything else is worth a retry.
NOT_FOUND = {"NoSuchBucket", "NoSuchKey"}
UNAUTHORIZED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AuthorizationHeaderMalformed",
    "XAdminUserNotFound",  # versitygw's InvalidAccessKeyId
}
CHUNK = 1 << 20


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str


def parse_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix ending in '/' or empty) of s3://bucket/prefix."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _quote(value: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(value, safe=safe)


def sign(
    method: str,
    url: str,
    region: str,
    credentials: S3Credentials,
    now: datetime.datetime,
    payload_hash: str = UNSIGNED_PAYLOAD,
) -> dict[str, str]:
    """The SigV4 headers (Authorization, x-amz-date, x-amz-content-sha256, token) of a request
    whose URL path and query are already percent-encoded as S3 wants them."""
    parts = urllib.parse.urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {
        "host": parts.netloc,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
    }
    if credentials.session_token is not None:
        headers["x-amz-security-token"] = credentials.session_token.get_secret_value()
    query = sorted(
        (_quote(k), _quote(v))
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            "&".join(f"{k}={v}" for k, v in query),
            "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + credentials.secret_access_key.get_secret_value()).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    access_key = credentials.access_key_id.get_secret_value()
    out = {k: v for k, v in headers.items() if k != "host"}
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, "
        f"Signature={signature}"
    )
    return out


def _error_code(body: bytes) -> tuple[str, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", ""
    return root.findtext("Code") or "", root.findtext("Message") or ""


class S3Fetcher:
    kind = "s3"

    def __init__(
        self, source: S3Source, credentials: S3Credentials | None, context: SourceContext
    ) -> None:
        self.description = source.uri
        self.bucket, self.prefix = parse_uri(source.uri)
        self.region = source.region
        self._credentials = credentials
        self._client = Client(context, source.uri)
        if source.endpoint is not None:
            self._base = f"{source.endpoint.rstrip('/')}/{_quote(self.bucket)}"
        else:
            self._base = f"https://{self.bucket}.s3.{self.region}.amazonaws.com"
        self._objects: list[S3Object] | None = None

    def _request(self, path_and_query: str) -> HTTPResponse:
        url = self._base + path_and_query
        secret: dict[str, str] = {}
        headers: dict[str, str] = {}
        if self._credentials is not None:
            now = datetime.datetime.now(datetime.UTC)
            signed = sign("GET", url, self.region, self._credentials, now)
            secret = {"Authorization": signed.pop("Authorization")}
            secret.update({k: signed.pop(k) for k in list(signed) if k == "x-amz-security-token"})
            headers = signed
        try:
            return self._client.open(url, headers=headers, secret_headers=secret)
        except HTTPStatusError as exc:
            code, message = _error_code(exc.body)
            said = f"{self.description}: {code or f'HTTP {exc.status}'}"
            said += f": {message}" if message else ""
            # The code first: versitygw answers an unknown key with a 404.
            if code in UNAUTHORIZED or (code not in NOT_FOUND and exc.status in (401, 403)):
                raise SourceUnauthorized(
                    said + " (check the keys in credentialsSecretRef)"
                ) from None
            if code in NOT_FOUND or exc.status == 404:
                raise SourceNotFound(said) from None
            raise SourceUnreachable(said) from None

    def list_objects(self) -> list[S3Object]:
        """Every object under the prefix (ListObjectsV2, all pages)."""
        objects: list[S3Object] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": self.prefix}
            if token:
                query["continuation-token"] = token
            encoded = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
            response = self._request(f"/?{encoded}")
            with response as r:
                root = ET.fromstring(r.read(16 << 20))
            for item in root.iter(f"{_NS}Contents"):
                key = item.findtext(f"{_NS}Key") or ""
                parts = key[len(self.prefix) :].split("/")
                # A "folder" placeholder some consoles create, or a hidden file: neither is part
                # of an adapter (as with the path source).
                if key.endswith("/") or any(part.startswith(".") for part in parts):
                    continue
                objects.append(
                    S3Object(
                        key=key,
                        size=int(item.findtext(f"{_NS}Size") or 0),
                        etag=(item.findtext(f"{_NS}ETag") or "").strip('"'),
                    )
                )
            token = root.findtext(f"{_NS}NextContinuationToken")
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return objects

    def resolve(self) -> str:
        self._objects = self.list_objects()
        if not self._objects:
            raise SourceNotFound(f"{self.description}: no objects under this prefix")
        listing = "\n".join(f"{o.key} {o.size} {o.etag}" for o in self._objects)
        return f"{self.description}#{hashlib.sha256(listing.encode()).hexdigest()}"

    def download(self, staged: Path, budget: SizeBudget) -> str | None:
        objects = self._objects if self._objects is not None else self.list_objects()
        budget.announce(sum(o.size for o in objects))
        for obj in objects:
            rel = relative_file(obj.key[len(self.prefix) :], self.description)
            target = staged / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            md5 = hashlib.md5(usedforsecurity=False)
            response = self._request("/" + _quote(obj.key, safe="/-_.~"))
            try:
                with response as r, open(target, "wb") as out:
                    while chunk := r.read(CHUNK):
                        budget.take(len(chunk))
                        md5.update(chunk)
                        out.write(chunk)
            except (TimeoutError, ConnectionError) as exc:
                raise SourceUnreachable(f"{self.description}: download broke off ({exc})") from None
            # A multipart ETag ("<md5 of md5s>-<parts>") is not the object's MD5.
            if "-" not in obj.etag and len(obj.etag) == 32 and md5.hexdigest() != obj.etag:
                raise DigestMismatch(
                    f"{self.description}: {rel} has MD5 {md5.hexdigest()}, its ETag says {obj.etag}"
                )
        return None

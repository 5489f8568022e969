"""Where a LoRAAdapter's files come from: one variant per source kind, exactly one set."""

from __future__ import annotations

from typing import Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from loraplane.api.cel import DNS1123_SUBDOMAIN, CelRule, matches, validations
from loraplane.api.common import PATH_ABSOLUTE, HuggingFaceSource, K8sModel

S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^ ]*)?$"
# No userinfo (user:password@) in URLs: they are shown in status and logs, credentials never are.
HTTP_ENDPOINT = r"^https?://[^ /?#@]+(/[^ ?#]*)?$"
# registry host[:port] / repository (OCI distribution spec names) then :tag or @sha256:digest.
OCI_REFERENCE = (
    r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?"
    r"/[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}|@sha256:[0-9a-f]{64})$"
)
HTTPS_URL = r"^https://[^ /?#@]+([/?#][^ ]*)?$"
SHA256_HEX = r"^(sha256:)?[0-9a-f]{64}$"

ADAPTER_SOURCE_EXACTLY_ONE = CelRule(
    name="adapter-source-exactly-one",
    rule=(
        "(has(self.huggingface) ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.s3) ? 1 : 0) + "
        "(has(self.oci) ? 1 : 0) + (has(self.url) ? 1 : 0) == 1"
    ),
    message=(
        "set exactly one of source.huggingface, source.path, source.s3, source.oci or source.url"
    ),
)
S3_URI_FORMAT = CelRule(
    name="s3-uri-format",
    rule=f"self.matches('{S3_URI}')",
    message="uri must be s3://<bucket>/<prefix> (a lowercase bucket name, then the key prefix)",
)
S3_ENDPOINT_FORMAT = CelRule(
    name="s3-endpoint-format",
    rule=f"self.matches('{HTTP_ENDPOINT}')",
    message=(
        "endpoint must be an http:// or https:// URL without query or credentials "
        "(e.g. https://minio.example:9000)"
    ),
)
OCI_REFERENCE_FORMAT = CelRule(
    name="oci-reference-format",
    rule=f"self.matches('{OCI_REFERENCE}')",
    message=(
        "reference must name the registry, the repository and a tag or digest: "
        "registry.example.com/team/adapter:v1 or registry.example.com/team/adapter@sha256:<hex>"
    ),
)
URL_HTTPS = CelRule(
    name="url-https",
    rule=f"self.matches('{HTTPS_URL}')",
    message=(
        "url must be an https:// URL (plain http cannot be trusted in transit) without "
        "credentials in it (user:password@)"
    ),
)


class SecretRef(K8sModel):
    """A Secret in the same namespace as the object, read whole."""

    name: str = Field(
        description="Name of the Secret, in the same namespace.",
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
    )


class S3Source(K8sModel):
    """Every object under a prefix of an S3 bucket (AWS S3 or a compatible server)."""

    uri: str = Field(
        description=(
            "s3://<bucket>/<prefix>: the adapter's files are the objects under <prefix>/ "
            "(adapter_config.json directly under it)."
        ),
        max_length=1024,
        json_schema_extra=validations(S3_URI_FORMAT),
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        description=(
            "URL of an S3-compatible server (MinIO, Ceph RGW, SeaweedFS, ...); requests then use "
            "path-style addressing. Default: AWS S3 of the region, virtual-hosted style."
        ),
        json_schema_extra=validations(S3_ENDPOINT_FORMAT),
    )
    region: str = Field(
        default="us-east-1",
        min_length=1,
        max_length=32,
        pattern=r"^[a-z0-9-]+$",
        description="Region the requests are signed for (SigV4).",
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description=(
            "Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and, for "
            "temporary credentials, AWS_SESSION_TOKEN). Without it requests are anonymous."
        ),
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        S3_URI_FORMAT.require(matches(S3_URI, v))
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None:
            S3_ENDPOINT_FORMAT.require(matches(HTTP_ENDPOINT, v))
        return v


class OCISource(K8sModel):
    """An OCI artifact in a registry, with the adapter's files as layers (what `oras push`
    makes of files or of a directory)."""

    reference: str = Field(
        description=(
            "registry/repository:tag or registry/repository@sha256:<digest>. A tag is resolved "
            "to its manifest digest once; the files are pulled and checked by digest."
        ),
        max_length=1024,
        json_schema_extra=validations(OCI_REFERENCE_FORMAT),
    )
    pull_secret_ref: SecretRef | None = Field(
        default=None,
        description=(
            "Secret of type kubernetes.io/dockerconfigjson (the kind imagePullSecrets name) with "
            "credentials for the registry. Without it the registry is read anonymously."
        ),
    )

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str) -> str:
        OCI_REFERENCE_FORMAT.require(matches(OCI_REFERENCE, v))
        return v


class URLSource(K8sModel):
    """A tarball, or a directory index, over HTTPS, pinned by its sha256."""

    url: str = Field(
        description=(
            "https:// URL of a tarball (.tar, .tar.gz, .tgz: the adapter's files at its top or "
            "in its only directory), or of a directory index ending in '/' (an HTML listing "
            "whose links name the adapter's files)."
        ),
        max_length=4096,
        json_schema_extra=validations(URL_HTTPS),
    )
    sha256: str = Field(
        description=(
            "Required pin: for a tarball, the sha256 of the tarball; for a directory index, the "
            "adapter's digest (status.adapter.digest of the same files from any source)."
        ),
        pattern=SHA256_HEX,
        max_length=71,
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        URL_HTTPS.require(matches(HTTPS_URL, v))
        return v


class AdapterSource(K8sModel):
    """Where an adapter's files come from: exactly one of huggingface, path, s3, oci or url."""

    model_config = ConfigDict(json_schema_extra=validations(ADAPTER_SOURCE_EXACTLY_ONE))

    huggingface: HuggingFaceSource | None = Field(
        default=None,
        description=(
            "A Hugging Face Hub repository (or a hub-compatible server the agent's "
            "huggingface_endpoint names); only the files vLLM reads are downloaded."
        ),
    )
    path: str | None = Field(
        default=None,
        description=(
            "Absolute path of a directory visible inside the pods (for example on a volume added "
            "with spec.template.volumes of the BaseModelDeployment)."
        ),
        min_length=1,
        max_length=4096,
        json_schema_extra=validations(PATH_ABSOLUTE),
    )
    s3: S3Source | None = Field(default=None, description="Objects under an S3 prefix.")
    oci: OCISource | None = Field(default=None, description="An OCI artifact in a registry.")
    url: URLSource | None = Field(default=None, description="A tarball or directory over HTTPS.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            PATH_ABSOLUTE.require(v.startswith("/"))
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [self.huggingface, self.path, self.s3, self.oci, self.url]
        ADAPTER_SOURCE_EXACTLY_ONE.require(sum(s is not None for s in chosen) == 1)
        return self

    @property
    def kind(self) -> str:
        """huggingface, path, s3, oci or url."""
        for kind in ("huggingface", "path", "s3", "oci", "url"):
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("the validator guarantees exactly one source")

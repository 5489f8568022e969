"""What one merged version is made from: the contract between the pod builder, the merge init
container and the operator, carried whole in the pod template (an annotation and the init
container's arguments), so a new version is exactly one template change and a pod says itself
which version it serves."""

from __future__ import annotations

from pydantic import Field

from loraplane.api import BaseModelDeploymentSpec
from loraplane.api.common import K8sModel
from loraplane.api.sources import AdapterSource
from loraplane.builders.vllm_args import model_reference

ANNOTATION = "loraplane.dev/merge"
# Where the merged model is written in each pod (an emptyDir of its own), and the adapter files
# fetched for it.
MOUNT_PATH = "/merged"
FETCH_DIR = ".adapters"
CREDENTIALS_PATH = "/var/run/loraplane/merge-credentials"
INIT_CONTAINER = "merge"
VOLUME = "loraplane-merged"
CREDENTIALS_VOLUME = "loraplane-merge-credentials"


class MergeInputs(K8sModel):
    """One merged version: the adapter's pinned files and the name the pods answer to."""

    adapter: str = Field(description="The LoRAAdapter whose version is merged.")
    source: AdapterSource = Field(description="Where its files come from.")
    digest: str = Field(description="The pinned version: status.adapter.digest of the adapter.")
    served_name: str = Field(description="The adapter's served name, which the pods answer to.")

    def canonical(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    @property
    def model_dir(self) -> str:
        """The merged model inside the pods: one directory per version, never rewritten."""
        return f"{MOUNT_PATH}/{self.digest.removeprefix('sha256:')}"


def secret_name(source: AdapterSource) -> str | None:
    """The one Secret the source reads its credentials from, if any."""
    if source.huggingface is not None and source.huggingface.token_secret_ref is not None:
        return source.huggingface.token_secret_ref.name
    if source.s3 is not None and source.s3.credentials_secret_ref is not None:
        return source.s3.credentials_secret_ref.name
    if source.oci is not None and source.oci.pull_secret_ref is not None:
        return source.oci.pull_secret_ref.name
    return None


def model_key(spec: BaseModelDeploymentSpec) -> str:
    """What makes two base models the same model: the files vLLM loads."""
    hf = spec.model.source.huggingface
    return model_reference(spec) + (f"@{hf.revision}" if hf is not None else "")

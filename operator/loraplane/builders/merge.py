"""The parts of a merged base model's pods (spec.model.merge): the merge init container, the
volume it writes the merged model to, and vLLM's arguments for serving it as a plain model.

Everything a merged version is made of (`MergeInputs`) is in the pod template, so a new version
is one template change: the Deployment rolls (maxUnavailable 0), each new pod merges before its
vLLM starts, and the old pods serve until the new ones are Ready.
"""

from __future__ import annotations

from typing import Any

from loraplane.api import BaseModelDeploymentSpec
from loraplane.builders.vllm_args import (
    MODEL_MOUNT_CACHE,
    ArgsError,
    _value,
    check_extra_args,
    model_flags,
    model_reference,
)
from loraplane.merge.inputs import (
    ANNOTATION,
    CREDENTIALS_PATH,
    CREDENTIALS_VOLUME,
    INIT_CONTAINER,
    MOUNT_PATH,
    VOLUME,
    MergeInputs,
    secret_name,
)
from loraplane.merge.weights import OUTPUT_DTYPES

MERGE_COMMAND = ["python3", "-m", "loraplane.merge"]


def vllm_args(spec: BaseModelDeploymentSpec, inputs: MergeInputs, port: int) -> list[str]:
    """vLLM serving the merged model: no LoRA flags, the adapter's served name."""
    problems = check_extra_args(spec.engine.extra_args)
    if problems:
        raise ArgsError("; ".join(problems))
    args = [
        "--model",
        inputs.model_dir,
        "--served-model-name",
        inputs.served_name,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    ]
    return args + model_flags(spec) + list(spec.engine.extra_args)


def init_container(
    spec: BaseModelDeploymentSpec,
    inputs: MergeInputs,
    image: str,
    env: list[dict[str, Any]],
) -> dict[str, Any]:
    """The merge: fetch the pinned version, merge, publish with one rename (merge/main.py)."""
    args = ["--inputs", inputs.canonical(), "--model", model_reference(spec)]
    hf = spec.model.source.huggingface
    if hf is not None and hf.revision:
        args += ["--revision", hf.revision]
    # Written in the dtype vLLM runs, so the merged weights are rounded once.
    args += ["--dtype", OUTPUT_DTYPES.get(_value(spec.model.dtype), "")]
    mounts: list[dict[str, Any]] = [{"name": VOLUME, "mountPath": MOUNT_PATH}]
    if hf is not None:
        mounts.append({"name": "loraplane-model-cache", "mountPath": MODEL_MOUNT_CACHE})
    secret = secret_name(inputs.source)
    if secret is not None:
        mounts.append(
            {
                "name": CREDENTIALS_VOLUME,
                "mountPath": f"{CREDENTIALS_PATH}/{secret}",
                "readOnly": True,
            }
        )
    mounts += [dict(m) for m in spec.template.volume_mounts]
    return {
        "name": INIT_CONTAINER,
        "image": image,
        "imagePullPolicy": str(_value(spec.engine.image_pull_policy)),
        "command": list(MERGE_COMMAND),
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        # What the operator reads to say why a merge failed (merge/main.py writes it; a kill
        # for memory writes nothing, and the log's end says what it was doing).
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def volumes(inputs: MergeInputs) -> list[dict[str, Any]]:
    """The merged model's volume (one pod's; sized by the node's disk) and the source's Secret."""
    out: list[dict[str, Any]] = [{"name": VOLUME, "emptyDir": {}}]
    secret = secret_name(inputs.source)
    if secret is not None:
        out.append({"name": CREDENTIALS_VOLUME, "secret": {"secretName": secret}})
    return out


def vllm_mount() -> dict[str, Any]:
    return {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}


def pod_annotations(inputs: MergeInputs) -> dict[str, str]:
    """On each pod: the version it merges, as the operator reads it back (merge/book.py)."""
    return {ANNOTATION: inputs.canonical()}

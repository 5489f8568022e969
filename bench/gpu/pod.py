"""A pod's two processes as local commands: vLLM and the agent, exactly as `builders/` render them.

The kit never writes a vLLM command of its own. It makes a BaseModelDeployment spec, lets
`loraplane.builders.deployment` render the pod's containers (arguments, environment, the
VLLM_PLUGINS list, the residency volume), and turns each container into a command on this machine,
as a container runtime would:

- vLLM: the upstream image's entrypoint, `vllm serve`, then the rendered `args` (no console script
  in a `pip --target` install, so `python -m vllm.entrypoints.cli.main serve`);
- the agent: the rendered `command` (`loraplane-agent`) as `python -m loraplane.agent.main`;
- environment: every literal value; a value under a volume's mount path points into that volume's
  local directory instead; the agent token (a Secret in a pod) and the pod's name and namespace
  (the downward API) get the kit's values; other Secret references are refused.

Pure: imports loraplane (pydantic) but no vLLM, no torch. Unit-tested in tests/unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplane.api import BaseModelDeploymentSpec
from loraplane.builders import deployment, naming
from loraplane.config import env_name

# The vLLM image's entrypoint (images/vllm/Containerfile keeps the upstream one).
VLLM_ENTRYPOINT = ("-m", "vllm.entrypoints.cli.main", "serve")
AGENT_MODULE = "loraplane.agent.main"
POD_NAME, POD_NAMESPACE = "kit-0", "kit"
AGENT_TOKEN = "kit-agent-token"
# Flags the operator renders for a LoRA engine; a reference engine without LoRA drops them.
LORA_FLAGS = ("--enable-lora", "--max-loras", "--max-cpu-loras", "--max-lora-rank", "--lora-dtype")
SWITCHES = ("--enable-lora", "--fully-sharded-loras")


@dataclass(frozen=True)
class Engine:
    """One vLLM server the kit starts: a spec's knobs and how it differs from a pod."""

    name: str
    model: str  # a local directory
    served_name: str = "base"
    max_loras: int = 1
    max_cpu_loras: int | None = None
    max_lora_rank: int = 16
    lora: bool = True  # False: the pod's command without the LoRA flags (a reference, not a pod)
    plugin: bool = True  # False: VLLM_PLUGINS set and empty, as a user turns plugins off
    agent: bool = False  # start loraplane's agent beside it, as in a pod
    quantization: str | None = None
    max_model_len: int | None = 2048
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def spec(self) -> BaseModelDeploymentSpec:
        env = [{"name": k, "value": v} for k, v in sorted(self.env.items())]
        if not self.plugin:
            env.append({"name": "VLLM_PLUGINS", "value": ""})
        lora: dict[str, Any] = {"maxLoras": self.max_loras, "maxLoraRank": self.max_lora_rank}
        if self.max_cpu_loras is not None:
            lora["maxCpuLoras"] = self.max_cpu_loras
        model: dict[str, Any] = {"source": {"path": self.model}, "servedName": self.served_name}
        if self.quantization:
            model["quantization"] = self.quantization
        if self.max_model_len:
            model["maxModelLen"] = self.max_model_len
        return BaseModelDeploymentSpec.model_validate(
            {
                "model": model,
                "lora": lora,
                "engine": {
                    "extraArgs": list(self.extra_args),
                    "env": env,
                    "resources": {"limits": {deployment.GPU_RESOURCE: 1}},
                },
            }
        )


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Pod:
    vllm: Command
    agent: Command | None
    port: int
    agent_port: int
    agent_metrics_port: int
    residency_dir: Path | None


def without_lora(args: Sequence[str]) -> list[str]:
    """The arguments less the LoRA flags (and their values)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in LORA_FLAGS:
            skip = "=" not in arg and name not in SWITCHES
            continue
        out.append(arg)
    return out


def local_env(
    env: Sequence[Mapping[str, Any]], mounts: Mapping[str, Path], values: Mapping[str, str]
) -> dict[str, str]:
    """A container's env as this machine's: literal values with mount paths made local;
    `valueFrom` entries from `values` (by name); any other reference is an error."""
    out: dict[str, str] = {}
    for entry in env:
        name = str(entry["name"])
        if "value" in entry:
            out[name] = localize(str(entry["value"]), mounts)
        elif name in values:
            out[name] = values[name]
        else:
            raise ValueError(f"{name} comes from {entry.get('valueFrom')}: the kit has no value")
    return out


def localize(value: str, mounts: Mapping[str, Path]) -> str:
    for mount, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(local) + value[len(mount.rstrip("/")) :]
    return value


def render(
    engine: Engine,
    python: str,
    workdir: Path,
    port: int,
    agent_port: int = 0,
    agent_metrics_port: int = 0,
) -> Pod:
    """The pod of `engine` as local commands; its volumes are directories under `workdir`."""
    spec = engine.spec()
    ctx = deployment.PodContext(
        agent_image="loraplane/loraplane:gpu-kit",
        vllm_port=port,
        agent_port=agent_port or port + 1,
        agent_metrics_port=agent_metrics_port or port + 2,
        engine_plugin=engine.plugin,
        agent_resources={},
        source_env={},
    )
    mounts = {
        naming.ADAPTER_MOUNT_PATH: workdir / "adapters",
        naming.RESIDENCY_MOUNT_PATH: workdir / "residency",
    }
    container = deployment.vllm_container(spec, engine.served_name, ctx)
    args = list(container["args"]) if engine.lora else without_lora(container["args"])
    vllm_env = local_env(container["env"], mounts, {})
    agent = None
    if engine.agent:
        spec_agent = deployment.agent_container(spec, engine.name, ctx)
        agent_env = local_env(
            spec_agent["env"],
            mounts,
            {
                env_name("agent_token"): AGENT_TOKEN,
                "POD_NAME": POD_NAME,
                "POD_NAMESPACE": POD_NAMESPACE,
            },
        )
        assert spec_agent["command"] == ["loraplane-agent"], spec_agent["command"]
        agent = Command([python, "-m", AGENT_MODULE], agent_env)
    return Pod(
        vllm=Command([python, *VLLM_ENTRYPOINT, *args], vllm_env),
        agent=agent,
        port=port,
        agent_port=ctx.agent_port,
        agent_metrics_port=ctx.agent_metrics_port,
        residency_dir=mounts[naming.RESIDENCY_MOUNT_PATH] if engine.plugin else None,
    )

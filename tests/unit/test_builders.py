"""Golden-file tests of the pure builders.

Regenerate the golden files with UPDATE_GOLDEN=1 after a deliberate change.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from loraplane.api import BaseModelDeploymentSpec, RouterSpec
from loraplane.builders import naming, router, router_config
from loraplane.builders.deployment import PodContext, ResourceError, deployment
from loraplane.builders.merge import MERGE_COMMAND
from loraplane.builders.network_policy import OPERATOR_POD_LABELS, network_policy
from loraplane.builders.router import RouterContext
from loraplane.builders.service import agent_token_secret, service
from loraplane.builders.vllm_args import ArgsError, check_extra_args, vllm_args
from loraplane.config import Settings
from loraplane.merge.inputs import ANNOTATION, MergeInputs
from tests.conftest import REPO

GOLDEN = Path(__file__).parent / "golden"
CTX = PodContext(agent_image="ghcr.io/loraplane/loraplane:0.1.0")

SPECS: dict[str, dict[str, Any]] = {
    # Llama-3.1-8B on one GPU, rank-64 adapters, 4 GPU slots.
    "llama-8b-gpu": {
        "replicas": 2,
        "model": {
            "source": {
                "huggingface": {
                    "repo": "meta-llama/Llama-3.1-8B-Instruct",
                    "revision": "0e9e39f249a16976918f6564b8830bc894c89659",
                    "tokenSecretRef": {"name": "hf-token", "key": "token"},
                }
            },
            "servedName": "llama-3.1-8b",
            "dtype": "bfloat16",
            "maxModelLen": 8192,
        },
        "lora": {"maxLoras": 4, "maxCpuLoras": 16, "maxLoraRank": 64},
        "engine": {
            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "48Gi"}},
            "apiKeySecretRef": {"name": "vllm-api-key", "key": "key"},
        },
        "template": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        "adapterStore": {"emptyDir": {"sizeLimit": "20Gi"}},
    },
    # A GPTQ-quantized 70B across 4 GPUs.
    "llama-70b-gptq-tp4": {
        "replicas": 1,
        "model": {
            "source": {"huggingface": {"repo": "TheBloke/Llama-2-70B-Chat-GPTQ"}},
            "quantization": "gptq",
            "maxModelLen": 4096,
        },
        "lora": {"maxLoras": 2, "maxLoraRank": 16, "fullyShardedLoras": True},
        "engine": {
            "tensorParallelSize": 4,
            "startupTimeoutSeconds": 3600,
            "extraArgs": ["--gpu-memory-utilization", "0.92"],
        },
        "adapterStore": {"persistentVolumeClaim": {"claimName": "adapters-70b"}},
    },
    # The tiny CPU model the tests and the demo run.
    "tiny-cpu": {
        "replicas": 2,
        "model": {
            "source": {"path": "/models/tiny-llama"},
            "dtype": "bfloat16",
            "maxModelLen": 256,
        },
        "lora": {"maxLoras": 2, "maxCpuLoras": 4, "maxLoraRank": 16},
        "engine": {
            "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}],
            "resources": {"requests": {"cpu": "1", "memory": "3Gi"}},
        },
        "template": {
            "volumes": [{"name": "models", "hostPath": {"path": "/var/lib/models"}}],
            "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
        },
    },
}


def owner(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraplane.dev/v1alpha1",
        "kind": "BaseModelDeployment",
        "metadata": {"name": name, "namespace": "models", "uid": f"uid-{name}", "generation": 1},
    }


def check_golden(name: str, obj: Any) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(obj, sort_keys=True)
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs; UPDATE_GOLDEN=1 after a deliberate change"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_deployment_golden(name: str) -> None:
    spec = BaseModelDeploymentSpec.from_k8s(SPECS[name])
    served = spec.model.served_name or name
    check_golden(f"deployment-{name}", deployment(owner(name), spec, served, CTX))


def test_service_and_secret_golden() -> None:
    check_golden("service", service(owner("tiny-cpu"), 8000))
    check_golden("agent-secret", agent_token_secret(owner("tiny-cpu"), "t0ken"))


def test_network_policy_golden() -> None:
    clients = ({"namespaceSelector": {"matchLabels": {"team": "ml"}}},)
    policy = network_policy(owner("tiny-cpu"), 8000, 8081, 8082, "loraplane-system", clients)
    check_golden("network-policy", policy)


def test_network_policy_without_clients_opens_the_vllm_and_metrics_ports_only() -> None:
    policy = network_policy(owner("tiny-cpu"), 8000, 8081, 8082, None, ())
    vllm, agent = policy["spec"]["ingress"]
    open_ports = [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 8082}]
    assert "from" not in vllm and vllm["ports"] == open_ports
    operator = {"podSelector": {"matchLabels": OPERATOR_POD_LABELS}}
    assert agent["from"][0] == operator  # no operator namespace known: the base model's own
    assert agent["ports"] == [{"protocol": "TCP", "port": 8081}]


def test_tp4_gets_four_gpus_and_shared_memory() -> None:
    spec = BaseModelDeploymentSpec.from_k8s(SPECS["llama-70b-gptq-tp4"])
    pod = deployment(owner("x"), spec, "x", CTX)["spec"]["template"]["spec"]
    vllm = pod["containers"][0]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert {"name": "loraplane-dshm", "mountPath": "/dev/shm"} in vllm["volumeMounts"]
    assert vllm["args"][vllm["args"].index("--tensor-parallel-size") + 1] == "4"


def test_too_few_gpus_for_tensor_parallel_is_refused() -> None:
    raw = {
        **SPECS["llama-70b-gptq-tp4"],
        "engine": {"tensorParallelSize": 4, "resources": {"limits": {"nvidia.com/gpu": 2}}},
    }
    spec = BaseModelDeploymentSpec.from_k8s(raw)
    with pytest.raises(ResourceError, match="needs 4 GPUs"):
        deployment(owner("x"), spec, "x", CTX)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--lora-extra-vocab-size", "256"], "removed in vLLM 0.12"),
        (["--long-lora-scaling-factors=4"], "removed in vLLM 0.10"),
        (["--enable-lora-bias"], "removed in vLLM 0.11.1"),
        (["--api-server-count", "2"], "exactly one API server"),
        (["--enable-lora"], "always enabled"),
        (["--max-lora-rank", "32"], "spec.lora.maxLoraRank"),
        (["--lora-modules", "a=/x"], "LoRAAdapter"),
    ],
)
def test_refused_extra_args(extra: list[str], needle: str) -> None:
    problems = check_extra_args(extra)
    assert len(problems) == 1 and needle in problems[0]
    spec = BaseModelDeploymentSpec.from_k8s({**SPECS["tiny-cpu"], "engine": {"extraArgs": extra}})
    with pytest.raises(ArgsError, match=needle.split()[0]):
        vllm_args(spec, "tiny", 8000)


def test_accepted_extra_args_come_last_and_data_parallel_pins_one_api_server() -> None:
    extra = ["--data-parallel-size", "2", "--api-server-count=1"]
    assert check_extra_args(extra) == []
    spec = BaseModelDeploymentSpec.from_k8s(
        {**SPECS["tiny-cpu"], "engine": {"extraArgs": ["--data-parallel-size", "2"]}}
    )
    args = vllm_args(spec, "tiny", 8000)
    assert args[-2:] == ["--data-parallel-size", "2"]
    assert args[args.index("--api-server-count") + 1] == "1"


ROUTER_CTX = RouterContext.of(Settings())
ROUTERS: dict[str, dict[str, Any]] = {
    "envoy": {},
    "pool": {
        "mode": "InferencePool",
        "replicas": 2,
        "failOpen": False,
        "loraSignal": "vLLM",
        "scorers": {"prefix": 0, "loraAffinity": 6},
        "eppResources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
    },
}


def _router_objects(mode: str) -> list[dict[str, Any]]:
    spec = RouterSpec.from_k8s(ROUTERS[mode])
    bmd = owner("tiny-cpu")
    config = router.config_map(bmd, spec, ROUTER_CTX)
    objects = [
        router.service_account(bmd),
        router.role(bmd),
        router.role_binding(bmd),
        config,
        router.deployment(bmd, spec, ROUTER_CTX, config),
        router.service(bmd, spec),
        router.inference_pool(bmd, spec, ROUTER_CTX.vllm_port),
    ]
    if spec.mode == "Envoy":
        objects.append(router.endpoints_config_map(bmd, ["10.0.0.7", "10.0.0.5"], ROUTER_CTX))
    return objects


@pytest.mark.parametrize("mode", sorted(ROUTERS))
def test_router_golden(mode: str) -> None:
    check_golden(f"router-objects-{mode}", _router_objects(mode))


def test_router_pods_are_not_the_base_models() -> None:
    """Neither the base model's Service nor the EPP may ever pick a router pod."""
    dep = router.deployment(
        owner("m"),
        RouterSpec(),
        ROUTER_CTX,
        router.config_map(owner("m"), RouterSpec(), ROUTER_CTX),
    )
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert naming.LABEL_BASE_MODEL not in labels
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_router_runs_the_router_image_of_this_version_in_both_containers() -> None:
    """images/router (hack/images.sh router) holds the EPP and Envoy and has no ENTRYPOINT: each
    container names its binary. The default tag is the package's version, as the operator's."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    settings = Settings()
    assert settings.operator_image == f"ghcr.io/loraplane/loraplane:{version}"
    assert settings.router_epp_image == settings.router_envoy_image
    assert settings.router_epp_image == f"ghcr.io/loraplane/router:{version}"
    bmd = owner("m")
    dep = router.deployment(
        bmd, RouterSpec(), ROUTER_CTX, router.config_map(bmd, RouterSpec(), ROUTER_CTX)
    )
    containers = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
    assert {n: (c["image"], c["command"]) for n, c in containers.items()} == {
        "epp": (settings.router_epp_image, ["epp"]),
        "envoy": (settings.router_envoy_image, ["envoy"]),
    }


def test_router_on_upstreams_images() -> None:
    """Upstream's EPP image has only /epp (its ENTRYPOINT), Envoy's has envoy on PATH."""
    epp_image = "registry.k8s.io/gateway-api-inference-extension/epp:v1.5.0"
    envoy_image = "docker.io/envoyproxy/envoy:distroless-v1.40.0"
    settings = Settings.from_env(
        {
            "LORAPLANE_ROUTER_EPP_IMAGE": epp_image,
            "LORAPLANE_ROUTER_EPP_COMMAND": "/epp",
            "LORAPLANE_ROUTER_ENVOY_IMAGE": envoy_image,
        }
    )
    ctx = RouterContext.of(settings)
    bmd = owner("m")
    dep = router.deployment(bmd, RouterSpec(), ctx, router.config_map(bmd, RouterSpec(), ctx))
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [(c["image"], c["command"]) for c in containers] == [
        (epp_image, ["/epp"]),
        (envoy_image, ["envoy"]),
    ]
    # The executable only: its flags are the operator's args.
    with pytest.raises(ValidationError):
        Settings.from_env({"LORAPLANE_ROUTER_EPP_COMMAND": "/epp --v=2"})


def test_router_weights_take_the_spec_over_the_defaults() -> None:
    spec = RouterSpec.from_k8s({"scorers": {"queue": 0, "loraAffinity": 9}})
    assert router.weights(spec, ROUTER_CTX) == router_config.ScorerWeights(
        queue=0, kv_cache=2, prefix=3, lora=9
    )


def test_a_config_change_rolls_the_router() -> None:
    bmd = owner("m")
    one = router.config_map(bmd, RouterSpec(), ROUTER_CTX)
    two = router.config_map(bmd, RouterSpec.from_k8s({"loraSignal": "vLLM"}), ROUTER_CTX)
    hashes = {
        router.deployment(bmd, RouterSpec(), ROUTER_CTX, c)["spec"]["template"]["metadata"][
            "annotations"
        ][router.CONFIG_HASH]
        for c in (one, two)
    }
    assert len(hashes) == 2


@pytest.mark.parametrize(
    ("name", "kind", "owner_name", "slot"),
    [
        ("m", "Deployment", None, ("m", "Deployment")),
        ("m-router", "Deployment", "m", ("m", "router/Deployment")),
        # A base model named m-router has its own Deployment of that name, not m's router.
        ("m-router", "Deployment", "m-router", ("m-router", "Deployment")),
        ("m-router-endpoints", "ConfigMap", "m", ("m", "router/endpoints")),
        ("m", "ConfigMap", "m", None),
        ("m", "InferencePool", "m", ("m", "InferencePool")),
    ],
)
def test_child_slot(
    name: str, kind: str, owner_name: str | None, slot: tuple[str, str] | None
) -> None:
    refs = (
        [{"kind": "BaseModelDeployment", "name": owner_name, "controller": True}]
        if owner_name
        else []
    )
    obj = {"kind": kind, "metadata": {"name": name, "ownerReferences": refs}}
    assert naming.child_slot(obj) == slot


def test_a_routed_base_models_policy_lets_its_router_in() -> None:
    args = (owner("tiny-cpu"), 8000, 8081, 8082, "loraplane-system", ({"podSelector": {}},))
    plain, routed = network_policy(*args), network_policy(*args, routed=True)
    added = routed["spec"]["ingress"][0]["from"][len(plain["spec"]["ingress"][0]["from"]) :]
    assert added == [{"podSelector": {"matchLabels": {"loraplane.dev/router": "tiny-cpu"}}}]
    assert routed["spec"]["ingress"][1] == plain["spec"]["ingress"][1]  # the agent: unchanged


def _merged(name: str) -> tuple[BaseModelDeploymentSpec, MergeInputs]:
    spec = BaseModelDeploymentSpec.from_k8s(
        {**SPECS[name], "model": {**SPECS[name]["model"], "merge": {"adapter": "sql-expert"}}}
    )
    source = {
        "huggingface": {
            "repo": "acme/sql-lora",
            "tokenSecretRef": {"name": "hf-token", "key": "token"},
        }
    }
    inputs = MergeInputs.from_k8s(
        {
            "adapter": "sql-expert",
            "source": source,
            "digest": "sha256:" + "ab" * 32,
            "servedName": "sql-expert",
        }
    )
    return spec, inputs


@pytest.mark.parametrize("name", ["llama-8b-gpu", "tiny-cpu"])
def test_merged_deployment_golden(name: str) -> None:
    spec, inputs = _merged(name)
    check_golden(f"deployment-{name}-merged", deployment(owner(name), spec, name, CTX, inputs))


def test_merged_pods_serve_the_version_without_lora() -> None:
    spec, inputs = _merged("llama-8b-gpu")
    pod = deployment(owner("l"), spec, "l", CTX, inputs)["spec"]["template"]
    vllm = pod["spec"]["containers"][0]
    args = vllm["args"]
    assert args[:4] == ["--model", f"/merged/{'ab' * 32}", "--served-model-name", "sql-expert"]
    assert not [a for a in args if "lora" in a]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in {e["name"] for e in vllm["env"]}
    (init,) = pod["spec"]["initContainers"]
    assert init["image"] == spec.engine.image and init["command"][:3] == MERGE_COMMAND
    assert MergeInputs.model_validate_json(init["args"][1]) == inputs
    assert init["args"][-2:] == ["--dtype", "BF16"]  # the dtype vLLM runs: rounded once
    assert pod["metadata"]["annotations"][ANNOTATION] == inputs.canonical()
    # A new version is one template change; the same version is none.
    newer = inputs.model_copy(update={"digest": "sha256:" + "cd" * 32})
    assert deployment(owner("l"), spec, "l", CTX, newer) != deployment(
        owner("l"), spec, "l", CTX, inputs
    )
    again = deployment(owner("l"), spec, "l", CTX, inputs.model_copy())
    assert again == deployment(owner("l"), spec, "l", CTX, inputs)


def test_merge_image_setting_runs_the_merge_elsewhere() -> None:
    spec, inputs = _merged("tiny-cpu")
    ctx = dataclasses.replace(CTX, merge_image="registry.example/merge:1")
    pod = deployment(owner("t"), spec, "t", ctx, inputs)["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "registry.example/merge:1"

"""Each validation rule rejects a bad object with a message a user can act on.

BAD_OBJECTS are whole objects, so the cluster tests can send the very same ones to the real API
server (``server_message`` is what it prints; for CEL rules it is the rule's own message).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from loraplane import api
from loraplane.api import adapter, base_model, cel, common, sources


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a ``source`` is replaced whole (it is a one-of)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key != "source" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def bmd(spec: dict[str, Any] | None = None, name: str = "bad-bmd") -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.BASE_MODEL_KIND,
        "metadata": {"name": name},
        "spec": _merge({"model": {"source": {"path": "/models/tiny"}}}, spec or {}),
    }


def lora(spec: dict[str, Any] | None = None, name: str = "bad-lora") -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.ADAPTER_KIND,
        "metadata": {"name": name},
        "spec": _merge({"baseModel": "tiny", "source": {"path": "/adapters/a"}}, spec or {}),
    }


def _source(src: dict[str, Any]) -> dict[str, Any]:
    return {"model": {"source": src}}


@dataclass(frozen=True)
class Bad:
    id: str
    body: dict[str, Any]
    # A substring of the model's error; for CEL rules, the rule's message.
    message: str
    rule: cel.CelRule | None = None
    # A substring of the API server's error, when it words it differently (schema keywords).
    server_message: str | None = field(default=None)

    @property
    def expected_from_server(self) -> str:
        return self.server_message or self.message


def _cel(id: str, body: dict[str, Any], rule: cel.CelRule) -> Bad:
    return Bad(id=id, body=body, message=rule.message, rule=rule)


HF = {"huggingface": {"repo": "org/model"}}
LONG_NAME = "a" * 60 + "." + "b" * 60 + "." + "c" * 10  # 132 chars, a valid object name

BAD_OBJECTS: list[Bad] = [
    # --- CEL rules, BaseModelDeployment ---------------------------------------------------
    _cel(
        "bmd-merge-adapter-and-source",
        bmd({"model": {"merge": {"adapter": "a", "source": {"path": "/a"}, "digest": "0" * 64}}}),
        base_model.MERGE_EXACTLY_ONE,
    ),
    _cel("bmd-merge-nothing", bmd({"model": {"merge": {}}}), base_model.MERGE_EXACTLY_ONE),
    _cel(
        "bmd-merge-source-unpinned",
        bmd({"model": {"merge": {"source": {"path": "/a"}}}}),
        base_model.MERGE_SOURCE_PINNED,
    ),
    _cel(
        "bmd-merge-quantized",
        bmd({"model": {"quantization": "awq", "merge": {"adapter": "a"}}}),
        base_model.MERGE_NOT_QUANTIZED,
    ),
    _cel("bmd-two-sources", bmd(_source({"path": "/m", **HF})), common.SOURCE_EXACTLY_ONE),
    _cel("bmd-no-source", bmd({"model": {"source": {}}}), common.SOURCE_EXACTLY_ONE),
    _cel("bmd-relative-path", bmd(_source({"path": "models/tiny"})), common.PATH_ABSOLUTE),
    _cel(
        "bmd-repo-without-owner",
        bmd({"model": {"source": {"huggingface": {"repo": "llama"}}}}),
        common.HF_REPO_FORMAT,
    ),
    _cel(
        "bmd-repo-url",
        bmd({"model": {"source": {"huggingface": {"repo": "https://hf.co/org/model"}}}}),
        common.HF_REPO_FORMAT,
    ),
    _cel(
        "max-cpu-loras-below-max-loras",
        bmd({"lora": {"maxLoras": 4, "maxCpuLoras": 2}}),
        base_model.MAX_CPU_LORAS_AT_LEAST_MAX_LORAS,
    ),
    _cel(
        "max-cpu-loras-below-default-max-loras",
        bmd({"lora": {"maxLoras": 2, "maxCpuLoras": 1}}),
        base_model.MAX_CPU_LORAS_AT_LEAST_MAX_LORAS,
    ),
    _cel("rank-7", bmd({"lora": {"maxLoraRank": 7}}), base_model.MAX_LORA_RANK_SUPPORTED),
    _cel("rank-1024", bmd({"lora": {"maxLoraRank": 1024}}), base_model.MAX_LORA_RANK_SUPPORTED),
    _cel(
        "bmd-served-name-space",
        bmd({"model": {"servedName": "my model"}}),
        base_model.SERVED_NAME_FORMAT,
    ),
    _cel(
        "bmd-served-name-dotdot",
        bmd({"model": {"servedName": "org/../model"}}),
        base_model.SERVED_NAME_FORMAT,
    ),
    _cel(
        "tensor-parallel-3",
        bmd({"engine": {"tensorParallelSize": 3}}),
        base_model.TENSOR_PARALLEL_POWER_OF_TWO,
    ),
    _cel(
        "two-adapter-stores",
        bmd({"adapterStore": {"emptyDir": {}, "persistentVolumeClaim": {"claimName": "c"}}}),
        base_model.ADAPTER_STORE_EXACTLY_ONE,
    ),
    _cel("no-adapter-store", bmd({"adapterStore": {}}), base_model.ADAPTER_STORE_EXACTLY_ONE),
    _cel(
        "size-limit-not-quantity",
        bmd({"adapterStore": {"emptyDir": {"sizeLimit": "lots"}}}),
        base_model.SIZE_LIMIT_QUANTITY,
    ),
    _cel(
        "size-limit-zero",
        bmd({"adapterStore": {"emptyDir": {"sizeLimit": "0Gi"}}}),
        base_model.SIZE_LIMIT_QUANTITY,
    ),
    _cel(
        "size-limit-negative",
        bmd({"adapterStore": {"emptyDir": {"sizeLimit": "-1Gi"}}}),
        base_model.SIZE_LIMIT_QUANTITY,
    ),
    _cel(
        "reserved-label",
        bmd({"template": {"labels": {"loraplane.dev/base-model": "other"}}}),
        base_model.RESERVED_KEYS,
    ),
    _cel(
        "reserved-annotation",
        bmd({"template": {"annotations": {"loraplane.dev/spec-hash": "x"}}}),
        base_model.RESERVED_KEYS,
    ),
    _cel(
        "reserved-volume-name",
        bmd({"template": {"volumes": [{"name": "loraplane-adapters", "emptyDir": {}}]}}),
        base_model.RESERVED_VOLUME_NAMES,
    ),
    _cel("bmd-name-with-dot", bmd(name="llama.3"), base_model.NAME_IS_DNS_LABEL),
    _cel("bmd-name-leading-digit", bmd(name="3llama"), base_model.NAME_IS_DNS_LABEL),
    _cel("bmd-name-too-long", bmd(name="a" * 64), base_model.NAME_IS_DNS_LABEL),
    # --- CEL rules, LoRAAdapter -------------------------------------------------------------
    _cel(
        "lora-two-sources",
        lora({"source": {"path": "/a", **HF}}),
        sources.ADAPTER_SOURCE_EXACTLY_ONE,
    ),
    _cel(
        "lora-s3-and-oci",
        lora({"source": {"s3": {"uri": "s3://bkt/p"}, "oci": {"reference": "r.io/a:b"}}}),
        sources.ADAPTER_SOURCE_EXACTLY_ONE,
    ),
    _cel("lora-no-source", lora({"source": {}}), sources.ADAPTER_SOURCE_EXACTLY_ONE),
    _cel(
        "lora-s3-no-scheme",
        lora({"source": {"s3": {"uri": "bucket/prefix"}}}),
        sources.S3_URI_FORMAT,
    ),
    _cel(
        "lora-s3-endpoint-no-scheme",
        lora({"source": {"s3": {"uri": "s3://bucket/p", "endpoint": "minio:9000"}}}),
        sources.S3_ENDPOINT_FORMAT,
    ),
    _cel(
        "lora-oci-no-registry",
        lora({"source": {"oci": {"reference": "adapter:v1"}}}),
        sources.OCI_REFERENCE_FORMAT,
    ),
    _cel(
        "lora-oci-no-tag",
        lora({"source": {"oci": {"reference": "registry.example/team/adapter"}}}),
        sources.OCI_REFERENCE_FORMAT,
    ),
    _cel(
        "lora-url-plain-http",
        lora({"source": {"url": {"url": "http://files.example/a.tgz", "sha256": "a" * 64}}}),
        sources.URL_HTTPS,
    ),
    _cel(
        "lora-url-with-credentials",
        lora({"source": {"url": {"url": "https://u:p@files.example/a.tgz", "sha256": "a" * 64}}}),
        sources.URL_HTTPS,
    ),
    Bad(
        "lora-url-without-sha256",
        lora({"source": {"url": {"url": "https://files.example/a.tgz"}}}),
        "sha256",
        server_message="spec.source.url.sha256: Required value",
    ),
    _cel("lora-relative-path", lora({"source": {"path": "a"}}), common.PATH_ABSOLUTE),
    _cel(
        "lora-repo-too-many-parts",
        lora({"source": {"huggingface": {"repo": "a/b/c"}}}),
        common.HF_REPO_FORMAT,
    ),
    _cel("lora-base-model-dots", lora({"baseModel": "my.base"}), adapter.BASE_MODEL_NAME),
    _cel("lora-base-model-upper", lora({"baseModel": "Tiny"}), adapter.BASE_MODEL_NAME),
    _cel(
        "lora-served-name-leading-dash",
        lora({"servedName": "-sql"}),
        adapter.SERVED_NAME_FORMAT,
    ),
    _cel(
        "lora-served-name-dotdot",
        lora({"servedName": "a..b"}),
        adapter.SERVED_NAME_FORMAT,
    ),
    _cel("lora-long-name", lora(name=LONG_NAME), adapter.DEFAULT_SERVED_NAME_LENGTH),
    # --- schema keywords (enums, ranges, lengths, required) ------------------------------------
    Bad(
        "replicas-negative",
        bmd({"replicas": -1}),
        "greater than or equal to 0",
        server_message="should be greater than or equal to 0",
    ),
    Bad(
        "max-loras-zero",
        bmd({"lora": {"maxLoras": 0}}),
        "greater than or equal to 1",
        server_message="should be greater than or equal to 1",
    ),
    Bad(
        "max-loras-257",
        bmd({"lora": {"maxLoras": 257}}),
        "less than or equal to 256",
        server_message="should be less than or equal to 256",
    ),
    Bad(
        "max-adapters-zero",
        bmd({"lora": {"maxAdaptersPerReplica": 0}}),
        "greater than or equal to 1",
        server_message="should be greater than or equal to 1",
    ),
    Bad(
        "max-model-len-tiny",
        bmd({"model": {"maxModelLen": 8}}),
        "greater than or equal to 16",
        server_message="should be greater than or equal to 16",
    ),
    Bad(
        "dtype-int4",
        bmd({"model": {"dtype": "int4"}}),
        "Input should be 'auto', 'half'",
        server_message='Unsupported value: "int4"',
    ),
    Bad(
        "quantization-unknown",
        bmd({"model": {"quantization": "int3"}}),
        "Input should be 'awq'",
        server_message='Unsupported value: "int3"',
    ),
    Bad(
        "lora-dtype-half",
        bmd({"lora": {"loraDtype": "half"}}),
        "Input should be 'auto', 'float16'",
        server_message='Unsupported value: "half"',
    ),
    Bad(
        "pull-policy",
        bmd({"engine": {"imagePullPolicy": "Sometimes"}}),
        "Input should be 'Always', 'IfNotPresent' or 'Never'",
        server_message='Unsupported value: "Sometimes"',
    ),
    Bad(
        "tensor-parallel-128",
        bmd({"engine": {"tensorParallelSize": 128}}),
        "less than or equal to 64",
        server_message="should be less than or equal to 64",
    ),
    Bad(
        "startup-timeout-short",
        bmd({"engine": {"startupTimeoutSeconds": 30}}),
        "greater than or equal to 60",
        server_message="should be greater than or equal to 60",
    ),
    Bad(
        "env-without-name",
        bmd({"engine": {"env": [{"value": "x"}]}}),
        "env[0] must have a non-empty string 'name'",
        server_message="spec.engine.env[0].name: Required value",
    ),
    Bad(
        "secret-key-ref-without-key",
        bmd({"engine": {"apiKeySecretRef": {"name": "s"}}}),
        "apiKeySecretRef.key\n  Field required",
        server_message="spec.engine.apiKeySecretRef.key: Required value",
    ),
    Bad(
        "revision-with-space",
        bmd({"model": {"source": {"huggingface": {"repo": "o/n", "revision": "my branch"}}}}),
        "String should match pattern",
        server_message="spec.model.source.huggingface.revision in body should match",
    ),
    Bad(
        "bmd-without-model",
        {**bmd(), "spec": {"replicas": 1}},
        "spec.model\n  Field required",
        server_message="spec.model: Required value",
    ),
    Bad(
        "priority-too-high",
        lora({"priority": 1001}),
        "less than or equal to 1000",
        server_message="should be less than or equal to 1000",
    ),
    Bad(
        "router-all-scorers-off",
        bmd({"router": {"scorers": {"queue": 0, "kvCache": 0, "prefix": 0, "loraAffinity": 0}}}),
        base_model.ROUTER_SOME_SCORER.message,
        rule=base_model.ROUTER_SOME_SCORER,
    ),
    Bad(
        "router-unknown-mode",
        bmd({"router": {"mode": "Nginx"}}),
        "Input should be 'Envoy' or 'InferencePool'",
        server_message='spec.router.mode: Unsupported value: "Nginx"',
    ),
    Bad(
        "router-weight-too-high",
        bmd({"router": {"scorers": {"loraAffinity": 101}}}),
        "less than or equal to 100",
        server_message="should be less than or equal to 100",
    ),
    Bad(
        "canary-is-itself",
        lora({"canary": {"adapter": "bad-lora", "weight": 10}}),
        adapter.CANARY_NOT_SELF.message,
        rule=adapter.CANARY_NOT_SELF,
    ),
    Bad(
        "canary-weight-over-100",
        lora({"canary": {"adapter": "other", "weight": 101}}),
        "less than or equal to 100",
        server_message="should be less than or equal to 100",
    ),
    Bad(
        "lora-without-base-model",
        {**lora(), "spec": {"source": {"path": "/a"}}},
        "spec.baseModel\n  Field required",
        server_message="spec.baseModel: Required value",
    ),
]

MODELS: dict[str, type[api.K8sModel]] = {
    api.BASE_MODEL_KIND: api.BaseModelDeployment,
    api.ADAPTER_KIND: api.LoRAAdapter,
}


@pytest.mark.parametrize("case", BAD_OBJECTS, ids=lambda c: c.id)
def test_bad_object_is_rejected(case: Bad) -> None:
    with pytest.raises(ValidationError) as info:
        MODELS[case.body["kind"]].from_k8s(case.body)
    assert case.message in str(info.value)


def test_base_model_is_immutable() -> None:
    old = api.LoRAAdapterSpec.from_k8s(lora()["spec"])
    new = api.LoRAAdapterSpec.from_k8s(lora({"baseModel": "other"})["spec"])
    with pytest.raises(ValueError, match="baseModel is immutable"):
        new.validate_update(old)
    moved_priority = api.LoRAAdapterSpec.from_k8s(lora({"priority": 5})["spec"])
    moved_priority.validate_update(old)


def test_cel_errors_carry_the_rule() -> None:
    with pytest.raises(ValidationError) as info:
        api.LoRASpec.from_k8s({"maxLoraRank": 7})
    (error,) = info.value.errors()
    cause = error["ctx"]["error"]
    assert isinstance(cause, cel.ValidationRuleError)
    assert cause.rule is base_model.MAX_LORA_RANK_SUPPORTED
    assert error["loc"] == ("maxLoraRank",)


def test_every_rule_has_a_bad_object() -> None:
    tested = {c.rule.name for c in BAD_OBJECTS if c.rule is not None}
    tested.add(adapter.BASE_MODEL_IMMUTABLE.name)  # a transition rule: test_base_model_is_immutable
    assert {r.name for r in cel.REGISTRY} == tested


def test_rule_names_are_unique() -> None:
    names = [r.name for r in cel.REGISTRY]
    assert len(names) == len(set(names))


GOOD_EDGE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("max-cpu-loras-equal", bmd({"lora": {"maxLoras": 4, "maxCpuLoras": 4}})),
    ("rank-320", bmd({"lora": {"maxLoraRank": 320}})),
    ("tp-64", bmd({"engine": {"tensorParallelSize": 64}})),
    ("replicas-0", bmd({"replicas": 0})),
    ("router-defaults", bmd({"router": {}})),
    (
        "router-affinity-only",
        bmd({"router": {"scorers": {"queue": 0, "kvCache": 0, "prefix": 0, "loraAffinity": 1}}}),
    ),
    (
        "router-pool-one-weight-set",
        bmd({"router": {"mode": "InferencePool", "scorers": {"prefix": 0}}}),
    ),
    ("size-limit-decimal", bmd({"adapterStore": {"emptyDir": {"sizeLimit": "1.5Gi"}}})),
    ("size-limit-bytes", bmd({"adapterStore": {"emptyDir": {"sizeLimit": "1000000"}}})),
    ("size-limit-exponent", bmd({"adapterStore": {"emptyDir": {"sizeLimit": "1e9"}}})),
    ("served-name-with-org", bmd({"model": {"servedName": "meta-llama/Llama-3.1-8B:v1"}})),
    ("other-label-prefix", bmd({"template": {"labels": {"app.kubernetes.io/part-of": "x"}}})),
    ("repo-with-dots", bmd(_source({"huggingface": {"repo": "Qwen/Qwen2.5-0.5B-Instruct"}}))),
    ("bmd-name-63", bmd(name="a" * 63)),
    ("lora-long-name-with-served-name", lora({"servedName": "short"}, name=LONG_NAME)),
    ("lora-name-128", lora(name="a" * 63 + "." + "b" * 64)),
    ("lora-priority-negative", lora({"priority": -1000})),
    ("lora-s3-bucket-only", lora({"source": {"s3": {"uri": "s3://bucket"}}})),
    (
        "lora-s3-minio",
        lora({"source": {"s3": {"uri": "s3://bkt/x/y", "endpoint": "http://minio.ns.svc:9000"}}}),
    ),
    (
        "lora-oci-port-digest",
        lora({"source": {"oci": {"reference": f"r:5000/a/b@sha256:{'0' * 64}"}}}),
    ),
    (
        "lora-url-prefixed-sha",
        lora({"source": {"url": {"url": "https://h/d/", "sha256": f"sha256:{'a' * 64}"}}}),
    ),
]


@pytest.mark.parametrize(("id", "body"), GOOD_EDGE_CASES, ids=[c[0] for c in GOOD_EDGE_CASES])
def test_edge_cases_are_accepted(id: str, body: dict[str, Any]) -> None:
    MODELS[body["kind"]].from_k8s(body)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("10Gi", True),
        ("500Mi", True),
        ("1", True),
        ("0.5", True),
        (".5G", True),
        ("+2k", True),
        ("1e3", True),
        ("0", False),
        ("0.0Gi", False),
        ("-1", False),
        ("10GB", False),
        ("Gi", False),
        ("", False),
    ],
)
def test_positive_quantity_mirror(value: str, ok: bool) -> None:
    assert common.is_positive_quantity(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("sql-lora", True),
        ("org/model:v1.2", True),
        ("A", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("_x", False),
        ("a b", False),
        ("a..b", False),
        ("é", False),
    ],
)
def test_model_name_mirror(value: str, ok: bool) -> None:
    assert cel.is_model_name(value) is ok

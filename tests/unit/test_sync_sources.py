"""The operator's side of a source: its Secret read into typed credentials for the agent (or a
SecretNotFound on the pod), the store's size limit in the request, and a too-large verdict that
holds only while the limit it exceeded does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from loraplane.adapters.sources.credentials import MissingSecret, S3Credentials
from loraplane.agent import protocol
from loraplane.api import LoRAAdapterStatus
from loraplane.api.adapter import MAX_STATUS_PODS
from loraplane.fleet import Fleet
from loraplane.status import adapter as adapter_status
from loraplane.vllm.errors import Reason
from tests.unit.test_metrics import (
    FakeAgent,
    FakeRuntime,
    base_obj,
    context,
    fetched,
    fleet_of,
    lora_obj,
    pod_obj,
    run_register,
)

NS = "sources"
S3 = {"s3": {"uri": "s3://bkt/team/a", "credentialsSecretRef": {"name": "s3-keys"}}}


@dataclass
class Secrets:
    values: dict[tuple[str, str, str], str] = field(default_factory=dict)

    async def value(self, namespace: str, name: str, key: str) -> str | None:
        return self.values.get((namespace, name, key))


class RecordingAgent(FakeAgent):
    def __init__(self) -> None:
        super().__init__(fetched("a"))

    @property
    def items(self) -> list[protocol.ApplyItem]:
        return [item for request in self.requests for item in request.adapters]


def fleet_with(size_limit: str = "1Gi") -> Fleet:
    fleet = Fleet()
    base = base_obj(NS)
    base["spec"]["adapterStore"] = {"emptyDir": {"sizeLimit": size_limit}}
    fleet.observe_base(base)
    fleet.observe_pod(pod_obj(NS, "p0"))
    fleet.observe_adapter(lora_obj(NS, "a", source=S3))
    return fleet


def run(fleet: Fleet, secrets: Secrets, agent: Any) -> bool:
    rt = FakeRuntime(fleet, secrets=secrets)  # type: ignore[arg-type]
    pc = context(fleet, "p0", agent=agent)
    return run_register(rt, pc, "a")


def test_the_source_secret_becomes_typed_credentials_with_the_store_limit() -> None:
    fleet = fleet_with("2Gi")
    secrets = Secrets(
        {
            (NS, "s3-keys", "AWS_ACCESS_KEY_ID"): "AKIAEXAMPLE",
            (NS, "s3-keys", "AWS_SECRET_ACCESS_KEY"): "secret",
        }
    )
    agent = RecordingAgent()
    assert run(fleet, secrets, agent)
    request = agent.items[0]  # fetched, then loaded once pinned: the same source each time
    assert isinstance(request.credentials, S3Credentials)
    assert request.credentials.secret_access_key.get_secret_value() == "secret"
    assert request.size_limit_bytes == 2 << 30


def test_a_missing_secret_is_told_on_the_pod_and_retried() -> None:
    fleet = fleet_with()
    agent = RecordingAgent()
    with pytest.raises(MissingSecret):
        run(fleet, Secrets(), agent)
    assert agent.items == []
    state = fleet.state((NS, "p0"), "a")
    assert state is not None and state.reason == "SecretNotFound"
    assert state.last_error is not None and "s3-keys" in state.last_error
    assert fleet.failure((NS, "a")) is None  # not a verdict on the adapter


def test_too_large_holds_until_the_store_limit_changes() -> None:
    fleet = fleet_with("1Mi")
    key = (NS, "a")
    judged = fleet.judgement(key)
    assert judged is not None
    fleet.record_failure(key, judged, Reason.ADAPTER_TOO_LARGE, "2 MiB > 1 MiB")
    assert fleet.failure(key) is not None
    base = base_obj(NS)
    base["spec"]["adapterStore"] = {"emptyDir": {"sizeLimit": "10Gi"}}
    fleet.observe_base(base)
    assert fleet.failure(key) is None


def _ready_reason(fleet: Fleet, name: str) -> tuple[str, str | None]:
    ad = fleet.adapters[("reasons", name)]
    status = adapter_status.compute(fleet, ad, LoRAAdapterStatus(), MAX_STATUS_PODS)
    cond = next(c for c in status.conditions or [] if c.type == "Ready")
    return cond.status, cond.reason


def test_a_reason_every_failing_pod_shares_names_the_loading_state() -> None:
    fleet = fleet_of("reasons", "a", pods=2)
    for pod in ("p0", "p1"):
        error = "SourceUnauthorized: wrong key"
        fleet.set_state(("reasons", pod), "a", "Loading", error, None, "SourceUnauthorized")
    assert _ready_reason(fleet, "a") == ("False", "SourceUnauthorized")
    error = "SecretNotFound: s3-keys"
    fleet.set_state(("reasons", "p1"), "a", "Loading", error, None, "SecretNotFound")
    assert _ready_reason(fleet, "a") == ("False", "Fetching")  # two: the message quotes each

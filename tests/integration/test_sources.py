"""Adapter sources through the whole system: an HTTPS server and an S3 server (versitygw) on the
node's bridge address, reached by a real vLLM pod's agent, with the CA mounted into the pod and
named by the operator's LORAPLANE_SOURCE_CA_FILE and the S3 keys in a Secret the operator reads.

Each source's adapter becomes Ready and answers a completion exactly as the same files from a
path source do; a tampered tarball, a missing object and a wrong key each fail with their own
reason while the others keep serving; a new pin loads the new version in place.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Cluster, completion, condition, pod_ready, wait_for
from tests.integration.manifests import (
    ADAPTER_SOURCES,
    API_VERSION,
    SOURCE_CA_DIR,
    lora_adapter,
    tiny_base_model,
)
from tests.integration.operator_process import OperatorProcess
from tests.support.servers import LOCALHOST, S3Server, Server, https_files, make_ca, versitygw

NS = "it-sources"
BASE = "src"
SELECTOR = f"loraplane.dev/base-model={BASE}"
# The node's bridge (hack/processnode/sandbox.py): the host address pods reach.
GATEWAY = "10.244.0.1"
BUCKET = "adapters"
KEYS = ("loraplane-test", "loraplane-test-secret")
PROMPT = "the quick brown fox"


@dataclass
class Sources:
    https: Server
    s3: S3Server
    sums: dict[str, str]


def _tarball(directory: Path, out: Path) -> str:
    with tarfile.open(out, "w:gz") as tar:
        for f in sorted(directory.iterdir()):
            if not f.name.startswith("."):
                tar.add(f, arcname=f.name)
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def adapters(loraplane_home: Path) -> dict[str, Path]:
    from tests.support.adapters import ensure_adapters

    return ensure_adapters(loraplane_home)


@pytest.fixture(scope="module")
def ca_dir(loraplane_home: Path) -> Path:
    # On the host, mounted into the base model's pods (hostPath), like a CA bundle a platform
    # team ships in a ConfigMap or on the nodes.
    return loraplane_home / "test-ca"


@pytest.fixture(scope="module")
def sources(
    adapters: dict[str, Path], ca_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sources]:
    ca = make_ca(ca_dir, hosts=(GATEWAY, LOCALHOST))
    site = tmp_path_factory.mktemp("site")
    sums = {f: _tarball(adapters[f], site / f"{f}.tgz") for f in ("rank8", "rank8-v2")}
    with (
        https_files(site, ca, host=GATEWAY) as https,
        versitygw(tmp_path_factory.mktemp("s3"), ca, *KEYS, host=GATEWAY) as s3,
    ):
        s3.make_bucket(BUCKET)
        s3.upload(BUCKET, "rank8", adapters["rank8"])
        yield Sources(https, s3, sums)


@pytest.fixture(scope="module")
def base(
    operator: OperatorProcess,
    tiny_model: Path,
    loraplane_home: Path,
    sources: Sources,
    ca_dir: Path,
) -> Iterator[Cluster]:
    """The base model's pod mounts the servers' CA, made by `sources`."""
    c = operator.cluster
    c.kubectl("delete", "namespace", NS, "--wait=true", "--timeout=180s", check=False)
    c.kubectl("create", "namespace", NS)
    body = tiny_base_model(BASE, loraplane_home, replicas=1)
    template = body["spec"]["template"]
    template["volumes"].append({"name": "source-ca", "hostPath": {"path": str(ca_dir)}})
    template["volumeMounts"].append(
        {"name": "source-ca", "mountPath": SOURCE_CA_DIR, "readOnly": True}
    )
    c.apply(body, NS)
    wait_for("the base model's pod Ready", lambda: _pod(c), timeout=480)
    yield c
    c.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _pod(c: Cluster) -> dict[str, Any] | None:
    pods = [p for p in c.list("pods", NS, SELECTOR) if pod_ready(p)]
    return pods[0] if pods else None


def _adapter(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LoRAAdapter",
        "metadata": {"name": name},
        "spec": {"baseModel": BASE, "source": source},
    }


def _url(s: Sources, name: str, sha256: str) -> dict[str, Any]:
    return {"url": {"url": f"{s.https.url}/{name}", "sha256": sha256}}


def _s3(s: Sources, prefix: str, secret: str) -> dict[str, Any]:
    return {
        "s3": {
            "uri": f"s3://{BUCKET}/{prefix}",
            "endpoint": s.s3.url,
            "credentialsSecretRef": {"name": secret},
        }
    }


def _keys_secret(name: str, access: str, secret: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret},
    }


def _ready(c: Cluster, name: str) -> dict[str, Any] | None:
    obj = c.get("lora", name, NS)
    status = (obj or {}).get("status") or {}
    ok = status.get("phase") == "Ready"
    return obj if ok and status.get("observedGeneration") == obj["metadata"]["generation"] else None  # type: ignore[index]


def _reason(c: Cluster, name: str) -> str | None:
    """Why the adapter does not serve: the Validated reason of a verdict, else Ready's."""
    obj = c.get("lora", name, NS)
    validated = condition(obj, "Validated") or {}
    if validated.get("status") == "False":
        return str(validated.get("reason"))
    ready = condition(obj, "Ready") or {}
    return str(ready.get("reason")) if ready.get("status") == "False" else None


def test_url_and_s3_adapters_answer_as_the_same_files_from_a_path(
    base: Cluster, sources: Sources
) -> None:
    base.apply(_keys_secret("s3-keys", *KEYS), NS)
    base.apply(lora_adapter("from-path", BASE, f"{ADAPTER_SOURCES}/rank8"), NS)
    base.apply(_adapter("from-url", _url(sources, "rank8.tgz", sources.sums["rank8"])), NS)
    base.apply(_adapter("from-s3", _s3(sources, "rank8", "s3-keys")), NS)
    ready = {
        n: wait_for(f"{n} Ready", lambda n=n: _ready(base, n), timeout=240)
        for n in ("from-path", "from-url", "from-s3")
    }
    digests = {n: o["status"]["adapter"]["digest"] for n, o in ready.items()}
    assert len(set(digests.values())) == 1, digests
    ip = _pod(base)["status"]["podIP"]  # type: ignore[index]
    answers = {n: completion(ip, n, PROMPT, tokens=16) for n in ready}
    assert len(set(answers.values())) == 1, answers
    assert answers["from-path"] != completion(ip, BASE, PROMPT, tokens=16)
    # The keys are the operator's to read, never anyone's to see.
    for obj in ready.values():
        assert KEYS[1] not in str(obj)
    events = base.kubectl("get", "events", "-n", NS, "-o", "json").stdout
    assert KEYS[1] not in events


def test_bad_sources_fail_each_with_its_reason_while_the_others_serve(
    base: Cluster, sources: Sources
) -> None:
    wrong = "0" * 64
    base.apply(_keys_secret("s3-wrong", KEYS[0], "not-the-secret"), NS)
    base.apply(_adapter("tampered", _url(sources, "rank8.tgz", wrong)), NS)
    base.apply(_adapter("missing", _url(sources, "gone.tgz", wrong)), NS)
    base.apply(_adapter("wrong-key", _s3(sources, "rank8", "s3-wrong")), NS)
    expected = {
        "tampered": "DigestMismatch",
        "missing": "AdapterNotFound",
        "wrong-key": "SourceUnauthorized",
    }
    for name, reason in expected.items():
        wait_for(f"{name}: {reason}", lambda n=name, r=reason: _reason(base, n) == r, timeout=120)
    assert _ready(base, "tampered") is None and _ready(base, "wrong-key") is None
    ip = _pod(base)["status"]["podIP"]  # type: ignore[index]
    for name in ("from-path", "from-url", "from-s3"):
        assert _ready(base, name) is not None, name
        completion(ip, name, PROMPT)
    for name in expected:
        base.kubectl("delete", "lora", name, "-n", NS, "--wait=true", "--timeout=120s")


def test_a_new_pin_loads_the_new_version_in_place(base: Cluster, sources: Sources) -> None:
    before = _ready(base, "from-url")["status"]["adapter"]["digest"]  # type: ignore[index]
    base.apply(lora_adapter("v2-path", BASE, f"{ADAPTER_SOURCES}/rank8-v2"), NS)
    base.apply(_adapter("from-url", _url(sources, "rank8-v2.tgz", sources.sums["rank8-v2"])), NS)

    def new_version() -> dict[str, Any] | None:
        obj = _ready(base, "from-url")
        return obj if obj and obj["status"]["adapter"]["digest"] != before else None

    wait_for("from-url Ready with its new version", new_version, timeout=180)
    path = wait_for("v2-path Ready", lambda: _ready(base, "v2-path"), timeout=180)
    assert new_version()["status"]["adapter"]["digest"] == path["status"]["adapter"]["digest"]  # type: ignore[index]
    ip = _pod(base)["status"]["podIP"]  # type: ignore[index]
    assert completion(ip, "from-url", PROMPT, tokens=16) == completion(
        ip, "v2-path", PROMPT, tokens=16
    )

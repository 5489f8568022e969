"""One FAKE pod: its vLLM (hack/fakevllm's app) and its agent, both answered in this process.

The agent side follows loraplane.agent.protocol (routes, bodies, status codes, the bearer token)
and the real agent's answers for `path` sources: the files are inspected and validated by
loraplane's own code, once per source directory, and the answer names the version directory
`/adapters/<name>/<hex digest>` as the real store does. Nothing is copied: the pod's store is a
table from that path to the source directory, and its vLLM reads the adapter's config through
the same table, as the real pod's vLLM reads the agent's copy through the shared volume.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fakevllm import FakeVLLM, Response, json_response, parse_args
from loraplane.adapters.inspect import AdapterInspectionError, inspect_adapter
from loraplane.adapters.sources import version_dir
from loraplane.adapters.validate import BaseModelFacts, errors, llama_base_facts, validate
from loraplane.agent import protocol
from loraplane.agent.store import status_summary
from loraplane.builders import naming
from loraplane.config import env_name
from loraplane.vllm.errors import classify, error_class
from processnode.util import now

Obj = dict[str, Any]
# What the real pod's vLLM takes per load and unload (DESIGN.md §4, hack/fakevllm): awaited here
# rather than slept, so one process can hold a hundred engines' delays at once.
LOAD_SECONDS = (0.010, 0.020)
UNLOAD_SECONDS = 0.001


def _quiet(message: str) -> None:
    """A hundred fakes logging every load would cost more CPU than they answer with."""


def mounts_of(pod: Obj, container: str) -> list[tuple[str, str]]:
    """(mountPath, host path) of the container's hostPath mounts, longest mount path first."""
    spec = pod["spec"]
    host = {
        v["name"]: v["hostPath"]["path"] for v in spec.get("volumes") or [] if v.get("hostPath")
    }
    found = []
    for c in spec.get("containers") or []:
        if c["name"] != container:
            continue
        for m in c.get("volumeMounts") or []:
            if m["name"] in host:
                source = host[m["name"]].rstrip("/")
                if m.get("subPath"):
                    source += "/" + m["subPath"]
                found.append((m["mountPath"].rstrip("/") or "/", source))
    return sorted(found, key=lambda m: -len(m[0]))


def resolve(mounts: list[tuple[str, str]], path: str) -> str | None:
    for mount, host in mounts:
        if path == mount or path.startswith(mount + "/"):
            return host + path[len(mount) :]
    return None


def container_id() -> str:
    """Shaped like the process node's `process://<32 hex>`, and named as a fake."""
    return f"fakepods://{secrets.token_hex(16)}"


@dataclass
class Verdict:
    """A source directory inspected once: what every pod's agent answers for it."""

    summary: Any  # loraplane.adapters.inspect.Inspection
    error: tuple[str, str] | None  # (reason, message) of an inspection refusal


class Inspections:
    """Source directory -> its inspection, shared by every fake pod of the process: a hundred
    real agents would each hash the same files; the operator sees the same answers either way."""

    def __init__(self) -> None:
        self._done: dict[str, Verdict] = {}
        # (directory, max rank, base model, pickled policy) -> the fetch's answer, its path aside
        self.answers: dict[
            tuple[str, int, str | None, str], protocol.Fetched | protocol.Rejection
        ] = {}

    def of(self, directory: str) -> Verdict:
        verdict = self._done.get(directory)
        if verdict is None:
            try:
                verdict = Verdict(inspect_adapter(Path(directory)), None)
            except AdapterInspectionError as exc:
                verdict = Verdict(None, (str(exc.reason), str(exc)))
            except (FileNotFoundError, NotADirectoryError) as exc:
                verdict = Verdict(None, ("AdapterNotFound", f"no adapter at {directory}: {exc}"))
            self._done[directory] = verdict
        return verdict


def _model(body: BaseModel, status: int = 200) -> Response:
    return json_response(status, body.model_dump(mode="json", by_alias=True))


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


class FakePod:
    """The servers of one pod: `vllm` and the agent, at `ip`."""

    def __init__(self, pod: Obj, ip: str, token: str, inspections: Inspections) -> None:
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.pod = pod
        self.ip = ip
        self.token = token
        self.inspections = inspections
        self.started_at = now()
        self.containers = [c["name"] for c in pod["spec"]["containers"]]
        self.ids = {c: container_id() for c in self.containers}
        self.starts = dict.fromkeys(self.containers, self.started_at)
        self.restarts = dict.fromkeys(self.containers, 0)
        self.last_state: dict[str, Obj] = {c: {} for c in self.containers}
        self.vllm_mounts = mounts_of(pod, naming.VLLM_CONTAINER)
        self.agent_mounts = mounts_of(pod, naming.AGENT_CONTAINER)
        self.store: dict[str, str] = {}  # version directory in the pod -> source directory
        self.required: list[str] = []
        self.agent_calls: dict[str, int] = {}
        # of the servers before a restart, from outside the pod and from its agent
        self.past_vllm_calls: dict[str, int] = {}
        self.past_in_pod_calls: dict[str, int] = {}
        self.vllm_ready = True
        self.vllm = self._new_vllm()
        self._engine = asyncio.Lock()  # vLLM's engine core runs one add_lora at a time

    def _new_vllm(self) -> FakeVLLM:
        container = self._container(naming.VLLM_CONTAINER)
        env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
        config = parse_args([str(a) for a in container.get("args") or []], env)
        config.load_seconds, config.unload_seconds = (0.0, 0.0), 0.0  # awaited in `vllm_call`
        server = FakeVLLM(config)
        server.pod = self.name
        server.resolve_path = self._vllm_path
        server.log = _quiet
        return server

    def _vllm_path(self, path: str) -> str:
        """What the vLLM container sees at `path`: the store's table, then its mounts."""
        if path.rstrip("/") in self.store:
            return self.store[path.rstrip("/")]
        # Outside its mounts a process node's container sees the host's files.
        return resolve(self.vllm_mounts, path) or path

    # -- the vLLM container ------------------------------------------------------------------

    def restart_vllm(self) -> None:
        """As a killed vLLM container comes back: every runtime registration lost, a new
        container ID, the restart counted; not ready until `vllm_started`."""
        vllm, ended = naming.VLLM_CONTAINER, now()
        self.last_state[vllm] = {
            "terminated": {
                "exitCode": 137,  # SIGKILL, as the benchmark's kill of a real one
                "reason": "Error",
                "startedAt": self.starts[vllm],
                "finishedAt": ended,
                "containerID": self.ids[vllm],
            }
        }
        self.ids[vllm], self.starts[vllm] = container_id(), ended
        self.restarts[vllm] += 1
        for key, n in self.vllm.remote_counts.items():
            self.past_vllm_calls[key] = self.past_vllm_calls.get(key, 0) + n
        for key, n in self.vllm.local_counts.items():
            self.past_in_pod_calls[key] = self.past_in_pod_calls.get(key, 0) + n
        self.vllm = self._new_vllm()
        self.vllm_ready = False

    async def vllm_call(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        address: str,
        local: bool = False,
    ) -> Response:
        if method == "POST" and self.vllm.config.runtime_updating:
            if path == "/v1/load_lora_adapter" and self._reaches_engine(body):
                async with self._engine:
                    await asyncio.sleep(random.uniform(*LOAD_SECONDS))
            elif path == "/v1/unload_lora_adapter":
                await asyncio.sleep(UNLOAD_SECONDS)
        return self.vllm.dispatch(method, path, headers, body, local, address)

    def _reaches_engine(self, body: bytes) -> bool:
        """vLLM answers a second load of a name before its engine is asked."""
        try:
            request = json.loads(body)
            return request.get("lora_name") not in self.vllm.adapters or bool(
                request.get("load_inplace")
            )
        except (ValueError, AttributeError):
            return False

    def agent_ready(self) -> bool:
        """The agent's /readyz: vLLM up and every required name registered."""
        return self.vllm_ready and all(n in self.vllm.adapters for n in self.required)

    # -- the agent container -----------------------------------------------------------------

    async def agent_call(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Response:
        key = f"{method} {path}"
        self.agent_calls[key] = self.agent_calls.get(key, 0) + 1
        if path == protocol.HEALTHZ:
            return _text(200, "ok")
        if path == protocol.READYZ:
            return _text(200 if self.agent_ready() else 503, "")
        if headers.get("authorization", "") != f"Bearer {self.token}" or not self.token:
            return _text(401, "missing or wrong agent token")  # aiohttp's body for the agent's
        try:
            if (method, path) == ("POST", protocol.APPLY):
                return await self._apply(protocol.ApplyRequest.model_validate_json(body))
            if (method, path) == ("PUT", protocol.REQUIRED):
                self.required = protocol.RequiredAdapters.model_validate_json(body).adapters
                return _model(protocol.RequiredAdapters(adapters=self.required))
            if (method, path) == ("GET", protocol.REQUIRED):
                return _model(protocol.RequiredAdapters(adapters=self.required))
            if (method, path) == ("POST", protocol.PRUNE):
                return self._prune(protocol.PruneRequest.model_validate_json(body).keep)
            if (method, path) == ("GET", protocol.RESIDENCY):
                # hack/fakevllm runs no engine plugin, so there is no snapshot to read.
                return _model(protocol.Residency(available=False))
        except ValidationError as exc:
            return _text(400, f"400: bad request: {exc.error_count()} problem(s)")
        return _text(404, "404: Not Found")

    def _facts(self, req: protocol.FetchRequest) -> BaseModelFacts:
        env = self._container(naming.AGENT_CONTAINER).get("env") or []
        model = next((e.get("value") for e in env if e["name"] == env_name("model_path")), None)
        config = resolve(self.agent_mounts, model + "/config.json") if model else None
        if config is not None and Path(config).is_file():
            try:
                return llama_base_facts(
                    Path(config),
                    max_lora_rank=req.max_lora_rank,
                    model_name=model,
                    deployment=req.base_model,
                )
            except (ValueError, OSError):
                pass
        return BaseModelFacts(max_lora_rank=req.max_lora_rank, deployment=req.base_model)

    def _container(self, name: str) -> Obj:
        return next(c for c in self.pod["spec"]["containers"] if c["name"] == name)

    async def _apply(self, req: protocol.ApplyRequest) -> Response:
        """The real agent's answer, one line per adapter, all at once (it streams them)."""
        lines = []
        for item in req.adapters:
            applied = await self._apply_one(item)
            lines.append(applied.model_dump_json(by_alias=True, exclude_none=True) + "\n")
        return Response(200, "".join(lines).encode(), protocol.APPLY_CONTENT_TYPE)

    async def _apply_one(self, item: protocol.ApplyItem) -> protocol.Applied:
        answer = self._fetch(item)
        if isinstance(answer, protocol.Rejection):
            return protocol.Applied(name=item.name, rejected=answer)
        if isinstance(answer, protocol.Unavailable):
            return protocol.Applied(name=item.name, unavailable=answer)
        if isinstance(answer, str):
            return protocol.Applied(name=item.name, error=answer)
        out = protocol.Applied(name=item.name, fetched=answer, fetch_seconds=0.0)
        pinned = item.expected_digest is not None and answer.summary.digest == item.expected_digest
        if not item.load or not pinned or item.registered_path == answer.path:
            return out
        body: Obj = {"lora_name": item.served_name, "lora_path": answer.path}
        if item.registered_path is not None:
            body["load_inplace"] = True
        keys = self.vllm.config.api_keys  # the real agent has the pod's key in its env
        headers = {"content-type": "application/json"}
        if keys:
            headers["authorization"] = f"Bearer {keys[0]}"
        loopback = f"127.0.0.1:{self.vllm.config.port}"
        answered = await self.vllm_call(
            "POST", "/v1/load_lora_adapter", headers, json.dumps(body).encode(), loopback, True
        )
        if answered.status == 200:
            out.loaded = True
        else:
            # The operator's own classification of vLLM's answer, as the real agent does.
            error = classify(answered.status, answered.body)
            out.load_failure = protocol.LoadFailure(
                reason=str(error.reason),
                message=error.message,
                permanent=error.permanent,
                error_class=error_class(error),
            )
        out.load_seconds = 0.0
        return out

    def _fetch(
        self, req: protocol.FetchRequest
    ) -> protocol.Fetched | protocol.Rejection | protocol.Unavailable | str:
        """As the real store answers: the verified version, a refusal, the source unavailable
        now, or trouble worth a retry (a text)."""
        source = req.source.path
        if source is None:
            # A fake limit, not the agent's: only sources on the pod's volumes are served here.
            return "fakepods serves only `path` sources"
        directory = resolve(self.agent_mounts, source) or source
        verdict = self.inspections.of(directory)
        if verdict.error is not None:
            reason, message = verdict.error
            message = message.replace(directory, source)  # as the agent in the pod sees it
            if req.expected_digest is not None:
                missing = protocol.SOURCE_UNAVAILABLE if reason == "AdapterNotFound" else None
                return protocol.Unavailable(
                    reason=missing or protocol.SOURCE_CHANGED,
                    message=f"the source no longer holds version {req.expected_digest}: "
                    f"{message}; no peer holds it",
                )
            return protocol.Rejection(reason=reason, message=message)
        summary = verdict.summary
        pinned = req.expected_digest
        if pinned is not None and summary.digest != pinned and not req.follow:
            problem = f"the source now holds {summary.digest}, not the pinned {pinned}"
            return protocol.Unavailable(
                reason=protocol.SOURCE_CHANGED, message=problem + "; no peer holds it"
            )
        # What the files are judged against; a hundred pods of one base ask the same.
        key = (directory, req.max_lora_rank, req.base_model, req.pickled_adapters)
        answer = self.inspections.answers.get(key)
        if answer is None:
            findings = validate(summary, self._facts(req), pickled_adapters=req.pickled_adapters)
            bad = errors(findings)
            if bad:
                answer = protocol.Rejection(
                    reason=bad[0].reason,
                    message="; ".join(f.message for f in bad),
                    findings=findings,
                )
            else:
                answer = protocol.Fetched(
                    path="", summary=status_summary(summary), findings=findings
                )
            self.inspections.answers[key] = answer
        if isinstance(answer, protocol.Rejection):
            return answer
        path = str(version_dir(naming.ADAPTER_MOUNT_PATH, req.name, summary.digest))
        self.store[path] = directory
        return answer.model_copy(update={"path": path})

    def _prune(self, keep: Mapping[str, str]) -> Response:
        removed = []
        for path in list(self.store):
            entry = naming.store_entry(path)
            if entry is not None and keep.get(entry[0]) != entry[1]:
                del self.store[path]
                removed.append(f"{entry[0]}/{entry[1]}")
        return _model(protocol.PruneResult(removed=sorted(removed)))

    # -- what the kubelet reports ------------------------------------------------------------

    def container_statuses(self) -> list[Obj]:
        """As the process node's runner reports them (same keys and shapes)."""
        out = []
        for c in self.pod["spec"]["containers"]:
            name = c["name"]
            ready = self.vllm_ready if name == naming.VLLM_CONTAINER else self.agent_ready()
            out.append(
                {
                    "name": name,
                    "image": c.get("image", ""),
                    "imageID": f"fakepods://{c.get('image', '')}",
                    "ready": ready,
                    "started": True,
                    "restartCount": self.restarts[name],
                    "state": {"running": {"startedAt": self.starts[name]}},
                    "lastState": self.last_state[name],
                    "containerID": self.ids[name],
                }
            )
        return out

    def stats(self) -> Obj:
        return {
            "namespace": self.namespace,
            "ip": self.ip,
            "vllm": {
                k: self.past_vllm_calls.get(k, 0) + self.vllm.remote_counts.get(k, 0)
                for k in {*self.past_vllm_calls, *self.vllm.remote_counts}
            },
            "inPod": {
                k: self.past_in_pod_calls.get(k, 0) + self.vllm.local_counts.get(k, 0)
                for k in {*self.past_in_pod_calls, *self.vllm.local_counts}
            },
            "agent": dict(self.agent_calls),
            "adapters": len(self.vllm.adapters),
            "stored": len(self.store),
        }

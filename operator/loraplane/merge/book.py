"""The operator's view of merged pods: which version each merges or serves, and which versions
failed. Its only writer is the merged pods' watch (`observe`) and the base model's reconcile
(`judge`); rebuilt from the watch after a restart, failures from the status (`restore`).

A failure is remembered with what it was judged against, the version's digest and the base
model's generation: a new version or a spec change tries again, the same one never loops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from loraplane.api.base_model import MergedPodState
from loraplane.builders import naming
from loraplane.merge.inputs import ANNOTATION, INIT_CONTAINER, MergeInputs

Key = tuple[str, str]


@dataclass(frozen=True)
class MergedPodView:
    name: str
    base_model: str
    inputs: MergeInputs | None  # the version its template pins
    state: MergedPodState
    failure: tuple[str, str] | None = None  # (reason, message) of a failed merge
    deleting: bool = False

    @property
    def digest(self) -> str | None:
        return self.inputs.digest if self.inputs is not None else None


@dataclass(frozen=True)
class Failed:
    digest: str
    generation: int
    reason: str
    message: str


def inputs_of(template_or_pod: Mapping[str, Any]) -> MergeInputs | None:
    """The version a pod or pod template pins (None: not a merged one)."""
    raw = ((template_or_pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if not raw:
        return None
    try:
        return MergeInputs.model_validate_json(raw)
    except ValidationError:
        return None


def _failure(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of a merge init container that failed (now or in its last run)."""
    for state in (status.get("state") or {}, status.get("lastState") or {}):
        done = state.get("terminated")
        if done and done.get("exitCode") != 0:
            text = str(done.get("message") or "").strip()
            reason, sep, message = text.partition(": ")
            if sep and reason.isidentifier():
                return reason, message
            code = done.get("exitCode")
            return str(done.get("reason") or "MergeFailed"), text or f"exit code {code}"
    return None


def pod_state(pod: Mapping[str, Any]) -> tuple[MergedPodState, tuple[str, str] | None]:
    status = pod.get("status") or {}
    merge: Mapping[str, Any] = next(
        (s for s in status.get("initContainerStatuses") or [] if s.get("name") == INIT_CONTAINER),
        {},
    )
    failure = _failure(merge)
    if failure is not None:
        return "Failed", failure
    if ((merge.get("state") or {}).get("terminated") or {}).get("exitCode") != 0:
        return "Merging", None
    vllm: Mapping[str, Any] = next(
        (
            s
            for s in status.get("containerStatuses") or []
            if s.get("name") == naming.VLLM_CONTAINER
        ),
        {},
    )
    return ("Serving" if vllm.get("ready") else "Starting"), None


@dataclass
class MergeBook:
    pods: dict[Key, MergedPodView] = field(default_factory=dict)
    # base key -> digest -> the failure of its merge
    failures: dict[Key, dict[str, Failed]] = field(default_factory=dict)

    def observe(self, pod: Mapping[str, Any], deleted: bool = False) -> Key | None:
        """A merged pod's event; answers the base model to reconcile when something moved."""
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        base = (meta.get("labels") or {}).get(naming.LABEL_BASE_MODEL, "")
        if deleted:
            return (key[0], base) if self.pods.pop(key, None) is not None else None
        state, failure = pod_state(pod)
        view = MergedPodView(
            meta["name"], base, inputs_of(pod), state, failure, bool(meta.get("deletionTimestamp"))
        )
        if self.pods.get(key) == view:
            return None
        self.pods[key] = view
        return (key[0], base)

    def pods_of(self, namespace: str, base_model: str) -> list[MergedPodView]:
        return sorted(
            (
                p
                for (ns, _), p in self.pods.items()
                if ns == namespace and p.base_model == base_model
            ),
            key=lambda p: p.name,
        )

    def judge(self, base: Key, generation: int) -> None:
        """Remember each version a pod of the base failed to merge, at this generation."""
        for pod in self.pods_of(*base):
            if pod.failure is not None and pod.digest is not None:
                known = self.failures.setdefault(base, {}).get(pod.digest)
                if known is None or known.generation != generation:
                    self.failures[base][pod.digest] = Failed(pod.digest, generation, *pod.failure)

    def restore(self, base: Key, failed: Failed) -> None:
        """A failure the status recorded before a restart (the pod that failed may be gone)."""
        self.failures.setdefault(base, {}).setdefault(failed.digest, failed)

    def failure(self, base: Key, digest: str, generation: int) -> Failed | None:
        found = self.failures.get(base, {}).get(digest)
        return found if found is not None and found.generation == generation else None

    def last_failure(self, base: Key, generation: int) -> Failed | None:
        current = [f for f in self.failures.get(base, {}).values() if f.generation == generation]
        return current[-1] if current else None

    def serving(self, base: Key) -> MergeInputs | None:
        """The version most pods of the base serve now: the last good one."""
        counts: dict[str, tuple[int, MergeInputs]] = {}
        for pod in self.pods_of(*base):
            if pod.state == "Serving" and pod.inputs is not None and not pod.deleting:
                n, _ = counts.get(pod.inputs.digest, (0, pod.inputs))
                counts[pod.inputs.digest] = (n + 1, pod.inputs)
        if not counts:
            return None
        return max(counts.values(), key=lambda c: c[0])[1]

    def forget_base(self, base: Key) -> None:
        self.failures.pop(base, None)

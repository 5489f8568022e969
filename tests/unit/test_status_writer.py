"""The status writer: what it writes, what it holds back, and what it knows is its own.

The fleet is the real one; the API is a recorder of patches that answers as the API server does
(the patched object with a new resourceVersion), and kopf's Events land in a queue as kopf's
poster would take them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting

from loraplane.config import Settings
from loraplane.fleet import Fleet, Key, Version
from loraplane.status_writer import StatusWriter
from tests.unit.test_metrics import fetched, fleet_of, lora_obj

NS = "writer"
KEY = (NS, "a")


class API:
    """Patches as the API server takes them: each a new resourceVersion."""

    def __init__(self) -> None:
        self.version = 100
        self.patches: list[tuple[Key, dict[str, Any]]] = []
        self.release: asyncio.Event | None = None  # set: patches wait for it

    async def __call__(self, key: Key, body: dict[str, Any]) -> Mapping[str, Any]:
        if self.release is not None:
            await self.release.wait()
        self.patches.append((key, body))
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}, "status": body["status"]}

    def phases(self) -> list[str | None]:
        return [body["status"]["phase"] for _, body in self.patches]


@pytest.fixture(autouse=True)
def events() -> Iterator[None]:
    """A queue for kopf's Events, as its poster takes them (the writer announces transitions)."""
    loop = asyncio.new_event_loop()
    tokens = (
        posting.settings_var.set(kopf.OperatorSettings()),
        posting.event_queue_var.set(asyncio.Queue()),
        posting.event_queue_loop_var.set(loop),
    )
    yield
    posting.settings_var.reset(tokens[0])
    posting.event_queue_var.reset(tokens[1])
    posting.event_queue_loop_var.reset(tokens[2])
    loop.close()


def writer_of(fleet: Fleet, api: API, progress: float = 0.0) -> StatusWriter:
    settings = Settings(status_progress_seconds=progress, status_write_concurrency=1)
    rt = SimpleNamespace(fleet=fleet, settings=settings, api=None)
    return StatusWriter(rt, patch=api)  # type: ignore[arg-type]


def seen(status: dict[str, Any] | None, version: int) -> dict[str, Any]:
    """The adapter as the watch shows it at `version`."""
    obj = lora_obj(NS, "a")
    obj["metadata"]["resourceVersion"] = str(version)
    return {**obj, "status": status or {}}


def looked_at(fleet: Fleet, *pods: str) -> None:
    for pod in pods:
        fleet.record_registrations((NS, pod), {})


def registered(fleet: Fleet, pod: str) -> None:
    path = f"/adapters/a/{'a' * 64}"
    fleet.set_state((NS, pod), "a", "Registered", path=path, container="c1")


def pin(fleet: Fleet) -> None:
    judged = fleet.judgement(KEY)
    assert judged is not None
    f = fetched("a")
    fleet.record_version(KEY, judged, Version(judged, f.path, f.summary))


def test_the_writers_own_echo_is_known_by_its_version_and_a_hand_edit_is_put_right() -> None:
    fleet, api = fleet_of(NS, "a"), API()
    writer = writer_of(fleet, api)
    looked_at(fleet, "p0", "p1")

    async def run() -> None:
        writer.observe(seen(None, 1))
        assert fleet.take_stale(set()) == KEY  # no status yet: ours is due
        await writer.write(KEY)
        ((_, body),) = api.patches
        fleet.stale.clear()
        # The watch shows our write: recognised by its version alone, not even parsed (a body
        # that would not parse shows it).
        writer.observe(seen({"phase": ["not", "a", "phase"]}, api.version))
        assert not fleet.stale
        # An older view catching up is no news either.
        writer.observe(seen(None, 50))
        assert not fleet.stale
        # Someone edits the status: a newer version that is not ours.
        writer.observe(seen({**body["status"], "phase": "Ready"}, api.version + 5))
        assert fleet.take_stale(set()) == KEY
        await writer.write(KEY)
        assert len(api.patches) == 2 and api.patches[1][1] == body  # ours, whole, again

    asyncio.run(run())


def test_progress_within_a_phase_waits_and_a_transition_is_written_at_once() -> None:
    fleet, api = fleet_of(NS, "a"), API()
    writer = writer_of(fleet, api, progress=3600.0)  # progress would wait an hour
    looked_at(fleet, "p0", "p1")
    pin(fleet)

    async def run() -> None:
        writer.observe(seen(None, 1))
        await writer.write(KEY)  # the first status: a transition from none
        assert api.phases() == ["Loading"]
        registered(fleet, "p0")  # 1 of 2 pods: progress within Loading
        await writer.write(KEY)
        assert api.phases() == ["Loading"]
        assert KEY in writer.deferred  # woken again when due, not lost
        registered(fleet, "p1")  # 2 of 2: Ready, a transition
        await writer.write(KEY)
        assert api.phases() == ["Loading", "Ready"]
        status = api.patches[-1][1]["status"]
        assert status["replicas"]["registered"] == 2

    asyncio.run(run())


def test_changes_during_a_write_coalesce_into_one_more() -> None:
    fleet, api = fleet_of(NS, "a"), API()
    writer = writer_of(fleet, api)
    looked_at(fleet, "p0", "p1")
    pin(fleet)

    async def run() -> None:
        api.release = asyncio.Event()
        writer.observe(seen(None, 1))
        writer.start()
        await asyncio.sleep(0.05)  # the first write waits on the API
        assert writer.busy == {KEY}
        registered(fleet, "p0")
        registered(fleet, "p1")
        fleet.wake(KEY)
        api.release.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not fleet.stale and not writer.busy and len(api.patches) >= 2:
                break
        await writer.stop()

    asyncio.run(run())
    # The write in flight, then one for the three changes made during it: not three more.
    assert api.phases() == ["Loading", "Ready"]
    assert api.patches[-1][1]["status"]["replicas"]["registered"] == 2

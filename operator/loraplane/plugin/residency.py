"""Engine residency: which adapters sit in vLLM's GPU slots and CPU cache, and every eviction.

Installed into vLLM's worker by the general plugin (`loraplane.plugin.register`). It wraps six
methods of vLLM's LoRA managers, run on vLLM 0.32.0 (CPU) and found with the same signatures in
the 0.24.0, 0.28.0 and 0.31.0 CPU wheels and the 0.33.0 CUDA wheel:

- `LRUCacheWorkerLoRAManager.create_lora_manager`: the engine's LRU manager is made; this process
  hosts the weights, so it publishes.
- `LRUCacheWorkerLoRAManager.add_adapter`: the last place the adapter's name is known; the
  manager below it knows integer ids only, so the id-to-name map is kept here. Called every step
  for every adapter in the batch: the wrapper does one dict store.
- `LRUCacheWorkerLoRAManager.remove_adapter`: an unload; the adapter's counts go with it.
- `WorkerLoRAManager._load_adapter`: the read of an adapter's files from disk.
- `LRUCacheLoRAModelManager.remove_oldest_adapter`: the CPU cache's LRU eviction (an adapter in a
  GPU slot loses that too).
- `LRUCacheLoRAModelManager.activate_adapter`: an adapter takes a GPU slot and, when all are
  taken, the least recently used one loses its own. Called every step for every adapter in the
  batch: an adapter already in a slot passes straight through.

Events are counted by the name vLLM serves (vLLM's `warmup_*` dummies are skipped). Nothing here
takes a lock or does I/O on the engine's thread: the wrappers bump counters and a change number,
and a daemon thread writes the snapshot (`loraplane.plugin.snapshot`) when the number moved.
Before patching, every method is checked for its expected signature; a vLLM where one differs
gets one log line and no patch at all. Each wrapper always makes vLLM's own call and returns its
answer; an error in the bookkeeping around it turns the plugin off for good, with one log line.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from loraplane.plugin import log, say_off, snapshot

WORKER_MODULE: Final = "vllm.lora.worker_manager"
MANAGER_MODULE: Final = "vllm.lora.model_manager"
# vLLM names the dummy adapters of its warm-up runs so (v1/worker/lora_model_runner_mixin.py).
WARMUP_PREFIX: Final = "warmup_"
# How often the writer looks for changes: a snapshot trails the engine by at most this much.
POLL_SECONDS: Final = 0.1
# Set on every function this module installed, so a second install in the same process (vLLM
# loads plugins once per process, but a forked child inherits the parent's classes) is a no-op.
MARK: Final = "__loraplane_residency__"
T = TypeVar("T")


@dataclass(frozen=True)
class Hook:
    module: str
    cls: str
    method: str
    params: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.cls}.{self.method}"


HOOKS: Final = (
    Hook(WORKER_MODULE, "LRUCacheWorkerLoRAManager", "create_lora_manager",
         ("self", "model", "vllm_config")),
    Hook(WORKER_MODULE, "LRUCacheWorkerLoRAManager", "add_adapter", ("self", "lora_request")),
    Hook(WORKER_MODULE, "LRUCacheWorkerLoRAManager", "remove_adapter", ("self", "adapter_id")),
    Hook(WORKER_MODULE, "WorkerLoRAManager", "_load_adapter", ("self", "lora_request")),
    Hook(MANAGER_MODULE, "LRUCacheLoRAModelManager", "remove_oldest_adapter", ("self",)),
    Hook(MANAGER_MODULE, "LRUCacheLoRAModelManager", "activate_adapter", ("self", "lora_id")),
)  # fmt: skip
# What the wrappers read off vLLM's LRU manager: checked when it is made, before any use.
MANAGER_ATTRS: Final = ("_active_adapters", "_registered_adapters", "lora_slots", "capacity")


class Unsupported(Exception):
    """This vLLM lacks a hook, or has one with another signature."""


def resolve(hooks: tuple[Hook, ...] = HOOKS) -> dict[Hook, tuple[type, Callable[..., Any]]]:
    """Each hook's class and current function; raises Unsupported naming the first mismatch."""
    found: dict[Hook, tuple[type, Callable[..., Any]]] = {}
    for hook in hooks:
        try:
            cls = getattr(importlib.import_module(hook.module), hook.cls)
        except (ImportError, AttributeError) as exc:
            raise Unsupported(f"no {hook.module}.{hook.cls} ({exc})") from exc
        func = getattr(cls, hook.method, None)
        if not callable(func):
            raise Unsupported(f"no {hook.where}")
        params = tuple(inspect.signature(func).parameters)
        if params != hook.params:
            raise Unsupported(
                f"{hook.where}({', '.join(params)}) is not ({', '.join(hook.params)})"
            )
        found[hook] = (cls, func)
    return found


@dataclass
class Counts:
    path: str
    activations: int = 0
    gpu_evictions: int = 0
    cpu_evictions: int = 0
    disk_loads: int = 0
    disk_load_seconds: float = 0.0


class Residency:
    """What one engine's LoRA manager holds, by served name. Written on the engine thread only."""

    def __init__(self, directory: str, vllm_version: str) -> None:
        self.directory = directory
        self.vllm_version = vllm_version
        self.names: dict[int, str] = {}  # vLLM's integer id -> served name (warm-ups: absent)
        self.adapters: dict[str, Counts] = {}
        self.gpu: frozenset[str] = frozenset()
        self.cpu: frozenset[str] = frozenset()
        self.manager: Any = None
        self.changes = 0  # bumped on every change; the writer compares it with what it wrote
        self.off = False  # set for good by the first error of our own

    # -- called by the wrappers, on the engine's thread ----------------------------------------

    def attach(self, manager: Any) -> None:
        missing = [a for a in MANAGER_ATTRS if not hasattr(manager, a)]
        if missing:
            say_off(f"vLLM {self.vllm_version}'s LoRA manager has no {', '.join(missing)}")
            return
        if not _first_rank():
            return  # every tensor-parallel rank holds the same adapters: rank 0 speaks for all
        self.manager = manager
        self.changes += 1
        threading.Thread(target=self._write_loop, name="loraplane-residency", daemon=True).start()

    def guard(self, step: Callable[[], T]) -> T | None:
        """Run a step of bookkeeping; on any error, stop for good (one log line)."""
        if self.off:
            return None
        try:
            return step()
        except Exception as exc:
            self.off = True
            say_off(f"stopped after an unexpected error: {exc!r}")
            return None

    def in_slot(self, manager: Any, lora_id: int) -> bool:
        return lora_id in manager._active_adapters

    def held(self, manager: Any) -> tuple[set[int], set[int]]:
        """The ids in the manager's CPU cache and GPU slots, before a call that may evict."""
        return set(manager._registered_adapters), set(manager._active_adapters)

    def left(
        self, manager: Any, before: tuple[set[int], set[int]], activated: int | None = None
    ) -> None:
        """Count what the call evicted from each tier (and the activation it made)."""
        cached, active = before
        self.evicted(cached - set(manager._registered_adapters), "cpu")
        self.evicted(active - set(manager._active_adapters), "gpu")
        if activated is not None:
            self.activated(activated)
        self.refresh()

    def named(self, lora_request: Any) -> None:
        if self.names.get(lora_request.lora_int_id) == lora_request.lora_name:
            return  # the per-step call for an adapter already known: one dict read
        name = lora_request.lora_name
        if name.startswith(WARMUP_PREFIX):
            self.names.pop(lora_request.lora_int_id, None)
            return
        self.names[lora_request.lora_int_id] = name
        counts = self.adapters.get(name)
        if counts is None:
            self.adapters[name] = Counts(path=lora_request.lora_path)
            self.changes += 1
        elif counts.path != lora_request.lora_path:
            counts.path = lora_request.lora_path
            self.changes += 1

    def loaded(self, lora_request: Any, seconds: float) -> None:
        counts = self.adapters.get(lora_request.lora_name)
        if counts is not None:
            counts.disk_loads += 1
            counts.disk_load_seconds += seconds
            self.changes += 1

    def evicted(self, gone: set[int], tier: str) -> None:
        for lora_id in gone:
            counts = self.adapters.get(self.names.get(lora_id, ""))
            if counts is None:
                continue
            if tier == "gpu":
                counts.gpu_evictions += 1
            else:
                counts.cpu_evictions += 1

    def activated(self, lora_id: int) -> None:
        counts = self.adapters.get(self.names.get(lora_id, ""))
        if counts is not None:
            counts.activations += 1

    def removed(self, lora_id: int) -> None:
        name = self.names.pop(lora_id, None)
        if name is not None:
            self.adapters.pop(name, None)
        self.refresh()

    def refresh(self) -> None:
        """Read the tiers off the manager after a change (on the engine thread: no race)."""
        manager = self.manager
        if manager is None:
            return
        names = self.names
        gpu = {names[i] for i in list(manager._active_adapters) if i in names}
        cpu = {names[i] for i in list(manager._registered_adapters) if i in names} - gpu
        self.gpu, self.cpu = frozenset(gpu), frozenset(cpu)
        self.changes += 1

    # -- the writer thread ---------------------------------------------------------------------

    def snapshot(self) -> snapshot.Snapshot:
        manager = self.manager
        gpu, cpu = self.gpu, self.cpu
        adapters = {}
        for name, c in dict(self.adapters).items():  # a dict copy is atomic under the GIL
            tier: snapshot.Tier = "gpu" if name in gpu else "cpu" if name in cpu else "disk"
            adapters[name] = snapshot.AdapterResidency(
                path=c.path,
                tier=tier,
                activations=c.activations,
                gpu_evictions=c.gpu_evictions,
                cpu_evictions=c.cpu_evictions,
                disk_loads=c.disk_loads,
                disk_load_seconds=c.disk_load_seconds,
            )
        return snapshot.Snapshot(
            vllm_version=self.vllm_version,
            pid=os.getpid(),
            written_at=time.time(),
            gpu_slots=int(manager.lora_slots),
            cpu_slots=int(manager.capacity),
            adapters=adapters,
        )

    def _write_loop(self) -> None:
        written, at = -1, 0.0
        while not self.off:  # off: the snapshot goes stale and the agent drops it
            changes = self.changes
            if changes != written or time.monotonic() - at >= snapshot.HEARTBEAT_SECONDS:
                try:
                    snapshot.write(self.directory, self.snapshot())
                    written, at = changes, time.monotonic()
                except Exception as exc:  # never let the writer end serving
                    log.warning("loraplane residency: cannot write the snapshot: %r", exc)
                    time.sleep(snapshot.HEARTBEAT_SECONDS)
            time.sleep(POLL_SECONDS)


def _first_rank() -> bool:
    try:
        import torch.distributed as dist

        return not dist.is_initialized() or dist.get_rank() == 0
    except Exception:  # no torch.distributed: a single process
        return True


def _wrap(original: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, MARK, True)
    return wrapper


def _wrappers(state: Residency) -> dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """The wrapper of each hooked method. vLLM's own call always runs, with its own arguments,
    and its result or exception goes back unchanged; the bookkeeping around it goes through
    `state.guard`, so an error of ours turns the plugin off instead of reaching the engine."""

    def create_lora_manager(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, model: Any, vllm_config: Any) -> Any:
            result = original(self, model, vllm_config)
            state.guard(lambda: state.attach(self._adapter_manager))
            return result

        return wrapper

    def add_adapter(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, lora_request: Any) -> Any:
            state.guard(lambda: state.named(lora_request))
            return original(self, lora_request)

        return wrapper

    def remove_adapter(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, adapter_id: int) -> Any:
            result = original(self, adapter_id)
            state.guard(lambda: state.removed(adapter_id))
            return result

        return wrapper

    def load_adapter(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, lora_request: Any) -> Any:
            started = time.perf_counter()
            lora = original(self, lora_request)
            seconds = time.perf_counter() - started
            state.guard(lambda: state.loaded(lora_request, seconds))
            return lora

        return wrapper

    def remove_oldest_adapter(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any) -> Any:
            before = state.guard(lambda: state.held(self))
            result = original(self)
            if before is not None:
                state.guard(lambda: state.left(self, before))
            return result

        return wrapper

    def activate_adapter(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, lora_id: int) -> Any:
            # The per-step touch of an adapter in a slot passes straight through.
            before = state.guard(lambda: None if state.in_slot(self, lora_id) else state.held(self))
            result = original(self, lora_id)
            if before is not None:
                state.guard(lambda: state.left(self, before, activated=lora_id if result else None))
            return result

        return wrapper

    return {
        "create_lora_manager": create_lora_manager,
        "add_adapter": add_adapter,
        "remove_adapter": remove_adapter,
        "_load_adapter": load_adapter,
        "remove_oldest_adapter": remove_oldest_adapter,
        "activate_adapter": activate_adapter,
    }


def install(directory: str | None = None) -> Residency | None:
    """Patch vLLM's LoRA managers in this process; None when off (one log line says why)."""
    directory = directory or os.environ.get(snapshot.ENV_DIR)
    if not directory:
        return None  # not a pod of ours: nowhere to publish
    import vllm

    version = str(getattr(vllm, "__version__", "unknown"))
    try:
        found = resolve()
    except Unsupported as exc:
        say_off(f"vLLM {version}: {exc}")
        return None
    if any(getattr(func, MARK, False) for _cls, func in found.values()):
        return None  # installed already (inherited from the process that forked this one)
    state = Residency(directory, version)
    wrappers = _wrappers(state)
    for hook, (cls, func) in found.items():
        setattr(cls, hook.method, _wrap(func, wrappers[hook.method](func)))
    log.info("loraplane residency on: vLLM %s, publishing to %s", version, directory)
    return state

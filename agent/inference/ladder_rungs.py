"""The parts a degradation ladder is made of; `agent.inference.ladder` holds the state machine.

- reporting types: `LadderCode` (why the ladder is on its rung), `LadderMode` (where it
  stands, for health) and the `ChangeCallback` it calls on every rung change;
- a `Rung` (a name and a factory that loads its Backend) and how rungs are run: each rung's
  calls go to its own `RungThread` (so all CUDA work of a GPU rung stays on one thread), a
  rung being dropped is closed on that thread by `retire`, and `LoadedRung` / `PendingLoad`
  are the ladder's records of a serving rung and of a rung loading in the background;
- building rungs from config: `build_rungs` (one Rung per configured backend, by `type`
  through `DEFAULT_BUILDERS`), `onnxruntime_rung` (a strict ONNX Runtime rung), `is_cpu_rung`.

See docs/degradation.md.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import functools
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import onnxruntime as ort

from agent.config.inference import BackendConfig, OnnxRuntimeBackendConfig
from agent.config.ladder import LadderConfig, rung_key
from agent.inference.backend import Backend
from agent.inference.errors import BackendError
from agent.inference.model import ModelFolder
from agent.inference.onnxrt import CPU_PROVIDER, create_backend

log = logging.getLogger(__name__)

T = TypeVar("T")
RungFactory = Callable[[], Backend]
BackendBuilder = Callable[[Any, ModelFolder], Backend]
"""(rung config, model) -> a loaded Backend; raises on failure. One per backend `type`."""


class LadderCode(str, enum.Enum):
    """Why the ladder is on its current rung (health and events)."""

    OK = "ok"
    LOAD_FAILED = "load_failed"
    INFER_ERROR = "infer_error"
    INFER_TIMEOUT = "infer_timeout"
    CLIMBED_BACK = "climbed_back"


ChangeCallback = Callable[[str | None, str | None, LadderCode, str], None]
"""on_change(old_rung, new_rung, code, detail); None stands for 'no rung'."""


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: a name for health, a factory run on the rung's own thread."""

    name: str
    factory: RungFactory
    cpu: bool = False
    """A CPU rung: while degraded onto it, cameras are capped at cpu_fallback_max_fps."""


@dataclass(frozen=True)
class LadderMode:
    """Where the ladder stands; `rung` None means every rung is faulted."""

    rung: str | None
    backend: str | None
    degraded: bool
    code: LadderCode
    detail: str
    since: float
    max_fps: float | None
    """Per-camera fps cap that applies in this mode (None: no cap)."""
    faulted: Mapping[str, str] = field(default_factory=dict)
    """Rung name -> the last reason it failed, for rungs not currently healthy."""

    def to_health(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "backend": self.backend,
            "degraded": self.degraded,
            "code": self.code.value,
            "detail": self.detail,
            "max_fps": self.max_fps,
            "faulted": dict(self.faulted),
        }


# --- running rungs ----------------------------------------------------------------------


class RungThread:
    """A daemon thread running every call of one rung, in submission order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> cf.Future[T]:
        future: cf.Future[T] = cf.Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)

        self._jobs.put(job)
        return future

    def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """fn's result; raises what fn raised, or cf.TimeoutError (fn keeps running)."""
        return self.submit(fn).result(timeout_s)

    def stop(self) -> None:
        """End the thread after the jobs already queued (at once if it is idle)."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


def retire(thread: RungThread, source: Backend | cf.Future[Backend]) -> None:
    """Close a backend on its own thread once that thread is free, then end the thread.

    For a hung thread this runs only if the hung call ever returns; nobody waits for it.
    """

    def close() -> None:
        if isinstance(source, cf.Future):
            if source.cancelled() or source.exception() is not None:
                return
            backend = source.result()
        else:
            backend = source
        try:
            backend.close()
        except Exception as exc:
            log.warning("ladder backend close failed backend=%s error=%s", backend.name, exc)

    thread.submit(close)
    thread.stop()


@dataclass
class LoadedRung:
    """A rung whose backend loaded: the ladder's record of the rung serving (or probed)."""

    index: int
    rung: Rung
    backend: Backend
    thread: RungThread
    since: float = 0.0
    climbed: bool = False


@dataclass(frozen=True)
class PendingLoad:
    """A rung loading on its own thread (at start, or in the background to climb back)."""

    index: int
    thread: RungThread
    future: cf.Future[Backend]
    started: float


# --- building rungs from config -------------------------------------------------------


def onnxruntime_rung(cfg: OnnxRuntimeBackendConfig, model: ModelFolder) -> Backend:
    """An ONNX Runtime rung that is strictly what it says: its first provider must be the
    session's first provider (ORT would silently fall back to CPU; on a ladder that is a
    load failure, the CPU rung below exists for that)."""
    wanted = cfg.providers[0]
    available = ort.get_available_providers()
    if wanted not in available:
        msg = f"provider {wanted} is not in this onnxruntime build ({', '.join(available)})"
        raise BackendError(msg)
    backend = create_backend(cfg, model)
    if backend.providers[0] != wanted:
        backend.close()
        raise BackendError(f"session runs on {backend.providers[0]}, not {wanted}")
    return backend


DEFAULT_BUILDERS: Mapping[str, BackendBuilder] = {"onnxruntime": onnxruntime_rung}


def _missing_builder(kind: str) -> Backend:
    raise BackendError(f"backend type {kind!r} is not available in this agent")


def is_cpu_rung(cfg: BackendConfig) -> bool:
    providers: list[str] = getattr(cfg, "providers", None) or []
    return providers[:1] == [CPU_PROVIDER]


def build_rungs(
    cfg: LadderConfig, model: ModelFolder, builders: Mapping[str, BackendBuilder] | None = None
) -> list[Rung]:
    """One Rung per configured backend; `builders` adds or overrides a type's builder (e.g.
    {"tensorrt": create_tensorrt_backend}). A type without a builder fails to load."""
    table = {**DEFAULT_BUILDERS, **(builders or {})}
    rungs = []
    for rc in cfg.rungs:
        builder = table.get(rc.type)
        factory: RungFactory = (
            functools.partial(builder, rc, model)
            if builder is not None
            else functools.partial(_missing_builder, rc.type)
        )
        rungs.append(Rung(rung_key(rc), factory, cpu=is_cpu_rung(rc)))
    return rungs


__all__ = [
    "DEFAULT_BUILDERS",
    "BackendBuilder",
    "ChangeCallback",
    "LadderCode",
    "LadderMode",
    "LoadedRung",
    "PendingLoad",
    "Rung",
    "RungFactory",
    "RungThread",
    "build_rungs",
    "is_cpu_rung",
    "onnxruntime_rung",
    "retire",
]

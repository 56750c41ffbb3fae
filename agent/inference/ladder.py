"""The degradation ladder: a `Backend` that falls back along rungs and climbs back later.

    rung 0 (e.g. TensorRT EP) -> rung 1 (CUDA EP) -> rung 2 (CPU) -> none left: BackendError

This module holds the state machine, `DegradingBackend` (serve, degrade, climb back, switch),
and `build_ladder`, which makes one from config. The parts it is made of (the `Rung` and its
executor thread, the `LadderCode` / `LadderMode` reporting types, `build_rungs` and the
per-type builders) live in `agent.inference.ladder_rungs` and are re-exported here.

`DegradingBackend` starts on the best rung that loads. Every call of a rung (load, infer,
close) runs on that rung's own executor thread, so:

- all CUDA work of a GPU rung (context, engine, execution context, streams) stays on ONE
  thread for the rung's whole life, as CUDA and TensorRT require;
- a hung inference is detected: after `inference_timeout_s` the caller stops waiting, the
  rung is marked faulted, its thread abandoned (a daemon; it closes its backend if the call
  ever returns) and the same frame is retried on the next rung;
- `failures_to_degrade` consecutive errors also move down (the last rung is never left for
  errors: each failing frame raises BackendError there).

After `climb_back_after_s` on a lower rung the next `infer` starts loading the best rung
above in the background (the current rung keeps serving); once loaded, the frame at hand is
run on it as a probe: success switches up (the probe's outputs are that frame's result),
failure tries the next better rung, then doubles the delay (capped). Every rung change calls
`on_change(old, new, code, detail)` once. See docs/degradation.md.

One DegradingBackend per Detector (per inference worker); `infer` is serialised by a lock.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config.ladder import LadderConfig
from agent.inference.errors import BackendError
from agent.inference.ladder_rungs import (
    DEFAULT_BUILDERS,
    BackendBuilder,
    ChangeCallback,
    LadderCode,
    LadderMode,
    LoadedRung,
    PendingLoad,
    Rung,
    RungFactory,
    RungThread,
    build_rungs,
    is_cpu_rung,
    onnxruntime_rung,
    retire,
)
from agent.inference.model import ModelFolder

log = logging.getLogger(__name__)

Tensor = npt.NDArray[np.float32]
Outputs = list[npt.NDArray[np.generic]]


class DegradingBackend:
    """`Backend` over an ordered list of rungs (best first); see the module docstring."""

    def __init__(
        self,
        rungs: Sequence[Rung],
        cfg: LadderConfig,
        *,
        on_change: ChangeCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        label: str = "ladder",
    ) -> None:
        """Load the best rung that loads; raise BackendError naming each failure if none does."""
        if not rungs:
            raise ValueError("a ladder needs at least one rung")
        self._rungs = tuple(rungs)
        self._cfg = cfg
        self._on_change = on_change
        self._clock = clock
        self._label = label
        self._lock = threading.Lock()
        self._closed = False
        self._active: LoadedRung | None = None
        self._pending: PendingLoad | None = None
        self._errors = 0
        self._delay = cfg.climb_back_after_s
        self._next_climb = 0.0
        self._faulted: dict[str, str] = {}
        self._counts = dict.fromkeys(
            ("degradations", "climbs", "climb_failures", "timeouts", "errors", "load_failures"),
            0,
        )
        self._input_name = ""
        self._mode = LadderMode(None, None, True, LadderCode.LOAD_FAILED, "not loaded", 0.0, None)
        self._start()

    # --- Backend protocol -------------------------------------------------------------

    @property
    def name(self) -> str:
        active = self._active
        return active.backend.name if active is not None else "ladder:none"

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def dynamic_spatial(self) -> bool:
        """Always False: rungs may differ (a TensorRT engine has a fixed size) and the
        ladder may move between them mid-stream, so it keeps the manifest's size."""
        return False

    def infer(self, tensor: Tensor) -> Outputs:
        with self._lock:
            if self._closed:
                raise BackendError(f"{self._label}: ladder is closed")
            outputs = self._try_climb(tensor)
            return outputs if outputs is not None else self._run_down(tensor)

    def close(self) -> None:
        acquired = self._lock.acquire(timeout=self._cfg.inference_timeout_s + 1.0)
        try:
            if self._closed:
                return
            self._closed = True
            if self._active is not None:
                retire(self._active.thread, self._active.backend)
                self._active = None
            if self._pending is not None:
                retire(self._pending.thread, self._pending.future)
                self._pending = None
        finally:
            if acquired:
                self._lock.release()

    # --- reporting --------------------------------------------------------------------

    @property
    def mode(self) -> LadderMode:
        return self._mode

    @property
    def climbing(self) -> bool:
        """A better rung is loading in the background (a climb-back attempt in progress)."""
        return self._pending is not None

    def stats(self) -> dict[str, Any]:
        """The mode for health plus counters since start."""
        return {**self._mode.to_health(), **self._counts, "climbing": self.climbing}

    # --- loading ----------------------------------------------------------------------

    def _start(self) -> None:
        reasons: list[str] = []
        for index, rung in enumerate(self._rungs):
            loaded = self._load(index)
            if isinstance(loaded, str):
                reasons.append(f"{rung.name}: {loaded}")
                continue
            self._input_name = loaded.backend.input_name
            code = LadderCode.OK if index == 0 else LadderCode.LOAD_FAILED
            self._switch(None, loaded, code, "; ".join(reasons) or f"loaded {rung.name}")
            self._next_climb = self._clock() + self._delay
            return
        raise BackendError(
            f"{self._label}: no inference backend could be loaded: " + "; ".join(reasons)
        )

    def _begin_load(self, index: int) -> PendingLoad:
        rung = self._rungs[index]
        thread = RungThread(f"{self._label}-{rung.name}")
        return PendingLoad(index, thread, thread.submit(rung.factory), time.monotonic())

    def _finish_load(self, pending: PendingLoad, timeout_s: float) -> LoadedRung | str:
        """The loaded rung, or the reason it failed (recorded as a fault)."""
        rung = self._rungs[pending.index]
        try:
            backend = pending.future.result(timeout_s)
        except cf.TimeoutError:
            retire(pending.thread, pending.future)
            reason = f"load timed out after {self._cfg.load_timeout_s:g}s"
        except Exception as exc:
            pending.thread.stop()
            reason = f"load failed: {exc}"
        else:
            return LoadedRung(pending.index, rung, backend, pending.thread)
        self._counts["load_failures"] += 1
        self._note_fault(rung.name, reason)
        log.warning(
            "ladder rung failed to load ladder=%s rung=%s reason=%s", self._label, rung.name, reason
        )
        return reason

    def _load(self, index: int) -> LoadedRung | str:
        return self._finish_load(self._begin_load(index), self._cfg.load_timeout_s)

    # --- serving and degrading --------------------------------------------------------

    def _run_down(self, tensor: Tensor) -> Outputs:
        """Infer on the active rung, moving down on a timeout or too many errors."""
        while (active := self._active) is not None:
            try:
                outputs = active.thread.call(
                    functools.partial(active.backend.infer, tensor), self._cfg.inference_timeout_s
                )
            except cf.TimeoutError:
                self._counts["timeouts"] += 1
                detail = (
                    f"{active.rung.name}: inference exceeded {self._cfg.inference_timeout_s:g}s"
                )
                self._degrade(active, LadderCode.INFER_TIMEOUT, detail)
                continue
            except Exception as exc:
                self._counts["errors"] += 1
                self._errors += 1
                last = active.index == len(self._rungs) - 1
                if self._errors < self._cfg.failures_to_degrade or last:
                    raise BackendError(f"{active.rung.name}: inference failed: {exc}") from exc
                detail = f"{active.rung.name}: {self._errors} consecutive errors, last: {exc}"
                self._degrade(active, LadderCode.INFER_ERROR, detail)
                continue
            self._errors = 0
            return outputs
        raise BackendError(
            f"{self._label}: every inference backend is faulted: {self._fault_text()}"
        )

    def _degrade(self, active: LoadedRung, code: LadderCode, detail: str) -> None:
        """Abandon the active rung and load the next one that loads (or none)."""
        self._counts["degradations"] += 1
        self._active = None
        retire(active.thread, active.backend)
        self._faulted[active.rung.name] = detail
        now = self._clock()
        flapping = active.climbed and now - active.since < self._cfg.climb_back_max_s
        self._delay = (
            min(self._delay * 2, self._cfg.climb_back_max_s)
            if flapping
            else self._cfg.climb_back_after_s
        )
        self._next_climb = now + self._delay
        notes = [detail]
        for index in range(active.index + 1, len(self._rungs)):
            loaded = self._load(index)
            if isinstance(loaded, str):
                notes.append(f"{self._rungs[index].name}: {loaded}")
                continue
            self._switch(active.rung.name, loaded, code, "; ".join(notes))
            return
        self._publish(active.rung.name, None, code, "; ".join(notes))

    def _switch(self, old: str | None, loaded: LoadedRung, code: LadderCode, detail: str) -> None:
        loaded.since = self._clock()
        loaded.climbed = code is LadderCode.CLIMBED_BACK
        self._active = loaded
        self._errors = 0
        self._faulted.pop(loaded.rung.name, None)
        self._publish(old, loaded.rung.name, code, detail)

    def _publish(self, old: str | None, new: str | None, code: LadderCode, detail: str) -> None:
        active = self._active
        degraded = active is None or active.index > 0
        cpu_capped = active is not None and active.rung.cpu and degraded
        self._mode = LadderMode(
            rung=new,
            backend=None if active is None else active.backend.name,
            degraded=degraded,
            code=code,
            detail=detail,
            since=self._clock(),
            max_fps=self._cfg.cpu_fallback_max_fps if cpu_capped else None,
            faulted=dict(self._faulted),
        )
        level = (
            logging.INFO if code in (LadderCode.OK, LadderCode.CLIMBED_BACK) else logging.WARNING
        )
        log.log(
            level,
            "ladder rung change ladder=%s old=%s new=%s code=%s detail=%s",
            self._label,
            old,
            new,
            code.value,
            detail,
        )
        if self._on_change is None:
            return
        try:
            self._on_change(old, new, code, detail)
        except Exception:
            log.exception("ladder on_change callback failed ladder=%s", self._label)

    def _note_fault(self, name: str, reason: str) -> None:
        self._faulted[name] = reason
        self._mode = dataclasses.replace(self._mode, faulted=dict(self._faulted))

    def _fault_text(self) -> str:
        return "; ".join(f"{name}: {why}" for name, why in self._faulted.items()) or "none loaded"

    # --- climbing back ----------------------------------------------------------------

    def _ceiling(self) -> int:
        """Rungs with an index below this are better than the active one."""
        return self._active.index if self._active is not None else len(self._rungs)

    def _try_climb(self, tensor: Tensor) -> Outputs | None:
        """Outputs for this frame from a better rung that just passed its probe, else None."""
        if self._ceiling() == 0:
            return None
        if self._pending is None:
            if self._clock() < self._next_climb:
                return None
            self._pending = self._begin_load(0)
        while (pending := self._pending) is not None:
            overdue = time.monotonic() - pending.started >= self._cfg.load_timeout_s
            if not pending.future.done() and self._active is not None and not overdue:
                return None  # still loading in the background; the current rung serves
            self._pending = None
            outputs = self._attempt(pending, tensor)
            if outputs is not None:
                return outputs
            if pending.index + 1 < self._ceiling():
                self._pending = self._begin_load(pending.index + 1)
        self._counts["climb_failures"] += 1
        self._delay = min(self._delay * 2, self._cfg.climb_back_max_s)
        self._next_climb = self._clock() + self._delay
        log.info("ladder climb back failed ladder=%s retry_in_s=%.1f", self._label, self._delay)
        return None

    def _attempt(self, pending: PendingLoad, tensor: Tensor) -> Outputs | None:
        """Finish a background load and probe it with this frame; switch up on success."""
        remaining = self._cfg.load_timeout_s - (time.monotonic() - pending.started)
        loaded = self._finish_load(pending, max(remaining, 0.0))
        if isinstance(loaded, str):
            return None
        name = loaded.rung.name
        try:
            outputs = loaded.thread.call(
                functools.partial(loaded.backend.infer, tensor), self._cfg.inference_timeout_s
            )
        except cf.TimeoutError:
            reason = f"probe exceeded {self._cfg.inference_timeout_s:g}s"
        except Exception as exc:
            reason = f"probe failed: {exc}"
        else:
            old = self._active
            if old is not None:
                retire(old.thread, old.backend)
            self._counts["climbs"] += 1
            self._input_name = loaded.backend.input_name
            self._switch(
                None if old is None else old.rung.name,
                loaded,
                LadderCode.CLIMBED_BACK,
                f"{name} passed its probe",
            )
            return outputs
        retire(loaded.thread, loaded.backend)
        self._note_fault(name, reason)
        log.info("ladder climb probe failed ladder=%s rung=%s reason=%s", self._label, name, reason)
        return None


def build_ladder(
    cfg: LadderConfig,
    model: ModelFolder,
    *,
    on_change: ChangeCallback | None = None,
    builders: Mapping[str, BackendBuilder] | None = None,
    label: str = "ladder",
    clock: Callable[[], float] = time.monotonic,
) -> DegradingBackend:
    """A DegradingBackend for `model` over the configured rungs (loads the best one now)."""
    rungs = build_rungs(cfg, model, builders)
    return DegradingBackend(rungs, cfg, on_change=on_change, clock=clock, label=label)


__all__ = [
    "DEFAULT_BUILDERS",
    "BackendBuilder",
    "ChangeCallback",
    "DegradingBackend",
    "LadderCode",
    "LadderMode",
    "Rung",
    "RungFactory",
    "build_ladder",
    "build_rungs",
    "is_cpu_rung",
    "onnxruntime_rung",
]

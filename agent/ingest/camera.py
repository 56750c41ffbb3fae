"""One camera's ingest thread: open, decode, hand frames to the hub, reconnect.

    connecting -> streaming -> (stalled ->) reconnecting -> streaming ...
                                            reconnecting -> failed    (max_attempts, or fatal)
    streaming -> finished   (a non-looping file ended)
    any       -> stopped    (stop() or the agent's stop event)

`on_state(camera_id, state, reason)` is called once per transition, from the camera's
thread. Every wait (backoff, pacing, a full "block" mailbox, an RTSP open) wakes on
stop; opening runs on a short-lived helper thread that is abandoned on stop, so stop()
is prompt even while a camera that does not answer is being dialled.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config.sources import CameraConfig
from agent.ingest.backoff import Backoff
from agent.ingest.mailbox import FrameHub
from agent.ingest.redact import redact_text
from agent.ingest.source import (
    DecodedFrame,
    OpenSource,
    Pacer,
    SourceError,
    SourceOpenError,
    SourceSpec,
    SourceStalledError,
    open_source,
)
from agent.types import FramePacket

log = logging.getLogger(__name__)


class CameraState(str, enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    FINISHED = "finished"
    STOPPED = "stopped"


StateCallback = Callable[[str, CameraState, str], None]
OpenFn = Callable[[SourceSpec], OpenSource]


@dataclass(frozen=True, slots=True)
class CameraTiming:
    """Injectable clocks and polling; defaults are the production values."""

    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    stop_poll_s: float = 0.05
    """How soon an outer stop event or a finished open is noticed."""


class StopSignal:
    """The worker's own stop flag, or-ed with an outer (agent-wide) event."""

    def __init__(self, outer: threading.Event | None, poll_s: float) -> None:
        self._own = threading.Event()
        self._outer = outer
        self._poll_s = poll_s

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or (self._outer is not None and self._outer.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        """True as soon as either flag is set, False after `timeout` seconds."""
        if self._outer is None:
            return self._own.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            remaining = self._poll_s if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._own.wait(min(remaining, self._poll_s))
        return True


class _Opener:
    """Runs one open on a helper thread that can be abandoned (it then closes its result)."""

    def __init__(self, spec: SourceSpec, open_fn: OpenFn, name: str) -> None:
        self._spec = spec
        self._open_fn = open_fn
        self._lock = threading.Lock()
        self._abandoned = False
        self._source: OpenSource | None = None
        self._error: SourceError | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        source: OpenSource | None = None
        error: SourceError | None = None
        try:
            source = self._open_fn(self._spec)
        except SourceError as exc:
            error = exc
        except Exception as exc:  # anything else from FFmpeg/PyAV is still an open failure
            error = SourceOpenError(f"cannot open {self._spec.name}: {redact_text(str(exc))}")
            error.__cause__ = exc
        with self._lock:
            abandoned = self._abandoned
            self._source, self._error = source, error
        if abandoned and source is not None:
            source.close()
        self.done.set()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            source, self._source = self._source, None
        if source is not None:
            source.close()

    def result(self) -> OpenSource:
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._source is None:  # abandoned: only a stopping worker asks, and it does not
                raise SourceOpenError(f"open of {self._spec.name} was abandoned")
            return self._source


class CameraWorker:
    """The ingest thread of one camera (thread name `camera-<id>`)."""

    def __init__(
        self,
        cfg: CameraConfig,
        hub: FrameHub,
        stop: threading.Event | None = None,
        *,
        on_state: StateCallback | None = None,
        timing: CameraTiming | None = None,
        rng: random.Random | None = None,
        open_fn: OpenFn | None = None,
    ) -> None:
        self._cfg = cfg
        self._hub = hub
        self._timing = timing or CameraTiming()
        self._stop = StopSignal(stop, self._timing.stop_poll_s)
        self._on_state = on_state
        clock = self._timing.clock
        self._open_fn: OpenFn = open_fn or (lambda spec: open_source(spec, clock))
        self._spec = SourceSpec.from_config(cfg.source, cfg.stall_timeout_s, cfg.decoder_threads)
        rc = cfg.reconnect
        self._backoff = Backoff(rc.initial_s, rc.max_s, rc.multiplier, rc.jitter, rng)
        self._pace = cfg.source.type == "file" and cfg.source.pace
        self._min_interval = 1.0 / cfg.max_fps if cfg.max_fps else 0.0
        self._target_fps: float | None = None
        self._next_due: float | None = None
        self._lock = threading.Lock()
        self._state = CameraState.CONNECTING
        self._counts = {"frames_decoded": 0, "frames_delivered": 0, "skipped": 0}
        self._counts |= {"reconnects": 0, "decode_errors": 0}
        self._last_frame: float | None = None
        self._last_reason = ""
        self._thread = threading.Thread(target=self._run, name=f"camera-{cfg.id}", daemon=True)

    @property
    def camera_id(self) -> str:
        return self._cfg.id

    @property
    def state(self) -> CameraState:
        with self._lock:
            return self._state

    @property
    def target_fps(self) -> float | None:
        """The runtime fps target set by overload control (None: only cfg.max_fps applies)."""
        with self._lock:
            return self._target_fps

    def set_target_fps(self, fps: float | None) -> None:
        """Lower the delivered rate at runtime (overload control); None lifts it.

        The effective cap is min(cfg.max_fps, fps); frames above it are skipped and counted
        as `skipped`, exactly as for max_fps. Thread-safe; takes effect on the next frame.
        """
        if fps is not None and not fps > 0:
            raise ValueError(f"target fps must be positive or None, not {fps!r}")
        limits = [f for f in (self._cfg.max_fps, fps) if f is not None]
        with self._lock:
            self._target_fps = fps
            self._min_interval = 1.0 / min(limits) if limits else 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Ask the thread to end and wait at most `timeout_s`; True when it has ended."""
        self._stop.set()
        if self._thread.ident is None:  # never started
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """Counters since start, current state, last frame (monotonic clock) and reason."""
        with self._lock:
            return {
                **self._counts,
                "state": self._state.value,
                "last_frame_monotonic": self._last_frame,
                "reason": self._last_reason,
                "target_fps": self._target_fps,
            }

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._report(CameraState.CONNECTING, f"opening {self._spec.name}", force=True)
        try:
            final, reason = self._loop()
        except Exception as exc:  # last line of defence: the thread never dies silently
            log.exception("camera thread crashed camera=%s", self.camera_id)
            final, reason = CameraState.FAILED, f"internal error: {redact_text(str(exc))}"
        self._report(final, reason)

    def _loop(self) -> tuple[CameraState, str]:
        while not self._stop.is_set():
            try:
                ended = self._session()
            except SourceError as exc:
                verdict = self._after_failure(exc)
                if verdict is not None:
                    return verdict
                continue
            if ended:
                return CameraState.FINISHED, f"end of {self._spec.name}"
        return CameraState.STOPPED, "stop requested"

    def _session(self) -> bool:
        """One connection: True when a file ended, False when stopped; raises SourceError."""
        source = self._open()
        if source is None:
            return False
        try:
            return self._stream(source)
        finally:
            with self._lock:
                self._counts["decode_errors"] += source.decode_errors
            source.close()

    def _open(self) -> OpenSource | None:
        opener = _Opener(self._spec, self._open_fn, f"camera-{self.camera_id}-open")
        while not opener.done.wait(self._timing.stop_poll_s):
            if self._stop.is_set():
                opener.abandon()
                return None
        return opener.result()

    def _stream(self, source: OpenSource) -> bool:
        pacer = Pacer(self._timing.clock) if self._pace else None
        self._next_due = None
        frames = source.frames()
        with contextlib.closing(frames):
            for decoded in frames:
                if not self._deliver(decoded, source, pacer):
                    return False
        return True

    def _deliver(self, decoded: DecodedFrame, source: OpenSource, pacer: Pacer | None) -> bool:
        """Count, maybe skip, pace and put one frame; False when the worker must stop."""
        now = self._timing.clock()
        with self._lock:
            self._counts["frames_decoded"] += 1
            self._last_frame = now
        if self.state is not CameraState.STREAMING:
            self._backoff.reset()
            self._report(CameraState.STREAMING, f"frames from {self._spec.name}")
        if self._stop.is_set():
            return False
        if self._skip(decoded.stream_time):
            with self._lock:
                self._counts["skipped"] += 1
            return True
        if pacer is not None and not pacer.wait(decoded.stream_time, self._stop):
            return False
        packet = self._packet(decoded, source)
        if not self._hub.put(packet, self._stop):
            self._stop.set()  # stopped, hub closed or camera unregistered: we are done
            return False
        with self._lock:
            self._counts["frames_delivered"] += 1
        return True

    def _packet(self, decoded: DecodedFrame, source: OpenSource) -> FramePacket:
        frame = decoded.frame
        with self._lock:
            seq = self._counts["frames_delivered"]
        return FramePacket(
            camera_id=self.camera_id,
            seq=seq,
            stream_time=decoded.stream_time,
            wall_time=self._timing.wall_clock(),
            monotonic=self._timing.clock(),
            image=frame,
            width=int(frame.width or source.width),
            height=int(frame.height or source.height),
        )

    def _skip(self, stream_time: float) -> bool:
        """max_fps/target: skip frames sooner than the minimum interval after the last kept."""
        with self._lock:
            interval = self._min_interval
        if interval <= 0:
            return False
        due = self._next_due
        if due is not None and stream_time < due - interval * 1e-3:
            return True
        base = stream_time if due is None or due < stream_time - interval else due
        self._next_due = base + interval
        return False

    def _after_failure(self, exc: SourceError) -> tuple[CameraState, str] | None:
        """Decide after a failed session: a final state, or None after waiting to retry."""
        reason = redact_text(str(exc))
        failures = self._backoff.attempts + 1
        limit = self._cfg.reconnect.max_attempts
        if not exc.retriable:
            return CameraState.FAILED, f"{reason} (not retriable)"
        if limit is not None and failures >= limit:
            return CameraState.FAILED, f"{reason} (gave up after {failures} attempts)"
        if isinstance(exc, SourceStalledError) and self.state is CameraState.STREAMING:
            self._report(CameraState.STALLED, reason)
        delay = self._backoff.next_delay()
        log.warning(
            "camera source failed camera=%s attempt=%d retry_in_s=%.2f error=%s",
            self.camera_id,
            failures,
            delay,
            reason,
        )
        self._report(CameraState.RECONNECTING, reason)
        if self._stop.wait(delay):
            return CameraState.STOPPED, "stop requested"
        with self._lock:
            self._counts["reconnects"] += 1
        return None

    def _report(self, state: CameraState, reason: str, force: bool = False) -> None:
        with self._lock:
            if state is self._state and not force:
                return
            self._state = state
            self._last_reason = reason
        if self._on_state is None:
            return
        try:
            self._on_state(self.camera_id, state, reason)
        except Exception:
            log.exception("camera state callback failed camera=%s", self.camera_id)

"""Counters and latency windows read by the summary and (later) health reports."""

from __future__ import annotations

import collections
import threading

import numpy as np
import numpy.typing as npt


class LatencyWindow:
    """The last `size` latency samples (seconds); percentiles on demand. Thread-safe."""

    def __init__(self, size: int = 4096) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self.count += 1

    def clear(self) -> None:
        """Forget the samples (the count of all samples ever added stays)."""
        with self._lock:
            self._samples.clear()

    def samples_s(self) -> npt.NDArray[np.float64]:
        """A copy of the samples in the window, oldest first, in seconds."""
        with self._lock:
            return np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))

    def mean_s(self) -> float | None:
        """Mean of the window in seconds (None when empty)."""
        with self._lock:
            n = len(self._samples)
            return sum(self._samples) / n if n else None

    def percentiles_ms(self, qs: tuple[float, ...] = (50, 95, 99)) -> dict[str, float | None]:
        data = self.samples_s()
        if data.size == 0:
            return {f"p{q:g}": None for q in qs}
        values = np.percentile(data * 1000.0, qs)
        return {f"p{q:g}": round(float(v), 2) for q, v in zip(qs, values, strict=True)}


class RateLimitedLog:
    """Lets a repeated message through at most once per `interval_s`, counting the rest."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def allow(self, key: str, now: float) -> int | None:
        """None if suppressed; otherwise how many were suppressed since the last one."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] += 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


class RateWindow:
    """Events per second over the last `span_s` seconds (e.g. processed frames)."""

    def __init__(self, span_s: float = 5.0, size: int = 1024) -> None:
        self._span = span_s
        self._times: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, t: float) -> None:
        with self._lock:
            self._times.append(t)

    def rate(self, now: float | None = None) -> float:
        with self._lock:
            times = list(self._times)
        if not times:
            return 0.0
        end = times[-1] if now is None else now
        recent = [t for t in times if end - t <= self._span]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

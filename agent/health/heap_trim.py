"""Hand freed native heap back to the kernel (glibc `malloc_trim`), periodically.

The agent's native libraries (FFmpeg, ONNX Runtime, numpy, libjpeg) allocate and free
megabyte-sized buffers on many threads. glibc keeps freed chunks in its arenas for reuse
and only returns memory at the top of an arena on its own, so a long run's RSS creeps up
with free-but-retained pages until fragmentation settles: the 30-minute soak measured
about 14 MiB of a 21 MiB rise as free heap that one `malloc_trim(0)` released
(docs/benchmarks.md, Soak). `malloc_trim(0)` releases free pages anywhere in every arena
(madvise), which is cheap (milliseconds) at a period of a minute.

Only glibc has it: on musl or elsewhere the trimmer reports itself unavailable and the
job is not scheduled.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

from agent.health.resources import read_process

log = logging.getLogger(__name__)


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def _rss_bytes() -> int | None:
    """This process's RSS as the resource guard reads it, or None where /proc is absent."""
    try:
        return read_process().rss_bytes
    except (OSError, ValueError):
        return None


class HeapTrimmer:
    """`trim()` runs malloc_trim(0) and measures the RSS it gave back."""

    def __init__(self, malloc_trim: Callable[[int], int] | None = None) -> None:
        self._fn = malloc_trim if malloc_trim is not None else _glibc_malloc_trim()
        self.runs = 0
        self.released_bytes = 0
        """RSS drop summed over every run (a run that found nothing to free adds 0)."""

    @property
    def available(self) -> bool:
        return self._fn is not None

    def trim(self) -> int:
        """Release free heap pages; returns the RSS drop in bytes (0 when unavailable)."""
        if self._fn is None:
            return 0
        before = _rss_bytes()
        t0 = time.monotonic()
        self._fn(0)
        after = _rss_bytes()
        released = max(0, before - after) if before is not None and after is not None else 0
        self.runs += 1
        self.released_bytes += released
        log.debug(
            "malloc_trim released_mib=%.1f took_ms=%.1f",
            released / 2**20,
            1000 * (time.monotonic() - t0),
        )
        return released

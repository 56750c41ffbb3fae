"""Kept frames for later labelling: JPEG + JSON sidecar in one folder, bounded on disk.

The drift monitor decides which frames are worth keeping (`DriftMonitor.keep_reason`: uncertain
detections or raised drift); this module is the file-system edge that stores them. Writes are
atomic; the oldest pair is deleted first when the count or byte bound is exceeded.
"""

from __future__ import annotations

import collections
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.health.drift import DriftError


class SampleStoreError(DriftError):
    """A kept frame could not be written."""


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class _Kept:
    stem: str
    size: int


class SampleKeeper:
    """Kept frames (JPEG + JSON sidecar) in one folder, bounded by count and bytes.

    Writes are atomic (temp file, fsync, rename); the oldest pair is deleted first and
    counted in `evicted`. Existing pairs are found again after a restart.
    """

    def __init__(
        self,
        directory: Path,
        max_files: int,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self.saved = 0
        self.evicted = 0
        self._seq = 0
        self._kept: collections.deque[_Kept] = collections.deque()
        self._bytes = 0
        self._scan()

    def _scan(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for tmp in self.directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for jpg in sorted(self.directory.glob("*.jpg")):
            side = jpg.with_suffix(".json")
            size = jpg.stat().st_size + (side.stat().st_size if side.exists() else 0)
            self._kept.append(_Kept(jpg.stem, size))
            self._bytes += size
        for orphan in self.directory.glob("*.json"):
            if not orphan.with_suffix(".jpg").exists():
                orphan.unlink(missing_ok=True)
        self._evict()

    @property
    def count(self) -> int:
        return len(self._kept)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def save(self, jpeg: bytes, meta: Mapping[str, Any], camera: str, reason: str) -> Path:
        """Store one frame and its metadata; returns the JPEG's path."""
        with self._lock:
            now = self._clock()
            self._seq += 1
            safe = f"{_UNSAFE.sub('_', camera)}-{_UNSAFE.sub('_', reason)}"
            stem = f"{int(now * 1e6):017d}-{self._seq:06d}-{safe}"
            side = {"camera": camera, "reason": reason, "time": now, **meta}
            body = json.dumps(side, sort_keys=True, default=str).encode()
            path = self.directory / f"{stem}.jpg"
            try:
                _atomic_write(path, jpeg)
                _atomic_write(path.with_suffix(".json"), body)
            except OSError as exc:
                path.unlink(missing_ok=True)
                raise SampleStoreError(f"cannot keep sample in {self.directory}: {exc}") from exc
            self._kept.append(_Kept(stem, len(jpeg) + len(body)))
            self._bytes += len(jpeg) + len(body)
            self.saved += 1
            self._evict()
            return path

    def _evict(self) -> None:
        while self._kept and (len(self._kept) > self.max_files or self._bytes > self.max_bytes):
            old = self._kept.popleft()
            for suffix in (".jpg", ".json"):
                (self.directory / f"{old.stem}{suffix}").unlink(missing_ok=True)
            self._bytes -= old.size
            self.evicted += 1

    def files(self) -> Sequence[Path]:
        """Kept JPEGs, oldest first."""
        with self._lock:
            return [self.directory / f"{k.stem}.jpg" for k in self._kept]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)

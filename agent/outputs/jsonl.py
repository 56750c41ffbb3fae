"""Append-only JSON-lines event log, rotated by size so it can never fill the disk."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from agent.state import fsync_dir
from agent.types import EventRecord

log = logging.getLogger(__name__)


class JsonlSink:
    """One JSON object per line; lines are written whole, so a crash loses at most one.

    When the file has grown past `max_bytes` it is renamed to `FILE.1` (older ones shift
    to `FILE.2` ... `FILE.<backups>`, the oldest is deleted) and a new `FILE` is started,
    as logrotate or Python's RotatingFileHandler would: at most `(backups + 1) x
    max_bytes` (plus one line) on disk. Rotation happens between lines, never inside one.
    """

    name = "jsonl"

    def __init__(
        self, path: Path, fsync: bool = False, *, max_bytes: int = 64 << 20, backups: int = 3
    ) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError(f"max_bytes must be > 0 and backups >= 0: {max_bytes}, {backups}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._fsync = fsync
        self._max_bytes = max_bytes
        self._backups = backups
        self.rotations = 0
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived handle

    def emit(self, record: EventRecord) -> None:
        payload = record.event.to_dict()
        payload["snapshot"] = record.snapshot_path
        self._fh.write(json.dumps(payload, sort_keys=True) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())
        if self._fh.tell() >= self._max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._fh.close()
        path = self._path
        try:
            if self._backups == 0:
                path.unlink(missing_ok=True)
            for i in range(self._backups, 0, -1):
                older = path.with_name(f"{path.name}.{i - 1}") if i > 1 else path
                if older.exists():
                    os.replace(older, path.with_name(f"{path.name}.{i}"))
            fsync_dir(path.parent)
        except OSError as exc:  # keep logging to the same file rather than lose events
            log.error("event log rotation failed path=%s error=%s", path, exc)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived handle
        self.rotations += 1

    def close(self) -> None:
        self._fh.close()

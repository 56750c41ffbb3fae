"""Append-only JSON-lines event log."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.types import EventRecord


class JsonlSink:
    """One JSON object per line; lines are written whole, so a crash loses at most one."""

    name = "jsonl"

    def __init__(self, path: Path, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._fsync = fsync
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived handle

    def emit(self, record: EventRecord) -> None:
        payload = record.event.to_dict()
        payload["snapshot"] = record.snapshot_path
        self._fh.write(json.dumps(payload, sort_keys=True) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

"""Small durable state kept in the device's state folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class StateError(Exception):
    """The state folder cannot be used (permissions, full disk, corrupt file)."""


def fsync_dir(path: Path) -> None:
    """fsync a folder, so a rename or a new entry in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content.

    A uniquely named, fsynced temp file in the same folder is renamed over `path` and the
    folder fsynced; the temp file is removed if anything fails.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def next_boot_id(state_dir: Path) -> int:
    """Increment and return the persisted boot counter (1 on a fresh state folder).

    The boot id is part of every event id, so ids from a later run never collide with
    ids from an earlier one while a fixed input and a fresh state folder give the same
    ids on every run.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "boot_id"
        previous = 0
        if path.exists():
            text = path.read_text(encoding="ascii").strip()
            with contextlib.suppress(ValueError):
                previous = int(text)
            previous = max(previous, 0)
        boot = previous + 1
        atomic_write(path, f"{boot}\n".encode("ascii"))
    except OSError as exc:
        raise StateError(f"state folder {state_dir} is not usable: {exc}") from exc
    return boot

"""The file system and signal edge of fleet/mqtt_auth.py: Mosquitto's files, secrets, reload.

Every file is staged as an fsynced temp file beside its target (mode and group set
before any byte is written) and renamed into place, so a reader (Mosquitto on SIGHUP,
a flashing script) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

from agent.state import fsync_dir

log = logging.getLogger(__name__)


class MqttFileError(Exception):
    """A file could not be written or Mosquitto signalled; the targets are unchanged."""


def write_files(files: Sequence[tuple[Path, bytes]], mode: int, group: str | None = None) -> None:
    """Stage every file, then rename each into place. A failure while staging (full
    disk, missing folder, bad group) leaves every target untouched and no temp files."""
    gid = group_id(group)
    staged: list[tuple[str, Path]] = []
    target = Path()
    try:
        for target, data in files:
            staged.append((_stage(target, data, mode, gid), target))
        for tmp, target in staged:
            os.replace(tmp, target)
        for target in {path.parent for _, path in staged}:
            fsync_dir(target)
    except OSError as exc:
        raise MqttFileError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_secret(path: Path, text: str, *, replace: bool) -> None:
    """Write a secret with mode 0600; refuse an existing `path` unless `replace`."""
    try:
        tmp = _stage(path, text.encode("utf-8"), 0o600, None)
    except OSError as exc:
        raise MqttFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path exists: no check-then-write race
        fsync_dir(path.parent)
    except FileExistsError:
        raise MqttFileError(f"refusing to overwrite {path}") from None
    except OSError as exc:
        raise MqttFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise MqttFileError(f"unknown group {group!r}") from None


def reload_mosquitto(pid: int, proc: Path = Path("/proc")) -> None:
    """SIGHUP the Mosquitto process `pid` so it re-reads its password and ACL files.
    Refuses a pid that is not a running `mosquitto` (where /proc tells)."""
    if pid <= 1:
        raise MqttFileError(f"invalid pid {pid}")
    if proc.is_dir():
        try:
            name = (proc / str(pid) / "comm").read_text(encoding="utf-8").strip()
        except OSError:
            raise MqttFileError(f"no process {pid}") from None
        if name != "mosquitto":
            raise MqttFileError(f"process {pid} is {name!r}, not mosquitto: not signalled")
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise MqttFileError(f"cannot signal mosquitto (pid {pid}): {exc.strerror}") from exc
    log.info("mosquitto reload requested pid=%d", pid)


def _stage(path: Path, data: bytes, mode: int, gid: int | None) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if gid is not None:
                os.fchown(fh.fileno(), -1, gid)
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp

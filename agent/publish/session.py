"""The connect-session counter (Sparkplug's bdSeq idea), persisted in the state folder.

Incremented before every connect attempt, so the Will registered with that attempt
and the birth published after it carry the same value, and a later session always
carries a larger one. Consumers ignore an `offline` whose session is lower than the
last `online` they saw: that Will belongs to a connection the device has already
replaced.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from agent.state import StateError, atomic_write


class SessionCounter:
    def __init__(self, path: Path) -> None:
        self._path = path
        self.current = self._read()

    def _read(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return max(int(self._path.read_text(encoding="ascii").strip()), 0)
        return 0

    def next(self) -> int:
        """Persist and return the next session number (fsynced before it is used)."""
        value = self.current + 1
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path, f"{value}\n".encode("ascii"))
        except OSError as exc:
            raise StateError(f"cannot persist MQTT session counter {self._path}: {exc}") from exc
        self.current = value
        return value

"""systemd's sd_notify protocol over `$NOTIFY_SOCKET` (a unix datagram socket).

Written here rather than taken from the `sdnotify` package (unmaintained since 2017):
the protocol is one datagram per message, and this version also handles abstract
socket names ("@...") and reports send failures instead of swallowing them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; a no-op when the process is not run by systemd."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.failures = 0
        if addr:
            self._address = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send `KEY=value` lines as one datagram; False when it could not be sent."""
        if self._sock is None or self._address is None:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                self.failures += 1
                log.warning("sd_notify failed error=%s failures=%d", exc, self.failures)
                return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s() -> float | None:
    """Half of systemd's `WATCHDOG_USEC` for this process, or None when not requested."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None

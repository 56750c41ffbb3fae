"""Many paho clients on one thread: a selector over their sockets plus a timer heap.

Every simulated device needs its own MQTT connection (its own Last Will), but a
thread per connection does not scale to 1,000 devices on two cores. `ClientHub`
drives paho's external-event-loop API instead: sockets are registered through
paho's `on_socket_open/close/register_write/unregister_write` callbacks, readable
sockets get `loop_read()`, writable ones `loop_write()`, and every client gets
`loop_misc()` (keepalive) once a second. Device logic runs as timers on the same
thread, so a device's paho client is only ever touched by its hub's thread; other
threads reach it through `call_soon_threadsafe`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

Callback = Callable[[], None]
MISC_INTERVAL_S = 1.0
MAX_WAIT_S = 0.5


class ClientHub:
    """One thread multiplexing the sockets and timers of many paho clients."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.clock = clock
        self._sel = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Callback]] = []
        self._order = itertools.count()
        self._clients: list[mqtt.Client] = []
        self._calls: queue.SimpleQueue[Callback] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.errors = 0

    # ------------------------------------------------------------------ wiring
    def attach(self, client: mqtt.Client) -> None:
        """Drive `client` from this hub (call before its first connect)."""
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_want_write
        client.on_socket_unregister_write = self._on_done_write
        self._clients.append(client)

    def open_sockets(self) -> int:
        return len(self._sel.get_map()) - 1

    def _on_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _on_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _on_want_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _on_done_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.modify(sock, selectors.EVENT_READ, client)

    # ------------------------------------------------------------------ scheduling
    def call_later(self, delay: float, fn: Callback) -> None:
        """Run `fn` on the hub thread after `delay` s (hub thread, or before start)."""
        heapq.heappush(self._timers, (self.clock() + max(0.0, delay), next(self._order), fn))

    def call_soon_threadsafe(self, fn: Callback) -> None:
        """Run `fn` on the hub thread as soon as possible (any thread)."""
        self._calls.put(fn)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already awake) or closing
            self._wake_w.send(b"x")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop (sockets still open are closed by the caller's clients)."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        next_misc = self.clock() + MISC_INTERVAL_S
        while not self._stop.is_set():
            self._run_calls()
            now = self._run_due()
            if now >= next_misc:
                self._misc()
                next_misc = now + MISC_INTERVAL_S
            due = self._timers[0][0] if self._timers else now + MAX_WAIT_S
            wait = min(MAX_WAIT_S, next_misc - now, due - now)
            for key, mask in self._sel.select(max(0.0, wait)):
                self._io(key, mask)

    def _io(self, key: selectors.SelectorKey, mask: int) -> None:
        client: mqtt.Client | None = key.data
        if client is None:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
            return
        try:
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()
        except Exception:
            self.errors += 1
            log.exception("hub io failed hub=%s", self.name)

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            self._guard(fn)

    def _run_due(self) -> float:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _t, _n, fn = heapq.heappop(self._timers)
            self._guard(fn)
        return self.clock()

    def _misc(self) -> None:
        for client in self._clients:
            if client.socket() is not None:
                self._guard(client.loop_misc)

    def _guard(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            self.errors += 1
            log.exception("hub callback failed hub=%s", self.name)

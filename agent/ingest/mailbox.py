"""One-slot mailboxes between the camera threads and the inference workers.

Each camera owns one slot. A camera thread `put`s its newest frame; any inference
worker `take`s the next frame, visiting cameras round-robin so a busy camera cannot
starve the others. Two full-policies, named per camera at `register`:

- ``"latest"`` (live sources): a new frame replaces one nobody has taken yet; the
  replaced frame is counted as dropped. A slow detector therefore sees the freshest
  frame and latency stays bounded by construction (at most one frame waits per camera).
- ``"block"`` (unpaced files): the producer waits until the slot is taken, so no frame
  is lost and offline runs are deterministic.

Every take carries a dispatch ticket (0, 1, 2, ... per camera, in take order) so the
lanes can restore frame order per camera when several workers finish out of order.
One `threading.Condition` guards everything; nobody busy-waits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from agent.types import FramePacket

Policy = Literal["latest", "block"]
_POLICIES: frozenset[str] = frozenset({"latest", "block"})


class StopFlag(Protocol):
    """What `put` needs of a stop signal (a `threading.Event` is one)."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Taken:
    """A frame handed to an inference worker, with its per-camera dispatch ticket."""

    packet: FramePacket
    ticket: int


@dataclass(slots=True)
class _Slot:
    policy: Policy
    packet: FramePacket | None = None
    put: int = 0
    taken: int = 0
    dropped: int = 0
    next_ticket: int = 0


class FrameHub:
    """Per-camera one-slot mailboxes feeding a pool of takers, round-robin across cameras."""

    def __init__(self, stop_poll_s: float = 0.05) -> None:
        """`stop_poll_s`: how often a blocked producer re-checks its (external) stop flag."""
        self._cond = threading.Condition()
        self._slots: dict[str, _Slot] = {}
        self._order: list[str] = []
        self._cursor = 0
        self._closed = False
        self._stop_poll_s = stop_poll_s

    def register(self, camera_id: str, policy: Policy) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"unknown mailbox policy {policy!r} for camera {camera_id}")
        with self._cond:
            if camera_id in self._slots:
                raise ValueError(f"camera {camera_id} is already registered")
            self._slots[camera_id] = _Slot(policy)
            self._order.append(camera_id)

    def unregister(self, camera_id: str) -> None:
        """Forget a camera: its untaken frame and counters go, a blocked put returns False."""
        with self._cond:
            slot = self._slots.pop(camera_id, None)
            if slot is None:
                return
            index = self._order.index(camera_id)
            self._order.pop(index)
            if index < self._cursor:
                self._cursor -= 1
            self._cursor = self._cursor % len(self._order) if self._order else 0
            self._cond.notify_all()

    def put(self, packet: FramePacket, stop: StopFlag) -> bool:
        """Offer a frame. False when it was not accepted (stopped, closed, unregistered).

        "latest": never waits. "block": waits until the slot is free or `stop` is set.
        """
        with self._cond:
            slot = self._slots.get(packet.camera_id)
            if slot is None or self._closed:
                return False
            if slot.policy == "block":
                while slot.packet is not None:
                    if stop.is_set() or self._closed or packet.camera_id not in self._slots:
                        return False
                    self._cond.wait(self._stop_poll_s)
            elif slot.packet is not None:
                slot.dropped += 1
            slot.packet = packet
            slot.put += 1
            self._cond.notify_all()
            return True

    def take(self, timeout: float) -> Taken | None:
        """The next frame, cameras visited round-robin; None on timeout or after close()."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                taken = self._take_next()
                if taken is not None:
                    self._cond.notify_all()  # a blocked producer may refill its slot
                    return taken
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def _take_next(self) -> Taken | None:
        count = len(self._order)
        for step in range(count):
            index = (self._cursor + step) % count
            slot = self._slots[self._order[index]]
            packet = slot.packet
            if packet is None:
                continue
            slot.packet = None
            slot.taken += 1
            ticket = slot.next_ticket
            slot.next_ticket += 1
            self._cursor = (index + 1) % count
            return Taken(packet, ticket)
        return None

    def close(self) -> None:
        """Wake every waiting producer and taker; afterwards put() and take() refuse."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def stats(self) -> dict[str, dict[str, int]]:
        """Per camera: frames put, taken, dropped (replaced untaken), pending (0 or 1)."""
        with self._cond:
            return {
                cid: {
                    "put": s.put,
                    "taken": s.taken,
                    "dropped": s.dropped,
                    "pending": int(s.packet is not None),
                }
                for cid, s in self._slots.items()
            }

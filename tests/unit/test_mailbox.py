"""FrameHub: one-slot mailboxes, "latest" and "block" policies, fairness, tickets, close."""

from __future__ import annotations

import threading

import av
import pytest

from agent.ingest.mailbox import FrameHub
from agent.types import FramePacket

_IMAGE = av.VideoFrame(16, 16, "rgb24")


def packet(camera_id: str, seq: int) -> FramePacket:
    return FramePacket(camera_id, seq, seq / 10, 0.0, 0.0, _IMAGE, 16, 16)


class Putter(threading.Thread):
    """Puts frames seq 0..n-1 for one camera; records the results."""

    def __init__(self, hub: FrameHub, camera_id: str, n: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.hub, self.camera_id, self.n, self.stop = hub, camera_id, n, stop
        self.results: list[bool] = []
        self.done = threading.Event()

    def run(self) -> None:
        for seq in range(self.n):
            self.results.append(self.hub.put(packet(self.camera_id, seq), self.stop))
        self.done.set()


def test_latest_replaces_untaken_frame_and_counts_the_drop() -> None:
    # given a live camera
    hub = FrameHub()
    hub.register("cam", "latest")
    stop = threading.Event()
    # when three frames arrive before anyone takes one
    assert all(hub.put(packet("cam", seq), stop) for seq in range(3))
    taken = hub.take(timeout=1.0)
    # then the taker gets the newest and the two stale ones are counted as dropped
    assert taken is not None
    assert taken.packet.seq == 2
    assert taken.ticket == 0
    assert hub.stats()["cam"] == {"put": 3, "taken": 1, "dropped": 2, "pending": 0}
    assert hub.take(timeout=0.01) is None


def test_block_waits_for_the_taker_and_loses_nothing() -> None:
    # given an unpaced file camera whose slot is already full
    hub = FrameHub()
    hub.register("file", "block")
    stop = threading.Event()
    putter = Putter(hub, "file", 200, stop)
    # when the producer runs ahead of the taker
    putter.start()
    seen: list[tuple[int, int]] = []
    while len(seen) < 200:
        taken = hub.take(timeout=5.0)
        assert taken is not None
        seen.append((taken.packet.seq, taken.ticket))
    # then every frame arrives exactly once, in order, and nothing is dropped
    assert putter.done.wait(5.0)
    assert seen == [(i, i) for i in range(200)]
    assert all(putter.results)
    assert hub.stats()["file"] == {"put": 200, "taken": 200, "dropped": 0, "pending": 0}


def test_block_put_really_waits_while_the_slot_is_full() -> None:
    # given a full "block" slot
    hub = FrameHub()
    hub.register("file", "block")
    stop = threading.Event()
    assert hub.put(packet("file", 0), stop)
    putter = Putter(hub, "file", 1, stop)
    # when a second put is attempted
    putter.start()
    # then it waits until the first frame is taken
    assert not putter.done.wait(0.2)
    assert hub.take(timeout=1.0) is not None
    assert putter.done.wait(2.0)
    assert putter.results == [True]


def test_round_robin_does_not_let_a_busy_camera_starve_another() -> None:
    # given two cameras with a frame each, camera "a" refilled after every take
    hub = FrameHub()
    for cid in ("a", "b", "c"):
        hub.register(cid, "latest")
    stop = threading.Event()
    order = []
    hub.put(packet("b", 0), stop)
    hub.put(packet("c", 0), stop)
    for seq in range(6):
        hub.put(packet("a", seq), stop)
        taken = hub.take(timeout=1.0)
        assert taken is not None
        order.append(taken.packet.camera_id)
    # then the others are served in turn although "a" always has a frame
    assert order[:3] == ["a", "b", "c"]
    assert order[3:] == ["a", "a", "a"]


def test_tickets_are_contiguous_per_camera_in_take_order() -> None:
    # given frames arriving interleaved on two cameras
    hub = FrameHub()
    hub.register("a", "latest")
    hub.register("b", "latest")
    stop = threading.Event()
    tickets: dict[str, list[int]] = {"a": [], "b": []}
    # when they are taken in a mixed order
    for i in range(10):
        hub.put(packet("a", i), stop)
        if i % 3 == 0:
            hub.put(packet("b", i), stop)
        while (taken := hub.take(timeout=0.01)) is not None:
            tickets[taken.packet.camera_id].append(taken.ticket)
    # then each camera's tickets run 0, 1, 2, ... without gaps
    assert tickets["a"] == list(range(10))
    assert tickets["b"] == list(range(4))


def test_close_wakes_a_waiting_taker() -> None:
    # given a taker waiting on an empty hub
    hub = FrameHub()
    hub.register("cam", "latest")
    result: list[object] = []
    done = threading.Event()

    def taker() -> None:
        result.append(hub.take(timeout=30.0))
        done.set()

    threading.Thread(target=taker, daemon=True).start()
    # when the hub closes
    hub.close()
    # then the taker returns None at once, and later puts are refused
    assert done.wait(2.0)
    assert result == [None]
    assert hub.put(packet("cam", 0), threading.Event()) is False


def test_close_wakes_a_blocked_putter() -> None:
    # given a producer blocked on a full "block" slot
    hub = FrameHub()
    hub.register("file", "block")
    stop = threading.Event()
    putter = Putter(hub, "file", 2, stop)
    putter.start()
    assert not putter.done.wait(0.1)
    # when the hub closes
    hub.close()
    # then the put returns False instead of hanging
    assert putter.done.wait(2.0)
    assert putter.results == [True, False]


def test_stop_event_releases_a_blocked_putter() -> None:
    # given a producer blocked on a full "block" slot
    hub = FrameHub(stop_poll_s=0.02)
    hub.register("file", "block")
    stop = threading.Event()
    putter = Putter(hub, "file", 2, stop)
    putter.start()
    assert not putter.done.wait(0.1)
    # when its stop event is set
    stop.set()
    # then the put gives up
    assert putter.done.wait(2.0)
    assert putter.results == [True, False]


def test_unregister_releases_a_blocked_putter_and_forgets_the_camera() -> None:
    hub = FrameHub()
    hub.register("file", "block")
    hub.register("other", "latest")
    stop = threading.Event()
    putter = Putter(hub, "file", 2, stop)
    putter.start()
    assert not putter.done.wait(0.1)
    hub.unregister("file")
    assert putter.done.wait(2.0)
    assert putter.results == [True, False]
    assert set(hub.stats()) == {"other"}
    hub.put(packet("other", 7), stop)
    taken = hub.take(timeout=1.0)
    assert taken is not None
    assert taken.packet.seq == 7


def test_registration_errors_are_explicit() -> None:
    hub = FrameHub()
    hub.register("cam", "latest")
    with pytest.raises(ValueError, match="already registered"):
        hub.register("cam", "block")
    with pytest.raises(ValueError, match="unknown mailbox policy"):
        hub.register("x", "newest")  # type: ignore[arg-type]
    assert hub.put(packet("nobody", 0), threading.Event()) is False

"""CameraLane: results handed in out of order by several workers are processed in order,
and a worker never waits behind another worker's tracking step."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest

from agent.lane import CameraLane
from agent.types import Detections, Event, FramePacket, Track


def _packet(seq: int) -> FramePacket:
    frame = av.VideoFrame(64, 48, "yuv420p")
    return FramePacket("cam", seq, seq * 0.1, time.time(), time.monotonic(), frame, 64, 48)


def _dets() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))


class RecordingTracker:
    """Records the stream times it sees; can hold one update until released, or fail one."""

    def __init__(self, hold_at: float | None = None, fail_at: float | None = None) -> None:
        self.seen: list[float] = []
        self.hold_at = hold_at
        self.fail_at = fail_at
        self.entered = threading.Event()
        self.release = threading.Event()

    def update(self, dets: Detections, timestamp: float) -> list[Track]:
        if self.fail_at is not None and abs(timestamp - self.fail_at) < 1e-9:
            raise RuntimeError("tracker fault")
        if self.hold_at is not None and abs(timestamp - self.hold_at) < 1e-9:
            self.entered.set()
            assert self.release.wait(5.0)
        self.seen.append(round(timestamp, 3))
        return []


class NoRules:
    def update(self, tracks: list[Track], **_: object) -> list[Event]:
        return []

    def close(self, **_: object) -> list[Event]:
        return []


def _lane(tracker: RecordingTracker) -> CameraLane:
    return CameraLane("cam", tracker, NoRules(), lambda record: None, snapshots=None)


def test_out_of_order_results_are_processed_in_ticket_order() -> None:
    tracker = RecordingTracker()
    lane = _lane(tracker)
    t0 = time.monotonic()
    lane.submit(2, _packet(2), _dets())
    assert lane.last_frame_at is None  # ticket 2 waits for 0 and 1
    for ticket in (0, 3, 1, 5, 4):
        lane.submit(ticket, _packet(ticket), _dets())
    assert tracker.seen == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert lane.tickets_done == 6
    assert lane.frames_processed == 6
    assert lane.last_frame_at is not None and t0 <= lane.last_frame_at <= time.monotonic()


def test_a_worker_never_waits_behind_another_workers_tracking_step() -> None:
    tracker = RecordingTracker(hold_at=0.0)
    lane = _lane(tracker)
    drainer = threading.Thread(target=lane.submit, args=(0, _packet(0), _dets()))
    drainer.start()
    assert tracker.entered.wait(5.0)  # worker A is inside the tracker with ticket 0

    t0 = time.monotonic()
    lane.submit(1, _packet(1), _dets())  # worker B: must not block on A
    lane.submit(2, _packet(2), None)  # a failed inference, also left for A
    assert time.monotonic() - t0 < 1.0
    assert tracker.seen == [] and lane.tickets_done == 0  # nothing done out of order

    tracker.release.set()
    drainer.join(5.0)
    assert tracker.seen == [0.0, 0.1]  # A drained what B left, in order
    assert lane.tickets_done == 3
    assert (lane.frames_processed, lane.frames_failed) == (2, 1)


def test_a_failing_frame_costs_that_frame_only(caplog: pytest.LogCaptureFixture) -> None:
    tracker = RecordingTracker(fail_at=0.1)
    lane = _lane(tracker)
    lane.submit(0, _packet(0), _dets())
    lane.submit(2, _packet(2), _dets())  # waits for ticket 1
    lane.submit(1, _packet(1), _dets())  # fails in the tracker; the worker goes on
    assert tracker.seen == [0.0, 0.2]
    assert (lane.frames_processed, lane.frames_failed, lane.tickets_done) == (2, 1, 3)
    assert "lane processing failed camera=cam seq=1" in caplog.text
    lane.submit(3, _packet(3), _dets())
    assert tracker.seen == [0.0, 0.2, 0.3]


def test_results_after_close_are_counted_as_ignored() -> None:
    tracker = RecordingTracker()
    lane = _lane(tracker)
    lane.submit(0, _packet(0), _dets())
    lane.close()
    lane.submit(1, _packet(1), _dets())
    assert tracker.seen == [0.0]
    assert lane.frames_ignored == 1 and lane.tickets_done == 2


def test_many_workers_many_frames_stay_in_order() -> None:
    tracker = RecordingTracker()
    lane = _lane(tracker)
    tickets = list(range(400))
    rng = np.random.default_rng(7)
    rng.shuffle(tickets)
    chunks = [tickets[i::4] for i in range(4)]

    def worker(mine: list[int]) -> None:
        for t in mine:
            lane.submit(t, _packet(t), _dets())

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10.0)
    assert tracker.seen == [round(t * 0.1, 3) for t in range(400)]
    assert lane.tickets_done == 400

"""File ingest through the real decoder: vtest.avi, a truncated copy, a garbage file."""

from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config.sources import CameraConfig
from agent.ingest.camera import CameraState, CameraWorker
from agent.ingest.mailbox import FrameHub, Policy, Taken

VTEST_FRAMES = 795


class StateLog:
    """Records on_state calls; lets a test wait for a state with a timeout."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.history: list[tuple[CameraState, str]] = []

    def __call__(self, camera_id: str, state: CameraState, reason: str) -> None:
        with self.cond:
            self.history.append((state, reason))
            self.cond.notify_all()

    def states(self) -> list[CameraState]:
        with self.cond:
            return [s for s, _ in self.history]

    def wait_for(self, *states: CameraState, timeout: float, after: int = 0) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: any(s in states for s, _ in self.history[after:]), timeout
            )


def camera(source: dict[str, Any], **extra: Any) -> CameraConfig:
    return CameraConfig.model_validate({"id": "cam1", "source": source, **extra})


def start(cfg: CameraConfig, policy: Policy) -> tuple[FrameHub, CameraWorker, StateLog]:
    hub = FrameHub()
    hub.register(cfg.id, policy)
    log = StateLog()
    worker = CameraWorker(cfg, hub, on_state=log, rng=random.Random(1))
    worker.start()
    return hub, worker, log


def take_all(hub: FrameHub, worker: CameraWorker, limit: int = 100_000) -> list[Taken]:
    """Take frames until the worker has ended and the slot is empty (or `limit`)."""
    out: list[Taken] = []
    while len(out) < limit:
        taken = hub.take(timeout=0.2)
        if taken is not None:
            out.append(taken)
        elif not worker.is_alive() and hub.stats()["cam1"]["pending"] == 0:
            break
    return out


def test_unpaced_file_in_block_mode_delivers_every_frame_in_order(assets: Path) -> None:
    # given vtest.avi as an unpaced file camera on a "block" mailbox
    hub, worker, log = start(camera({"type": "file", "path": str(assets / "vtest.avi")}), "block")
    # when everything is taken
    taken = take_all(hub, worker)
    # then all 795 frames arrive, in order, with stream times 0.0, 0.1, ...
    assert worker.stop(timeout_s=2.0)
    assert [t.packet.seq for t in taken] == list(range(VTEST_FRAMES))
    assert [t.ticket for t in taken] == list(range(VTEST_FRAMES))
    times = [t.packet.stream_time for t in taken]
    assert times[:3] == pytest.approx([0.0, 0.1, 0.2])
    assert times[-1] == pytest.approx(79.4)
    first = taken[0].packet
    assert (first.width, first.height) == (768, 576)
    assert (first.image.width, first.image.height) == (768, 576)
    assert log.states() == [CameraState.CONNECTING, CameraState.STREAMING, CameraState.FINISHED]
    stats = worker.stats()
    assert stats["frames_decoded"] == VTEST_FRAMES
    assert stats["state"] == "finished"
    assert hub.stats()["cam1"]["dropped"] == 0


def test_paced_file_runs_at_the_native_frame_rate(assets: Path) -> None:
    # given a paced file (10 fps) on a "latest" mailbox
    cfg = camera({"type": "file", "path": str(assets / "vtest.avi"), "pace": True})
    hub, worker, _log = start(cfg, "latest")
    # when 21 frames are taken
    taken = take_all(hub, worker, limit=21)
    # then 20 intervals took about 2 s of wall time, and stop is prompt mid-stream
    elapsed = taken[-1].packet.monotonic - taken[0].packet.monotonic
    assert 1.8 <= elapsed < 3.0
    assert [t.packet.seq for t in taken] == list(range(21))
    t0 = time.monotonic()
    assert worker.stop(timeout_s=2.0)
    assert time.monotonic() - t0 < 1.0
    assert worker.state is CameraState.STOPPED


def test_looping_file_keeps_stream_time_increasing_across_loops(assets: Path) -> None:
    # given a looping unpaced file
    cfg = camera({"type": "file", "path": str(assets / "vtest.avi"), "loop": True})
    hub, worker, _log = start(cfg, "block")
    # when more frames than the file holds are taken
    taken = take_all(hub, worker, limit=VTEST_FRAMES + 50)
    assert worker.stop(timeout_s=2.0)
    # then the second loop continues the clock instead of starting again at 0
    times = [t.packet.stream_time for t in taken]
    assert len(times) == VTEST_FRAMES + 50
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times[VTEST_FRAMES] == pytest.approx(79.5)
    assert times[-1] == pytest.approx(84.4)
    assert worker.state is CameraState.STOPPED


def test_max_fps_skips_frames_and_counts_them_apart_from_drops(assets: Path) -> None:
    # given a 10 fps file limited to 4 fps
    cfg = camera({"type": "file", "path": str(assets / "vtest.avi")}, max_fps=4)
    hub, worker, _log = start(cfg, "block")
    taken = take_all(hub, worker)
    # then 4 of every 10 frames are delivered, the rest counted as skipped
    assert len(taken) == 318
    times = [t.packet.stream_time for t in taken]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.2 - 1e-6
    stats = worker.stats()
    assert stats["skipped"] == VTEST_FRAMES - 318
    assert hub.stats()["cam1"]["dropped"] == 0


def test_truncated_file_delivers_what_it_can_then_finishes(assets: Path, tmp_path: Path) -> None:
    # given the first 30 % of vtest.avi's bytes
    data = (assets / "vtest.avi").read_bytes()
    cut = tmp_path / "truncated.avi"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    hub, worker, log = start(camera({"type": "file", "path": str(cut)}), "block")
    # when it is read to the end
    taken = take_all(hub, worker)
    # then some frames arrive and the camera finishes cleanly
    assert 50 < len(taken) < VTEST_FRAMES
    assert worker.stop(timeout_s=2.0)
    assert log.states()[-1] is CameraState.FINISHED
    assert worker.stats()["frames_decoded"] == len(taken)


def test_garbage_file_retries_then_fails_with_a_clear_reason(tmp_path: Path) -> None:
    # given a file of random bytes and at most 2 attempts
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(random.Random(3).randbytes(200_000))
    reconnect = {"initial_s": 0.05, "max_s": 0.1, "max_attempts": 2}
    cfg = camera({"type": "file", "path": str(junk)}, reconnect=reconnect)
    _hub, worker, log = start(cfg, "block")
    # when the worker runs
    assert log.wait_for(CameraState.FAILED, timeout=10.0)
    # then it went connecting -> reconnecting -> failed, naming the file and the reason
    assert worker.stop(timeout_s=2.0)
    assert log.states() == [CameraState.CONNECTING, CameraState.RECONNECTING, CameraState.FAILED]
    reason = log.history[-1][1]
    assert "cannot open" in reason
    assert "junk.mp4" in reason
    assert "gave up after 2 attempts" in reason
    assert worker.stats()["reconnects"] == 1


def test_stop_is_prompt_while_blocked_on_a_full_mailbox(assets: Path) -> None:
    # given a "block" camera whose frames nobody takes
    hub, worker, log = start(camera({"type": "file", "path": str(assets / "vtest.avi")}), "block")
    assert log.wait_for(CameraState.STREAMING, timeout=5.0)
    # when it is stopped
    t0 = time.monotonic()
    ended = worker.stop(timeout_s=2.0)
    # then the thread ends promptly and reports "stopped" once
    assert ended
    assert time.monotonic() - t0 < 1.0
    assert log.states() == [CameraState.CONNECTING, CameraState.STREAMING, CameraState.STOPPED]
    assert hub.stats()["cam1"]["put"] == 1


def test_outer_stop_event_ends_the_backoff_wait(tmp_path: Path) -> None:
    # given a missing file and a long backoff, under an agent-wide stop event
    cfg = camera(
        {"type": "file", "path": str(tmp_path / "missing.avi")},
        reconnect={"initial_s": 30, "max_s": 60},
    )
    hub = FrameHub()
    hub.register(cfg.id, "block")
    log = StateLog()
    outer = threading.Event()
    worker = CameraWorker(cfg, hub, outer, on_state=log)
    worker.start()
    assert log.wait_for(CameraState.RECONNECTING, timeout=5.0)
    # when the agent stops
    outer.set()
    # then the worker leaves its 30 s wait at once
    assert log.wait_for(CameraState.STOPPED, timeout=1.0)
    worker.join(timeout=1.0)
    assert not worker.is_alive()


def test_absent_usb_camera_fails_with_a_clear_reason() -> None:
    # given a V4L2 device node that does not exist (no USB camera on this machine)
    source = {"type": "usb", "device": "/dev/video97", "width": 640, "height": 480, "fps": 15}
    reconnect = {"initial_s": 0.05, "max_s": 0.1, "max_attempts": 2}
    _hub, worker, log = start(camera(source, reconnect=reconnect), "latest")
    # when the worker runs, then it retries and fails naming the device
    assert log.wait_for(CameraState.FAILED, timeout=10.0)
    assert worker.stop(timeout_s=2.0)
    assert log.states() == [CameraState.CONNECTING, CameraState.RECONNECTING, CameraState.FAILED]
    assert "/dev/video97" in log.history[-1][1]

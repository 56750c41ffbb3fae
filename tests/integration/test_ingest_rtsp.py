"""RTSP ingest against a real RTSP server (GStreamer's gst-rtsp-server as a child process).

The server serves an H.264 mp4 made from vtest; killing it is a dead camera,
restarting it on the same port a recovered one.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.sources import CameraConfig
from agent.ingest.camera import CameraState, CameraWorker
from agent.ingest.mailbox import FrameHub
from tests.rtsp_server import RtspServer, free_port, make_h264_mp4, unavailable_reason

PASSWORD = "s3cr3t-Pa55"  # noqa: S105 (a test credential that must never be logged)


class StateLog:
    """Records on_state calls; lets a test wait for a state with a timeout."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.history: list[tuple[CameraState, str]] = []

    def __call__(self, camera_id: str, state: CameraState, reason: str) -> None:
        with self.cond:
            self.history.append((state, reason))
            self.cond.notify_all()

    def wait_for(self, *states: CameraState, timeout: float, after: int = 0) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: any(s in states for s, _ in self.history[after:]), timeout
            )

    def __len__(self) -> int:
        with self.cond:
            return len(self.history)


class Drain(threading.Thread):
    """An inference worker stand-in: takes every frame and counts them."""

    def __init__(self, hub: FrameHub, want: int = 10) -> None:
        super().__init__(daemon=True)
        self.hub = hub
        self.want = want
        self.enough = threading.Event()
        self.frames = 0
        self.sizes: set[tuple[int, int]] = set()

    def run(self) -> None:
        while not self.hub.closed:
            taken = self.hub.take(timeout=0.1)
            if taken is not None:
                self.frames += 1
                self.sizes.add((taken.packet.width, taken.packet.height))
                if self.frames >= self.want:
                    self.enough.set()


@pytest.fixture(scope="module")
def h264(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"RTSP server cannot run here: {reason}")
    out = tmp_path_factory.mktemp("rtsp") / "vtest.mp4"
    make_h264_mp4(assets / "vtest.avi", out)
    return out


@pytest.fixture
def server(h264: Path) -> Iterator[RtspServer]:
    srv = RtspServer(h264)
    srv.start()
    yield srv
    srv.kill()


def rtsp_camera(url: str, **extra: Any) -> CameraConfig:
    reconnect = {"initial_s": 0.2, "max_s": 1.0, "jitter": 0.1}
    return CameraConfig.model_validate(
        {
            "id": "door",
            "source": {"type": "rtsp", "url": url, "open_timeout_s": 5},
            "stall_timeout_s": 2.0,
            "reconnect": reconnect,
            **extra,
        }
    )


def run_camera(cfg: CameraConfig) -> tuple[FrameHub, CameraWorker, StateLog, Drain]:
    hub = FrameHub()
    hub.register(cfg.id, "latest")
    log = StateLog()
    worker = CameraWorker(cfg, hub, on_state=log, rng=random.Random(5))
    drain = Drain(hub)
    drain.start()
    worker.start()
    return hub, worker, log, drain


def test_camera_streams_dies_and_recovers(server: RtspServer) -> None:
    # given a camera streaming from the RTSP server
    hub, worker, log, drain = run_camera(rtsp_camera(server.url()))
    try:
        assert log.wait_for(CameraState.STREAMING, timeout=15.0)
        assert drain.enough.wait(10.0)
        assert drain.sizes == {(768, 576)}
        # when the server dies
        mark = len(log)
        server.kill()
        # then the camera leaves "streaming" within the stall timeout
        assert log.wait_for(CameraState.STALLED, CameraState.RECONNECTING, timeout=3.0, after=mark)
        # and when it comes back on the same port, the camera streams again
        mark = len(log)
        server.start()
        assert log.wait_for(CameraState.STREAMING, timeout=15.0, after=mark)
        assert worker.stats()["reconnects"] >= 1
    finally:
        assert worker.stop(timeout_s=2.0)
        hub.close()
    assert worker.state is CameraState.STOPPED


def test_silent_camera_is_detected_as_stalled_and_recovers(server: RtspServer) -> None:
    # given a camera streaming from the RTSP server
    hub, worker, log, drain = run_camera(rtsp_camera(server.url()))
    try:
        assert drain.enough.wait(15.0)
        # when the server freezes (connection open, no data: SIGSTOP)
        mark = len(log)
        server.pause()
        # then the read times out within the 2 s stall timeout: stalled, then reconnecting
        assert log.wait_for(CameraState.STALLED, timeout=3.5, after=mark)
        assert log.wait_for(CameraState.RECONNECTING, timeout=1.0, after=mark)
        assert "no data" in log.history[mark][1]
        # and once it thaws, frames flow again
        mark = len(log)
        server.resume()
        assert log.wait_for(CameraState.STREAMING, timeout=15.0, after=mark)
    finally:
        assert worker.stop(timeout_s=2.0)
        hub.close()


def test_refused_connection_retries_and_never_logs_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a camera URL with credentials on a port where nothing listens
    caplog.set_level(logging.DEBUG)
    url = f"rtsp://admin:{PASSWORD}@127.0.0.1:{free_port()}/cam"
    cfg = rtsp_camera(url, reconnect={"initial_s": 0.05, "max_s": 0.1, "max_attempts": 3})
    hub, worker, log, _drain = run_camera(cfg)
    # when it has tried and given up
    assert log.wait_for(CameraState.FAILED, timeout=10.0)
    assert worker.stop(timeout_s=2.0)
    hub.close()
    # then it went through "reconnecting", and no reason or log line holds the password
    states = [s for s, _ in log.history]
    assert states == [CameraState.CONNECTING, CameraState.RECONNECTING, CameraState.FAILED]
    reasons = " ".join(r for _, r in log.history)
    assert "refused" in reasons.lower()
    assert "rtsp://***:***@127.0.0.1" in reasons
    assert PASSWORD not in reasons
    assert caplog.records, "expected the failed attempts to be logged"
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    assert PASSWORD not in caplog.text
    assert PASSWORD not in str(worker.stats())


def test_stop_while_connecting_to_a_silent_camera_is_prompt() -> None:
    # given a TCP port that accepts connections and never answers
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    accepted = threading.Event()
    conns: list[socket.socket] = []

    def accept() -> None:
        conn, _ = listener.accept()
        conns.append(conn)
        accepted.set()

    threading.Thread(target=accept, daemon=True).start()
    cfg = rtsp_camera(f"rtsp://u:{PASSWORD}@127.0.0.1:{port}/cam")
    cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"open_timeout_s": 30})})
    hub, worker, log, _drain = run_camera(cfg)
    try:
        # when the camera is mid-handshake and stop() is called
        assert accepted.wait(5.0)
        t0 = time.monotonic()
        ended = worker.stop(timeout_s=2.0)
        elapsed = time.monotonic() - t0
    finally:
        hub.close()
        for conn in conns:
            conn.close()
        listener.close()
    # then the worker thread has ended well inside the 30 s open timeout
    assert ended
    assert elapsed < 2.0
    assert [s for s, _ in log.history] == [CameraState.CONNECTING, CameraState.STOPPED]

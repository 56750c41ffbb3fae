"""A dead RTSP camera in the running agent: one alert, the other camera unaffected, recovery.

The RTSP camera is GStreamer's RTSP server in a child process serving H.264 made from
vtest; killing the process is the dead camera, restarting it on the same port the
recovered one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.app import Agent
from agent.config import load_config
from tests.agent_helpers import agent_config, read_events
from tests.rtsp_server import RtspServer, make_h264_mp4, unavailable_reason


@pytest.fixture
def server(assets: Path, tmp_path: Path) -> Iterator[RtspServer]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"RTSP server cannot run here: {reason}")
    media = tmp_path / "vtest.mp4"
    make_h264_mp4(assets / "vtest.avi", media)
    srv = RtspServer(media)
    srv.start()
    yield srv
    srv.kill()


def _wait(predicate: Callable[[], bool], timeout: float, what: str, agent: Agent) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        agent.stop_event.wait(0.1)


def _offline_events(path: Path) -> list[tuple[str, str]]:
    return [
        (e["camera_id"], e["phase"]) for e in read_events(path) if e["rule_id"] == "camera-offline"
    ]


@pytest.mark.slow
def test_dead_rtsp_camera_raises_once_others_keep_rate_and_it_recovers(
    tmp_path: Path, assets: Path, server: RtspServer
) -> None:
    path = agent_config(
        tmp_path,
        assets,
        source={"type": "file", "path": str(assets / "vtest.avi"), "pace": True, "loop": True},
    )
    cfg = load_config(path)
    rtsp = cfg.cameras[0].model_validate(
        {
            "id": "door",
            "source": {"type": "rtsp", "url": server.url(), "open_timeout_s": 5},
            "stall_timeout_s": 2.0,
            "reconnect": {"initial_s": 0.2, "max_s": 1.0, "jitter": 0.1},
        }
    )
    cfg = cfg.model_copy(update={"cameras": [*cfg.cameras, rtsp]})
    agent = Agent(cfg)
    street, door = agent.lanes["street"], agent.lanes["door"]
    events = tmp_path / "events.jsonl"
    agent.start()
    try:
        _wait(lambda: door.frames_processed > 20, 30, "the RTSP camera to stream", agent)
        street_fps_before = street.fps()
        # when the RTSP camera dies
        server.kill()
        _wait(lambda: ("door", "start") in _offline_events(events), 10, "offline alert", agent)
        frames_at_death = street.frames_processed
        agent.stop_event.wait(3.0)  # the dead camera keeps retrying meanwhile
        street_fps_during = (street.frames_processed - frames_at_death) / 3.0
        # then it comes back and streams again, with one recovery event
        server.start()
        _wait(lambda: ("door", "end") in _offline_events(events), 30, "recovery", agent)
        door_frames = door.frames_processed
        _wait(lambda: door.frames_processed > door_frames + 10, 15, "frames after", agent)
    finally:
        summary = agent.close()
    # exactly one alert and one recovery for the outage, none for the healthy camera
    assert _offline_events(events) == [("door", "start"), ("door", "end")]
    # the healthy camera kept its ~10 fps throughout
    assert street_fps_before > 8
    assert street_fps_during > 8
    assert summary.cameras["door"]["reconnects"] >= 1

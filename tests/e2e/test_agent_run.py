"""The real agent end to end: real model, real video, the real CLI process."""

from __future__ import annotations

import collections
import json
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.config import OnnxRuntimeBackendConfig, load_config
from agent.inference.errors import BackendError
from agent.inference.onnxrt import create_backend
from tests.agent_helpers import agent_argv, agent_config, agent_env, read_events, run_agent
from tests.backend_helpers import WrappedBackend

VTEST_FRAMES = 795


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> dict[str, Any]:
    """One unpaced run of the CLI over the whole of vtest."""
    tmp = tmp_path_factory.mktemp("full")
    cfg = agent_config(tmp, assets)
    proc = run_agent("run", "-c", str(cfg), "--summary-json", str(tmp / "summary.json"))
    return {
        "proc": proc,
        "events": read_events(tmp / "events.jsonl"),
        "summary": json.loads((tmp / "summary.json").read_text()) if proc.returncode == 0 else {},
    }


def test_whole_video_finishes_cleanly_with_a_summary(full_run: dict[str, Any]) -> None:
    proc = full_run["proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    cam = full_run["summary"]["cameras"]["street"]
    assert cam["state"] == "finished"
    assert cam["frames_decoded"] == VTEST_FRAMES
    assert cam["frames_processed"] == VTEST_FRAMES
    assert cam["frames_dropped"] == 0
    assert "summary: boot=1" in proc.stdout
    assert "START street/lamp-post (zone) person" in proc.stdout


def test_events_pair_up_and_carry_snapshots(full_run: dict[str, Any]) -> None:
    events = full_run["events"]
    assert len(events) >= 10
    phases = collections.defaultdict(list)
    for ev in events:
        phases[ev["event_id"]].append(ev["phase"])
        x1, y1, x2, y2 = ev["box"] if ev["box"] else (0, 0, 0, 0)
        assert 0 <= x1 <= x2 <= 768
        assert 0 <= y1 <= y2 <= 576
    assert all(p == ["start", "end"] for p in phases.values()), phases
    for ev in (e for e in events if e["phase"] == "start"):
        jpeg = Path(ev["snapshot"]).read_bytes()
        assert jpeg[:3] == b"\xff\xd8\xff"
        assert len(jpeg) > 10_000


def test_a_person_staying_in_the_zone_raises_one_event(full_run: dict[str, Any]) -> None:
    # given the group standing by the lamp post for the first ~16 s of vtest
    zone = [e for e in full_run["events"] if e["rule_id"] == "lamp-post"]
    long_visits = [e for e in zone if e["phase"] == "end" and e["attributes"]["dwell_s"] >= 10]
    # then at least one person stayed over 10 s (~100 frames inside the zone) ...
    assert long_visits
    for end in long_visits:
        subject = set(end["attributes"]["track_ids"])
        during = [
            e
            for e in zone
            if e["phase"] == "start"
            and e["track_id"] in subject
            and end["attributes"]["entered_at"] <= e["stream_time"] <= end["stream_time"]
        ]
        # ... and that visit produced exactly one START, the one this END closes
        assert [e["event_id"] for e in during] == [end["event_id"]]


def _comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in {"wall_time", "snapshot"}} for e in events]


def _run_in_process(tmp: Path, assets: Path, max_frames: int) -> list[dict[str, Any]]:
    cfg = load_config(agent_config(tmp, assets))
    agent = Agent(cfg, max_frames=max_frames)
    agent.start()
    agent.wait()
    summary = agent.close()
    assert summary.cameras["street"]["frames_processed"] == max_frames
    return read_events(tmp / "events.jsonl")


def test_same_input_and_config_give_the_same_events(tmp_path: Path, assets: Path) -> None:
    first = _run_in_process(tmp_path / "a", assets, max_frames=300)
    second = _run_in_process(tmp_path / "b", assets, max_frames=300)
    assert len(first) >= 4
    assert _comparable(first) == _comparable(second)


def test_a_restart_gives_new_event_ids(tmp_path: Path, assets: Path) -> None:
    # the boot counter in the state folder is part of every id
    first = _run_in_process(tmp_path, assets, max_frames=120)
    (tmp_path / "events.jsonl").unlink()
    second = _run_in_process(tmp_path, assets, max_frames=120)
    assert first and second
    assert not {e["event_id"] for e in first} & {e["event_id"] for e in second}


class _Lines:
    """Collects a process's output lines on a thread, so tests can wait for one."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        self._stream = stream
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """After the process has exited: drain and close the pipe."""
        self._thread.join(timeout=5)
        self._stream.close()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._q.put(line)

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not seen in {timeout}s: {''.join(self.lines)[-2000:]}")


def _start(cfg: Path) -> tuple[subprocess.Popen[str], _Lines]:
    proc = subprocess.Popen(
        agent_argv("run", "-c", str(cfg)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=agent_env(),
    )
    assert proc.stdout is not None
    return proc, _Lines(proc.stdout)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_a_live_run_promptly_and_ends_open_episodes(
    tmp_path: Path, assets: Path, sig: signal.Signals
) -> None:
    source = {"type": "file", "path": str(assets / "vtest.avi"), "pace": True, "loop": True}
    cfg = agent_config(tmp_path, assets, source=source)
    proc, out = _start(cfg)
    try:
        out.wait_for("START street/lamp-post", timeout=60)
        t0 = time.monotonic()
        proc.send_signal(sig)
        rc = proc.wait(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    out.wait_for("summary:", timeout=5)
    out.close()
    assert rc == 0
    assert elapsed < 5
    events = read_events(tmp_path / "events.jsonl")
    starts = {e["event_id"] for e in events if e["phase"] == "start"}
    ends = {e["event_id"] for e in events if e["phase"] == "end"}
    assert starts and starts == ends


def test_sigterm_while_a_camera_is_still_connecting(tmp_path: Path, assets: Path) -> None:
    # given a "camera" that accepts the TCP connection and then never says a word
    silent = socket.create_server(("127.0.0.1", 0))
    url = f"rtsp://admin:hunter2@127.0.0.1:{silent.getsockname()[1]}/cam"
    cfg = agent_config(tmp_path, assets, source={"type": "rtsp", "url": url, "open_timeout_s": 30})
    proc, out = _start(cfg)
    try:
        out.wait_for("state=connecting", timeout=60)
        out.wait_for("agent started", timeout=10)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
        out.close()
        silent.close()
    assert rc == 0
    assert elapsed < 5
    assert "state=reconnecting" not in "".join(out.lines)
    assert "hunter2" not in "".join(out.lines)


class CountingBackend(WrappedBackend):
    """The real ONNX Runtime backend, counting runs; `broken` ones fail every run."""

    def __init__(self, model: Any, broken: bool) -> None:
        super().__init__(create_backend(OnnxRuntimeBackendConfig(type="onnxruntime"), model))
        self.broken = broken
        self.runs = 0

    def infer(self, tensor: Any) -> list[Any]:
        self.runs += 1
        if self.broken:
            raise BackendError("session 2 is broken")
        return self.inner.infer(tensor)


def test_every_workers_session_is_warmed_before_any_camera_opens(
    tmp_path: Path, assets: Path
) -> None:
    backend = {"type": "onnxruntime", "workers": 2}
    cfg = load_config(agent_config(tmp_path, assets, extra={"backend": backend}))
    made: list[CountingBackend] = []
    broken = {"infer-1"}

    def backends(model: Any, label: str) -> CountingBackend:
        made.append(CountingBackend(model, broken=label in broken))
        return made[-1]

    # given two workers, the second one's session broken
    agent = Agent(cfg, backends=backends)
    try:
        # then start fails on it before any camera thread runs, naming the fault
        with pytest.raises(BackendError, match="session 2 is broken"):
            agent.start()
        assert [b.runs for b in made] == [1, 1]
        assert not any(camera.is_alive() for camera in agent.cameras)
    finally:
        agent.close()
    # and with healthy sessions each runs once in warm_up, once only (start reuses it)
    made.clear()
    healthy = Agent(
        cfg, backends=lambda m, _label: made.append(CountingBackend(m, False)) or made[-1]
    )
    healthy.warm_up()
    healthy.warm_up()
    assert [b.runs for b in made] == [1, 1]
    healthy.close()

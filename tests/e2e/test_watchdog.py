"""sd_notify over a real unix datagram socket: READY once, WATCHDOG only while healthy."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.app import Agent
from agent.config import load_config
from agent.health.sdnotify import Notifier
from agent.inference.model import ModelFolder
from agent.inference.onnxrt import OnnxRuntimeBackend
from tests.agent_helpers import agent_config
from tests.backend_helpers import WrappedBackend


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    yield sock, path
    sock.close()


def _collect(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        got.extend((time.monotonic(), line) for line in data.decode().splitlines())
    return got


class HangingBackend(WrappedBackend):
    """Real outputs, then blocks forever once `hang` is set: a wedged accelerator call."""

    name = "hanging"

    def __init__(self, model: ModelFolder, hang: threading.Event, release: threading.Event):
        super().__init__(OnnxRuntimeBackend(model.onnx_path, ["CPUExecutionProvider"], 1))
        self._hang, self._release = hang, release

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        if self._hang.is_set():
            self._release.wait()
        return self.inner.infer(tensor)


def _agent(tmp_path: Path, assets: Path, path: str, **kw: object) -> Agent:
    source = {"type": "file", "path": str(assets / "vtest.avi"), "pace": True, "loop": True}
    extra = {"supervisor": {"stage_timeout_s": 1.0, "watchdog_interval_s": 0.2}}
    cfg = load_config(agent_config(tmp_path, assets, source=source, extra=extra))
    return Agent(cfg, notifier=Notifier(path), **kw)  # type: ignore[arg-type]


def test_healthy_run_sends_ready_once_then_regular_watchdog(
    tmp_path: Path, assets: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    agent = _agent(tmp_path, assets, path)
    agent.start()
    try:
        messages = _collect(sock, 3.0)
    finally:
        agent.close()
    lines = [m for _, m in messages]
    assert lines.count("READY=1") == 1
    assert lines.index("READY=1") < lines.index("WATCHDOG=1")
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    assert len(pings) >= 8
    assert max(np.diff(pings)) < 1.0  # regular: no gap anywhere near the stage timeout
    assert any(m.startswith("STATUS=cameras street=streaming") for m in lines)
    assert "STOPPING=1" in [m for _, m in _collect(sock, 0.3)]


def test_wedged_inference_stops_the_watchdog(
    tmp_path: Path, assets: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    hang, release = threading.Event(), threading.Event()
    agent = _agent(
        tmp_path, assets, path, backends=lambda m, _label: HangingBackend(m, hang, release)
    )
    agent.start()
    try:
        before = _collect(sock, 1.5)
        hang.set()
        wedged_at = time.monotonic()
        after = _collect(sock, 4.0)
    finally:
        release.set()
        agent.close()
    assert sum(m == "WATCHDOG=1" for _, m in before) >= 4
    late = [t for t, m in after if m == "WATCHDOG=1" and t > wedged_at + 1.0 + 0.5]
    assert late == [], "watchdog kept being pinged while inference was wedged"
    assert agent.supervisor.wedged or not agent.supervisor.is_alive()

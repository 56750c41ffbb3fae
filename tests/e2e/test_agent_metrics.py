"""The agent's Prometheus endpoint, scraped over real HTTP while it runs."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from agent.app import Agent
from agent.config import load_config
from tests.agent_helpers import agent_config
from tests.rtsp_server import free_port


def test_metrics_endpoint_serves_the_running_agents_health(tmp_path: Path, assets: Path) -> None:
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
    port = free_port()
    source = {"type": "file", "path": str(assets / "vtest.avi"), "pace": True, "loop": True}
    metrics = {"enabled": True, "port": port}
    cfg = load_config(agent_config(tmp_path, assets, source=source, extra={"metrics": metrics}))
    agent = Agent(cfg)
    agent.start()
    try:
        lane = agent.lanes["street"]
        while lane.frames_processed < 20 and not agent.stop_event.wait(0.1):
            pass
        url = f"http://127.0.0.1:{port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        agent.close()
    lines = [line for line in body.splitlines() if line.startswith("edge_agent_")]
    processed = [line for line in lines if 'camera="street"' in line and "frames_processed" in line]
    assert processed, body[:2000]
    assert float(processed[0].rsplit(" ", 1)[1]) >= 20

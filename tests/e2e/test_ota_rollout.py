"""OTA end to end: real Mosquitto, the real fleet controller (uvicorn), the real agent on
vtest paced as a live camera. The operator publishes model v2 and sets it as desired;
the agent downloads, verifies, stages, validates, swaps live, passes probation and
commits, and its events keep flowing throughout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.app import Agent
from agent.config import load_config
from fleet.artifacts import publish_artifact
from fleet.auth import create_token
from fleet.db import Database
from fleet.signing import load_private_key
from tests.agent_helpers import agent_config, read_events
from tests.e2e.ota_world import fleet
from tests.fleet.helpers import FleetServer
from tests.model_helpers import make_model_dir
from tests.mosquitto import Collector, Mosquitto

__all__ = ["fleet"]  # fixtures, shared with the other OTA tests


def _wait(predicate: Callable[[], bool], timeout: float, what: str, agent: Agent) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        agent.stop_event.wait(0.1)


def _reported(collector: Collector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in collector.on("edge/test-dev/reported")]


@pytest.mark.slow
def test_model_rollout_v1_to_v2_commits_while_events_keep_flowing(
    tmp_path: Path, assets: Path, broker: Mosquitto, fleet: tuple[FleetServer, Database]
) -> None:
    server, db = fleet
    assert server.cfg.signing is not None
    private = server.cfg.signing.private_key
    # given v2 of the model published and signed by the controller
    v2 = make_model_dir(tmp_path / "release", assets, version="0.2.0")
    publish_artifact(
        db, server.cfg.blobs_dir, load_private_key(private), kind="model", path=v2,
        public_url=server.url, ttl_s=3600,
    )  # fmt: skip
    # and the agent on a live (paced) camera, pinned to the fleet's public key
    source = {"type": "file", "path": str(assets / "vtest.avi"), "pace": True, "loop": True}
    extra = {
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "health_interval_s": 1.0},
        "ota": {
            "enabled": True, "public_key": str(private.with_suffix(".pub")),
            "min_free_bytes": 0, "latency_budget_ms": 5000, "latency_runs": 2,
            "probation": {"window_s": 3.0},
        },
    }  # fmt: skip
    cfg = load_config(agent_config(tmp_path, assets, source=source, extra=extra))
    collector = Collector(broker.port, ["edge/test-dev/reported"]).start()
    agent = Agent(cfg)
    agent.start()
    lane = agent.lanes["street"]
    try:
        token = create_token(db, "ops")
        auth = {"Authorization": f"Bearer {token}"}
        _wait(
            lambda: (
                httpx.get(f"{server.url}/api/devices/test-dev", headers=auth).status_code == 200
            ),
            15,
            "the device to register from its birth",
            agent,
        )
        frames_before = lane.frames_processed
        # when the operator sets v2 as the device's desired model
        body = {"model": {"name": "yolox_nano", "version": "0.2.0"}}
        r = httpx.put(f"{server.url}/api/devices/test-dev/desired", json=body, headers=auth)
        assert r.status_code == 200, r.text
        _wait(
            lambda: any(
                (p.get("update") or {}).get("state") == "committed" for p in _reported(collector)
            ),
            60,
            "the update to commit",
            agent,
        )

        # and the controller recorded the committed state from `reported` (its ingest
        # batches MQTT messages, so it may trail the device by a batch)
        url = f"{server.url}/api/devices/test-dev"
        _wait(
            lambda: (
                '"update_state": "committed"' in json.dumps(httpx.get(url, headers=auth).json())
            ),
            10,
            "the controller to record the commit",
            agent,
        )
    finally:
        summary = agent.close()
        collector.stop()
    # then the device runs v2, and its reported state moved forward through the machine
    # (`reported` is latest-wins state, so quick steps may be coalesced on the wire)
    assert agent.current_model().manifest.version == "0.2.0"
    states = [p["update"]["state"] for p in _reported(collector) if p.get("update")]
    path = ["pending", "downloading", "verifying", "staging", "validating", "activating",
            "probation", "committed"]  # fmt: skip
    order = [path.index(s) for s in states if s in path]
    assert order == sorted(order), states
    assert {"downloading", "probation", "committed"} <= set(states), states
    assert states[-1] == "committed"
    # and frames kept flowing through the swap: no inference failure, no stall
    cam = summary.cameras["street"]
    assert cam["inference_failures"] == 0
    assert lane.frames_processed > frames_before + 30
    events = read_events(tmp_path / "events.jsonl")
    assert any(e["rule_type"] == "zone" for e in events)

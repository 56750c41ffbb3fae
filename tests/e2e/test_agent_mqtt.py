"""The real agent on vtest publishing to a real Mosquitto: events, snapshots, health, status."""

from __future__ import annotations

import json
from pathlib import Path

from agent.app import Agent
from agent.config import load_config
from tests.agent_helpers import agent_config, read_events
from tests.mosquitto import Collector, Mosquitto, validate


def test_vtest_events_reach_a_subscriber_valid_against_the_schemas(
    tmp_path: Path, assets: Path, broker: Mosquitto
) -> None:
    # given a subscriber on the device's topics and the agent configured for the broker
    topics = [
        "edge/test-dev/events",
        "edge/test-dev/events/+/snapshot",
        "edge/test-dev/status",
        "edge/test-dev/health",
    ]
    collector = Collector(broker.port, topics).start()
    mqtt = {"host": "127.0.0.1", "port": broker.port, "health_interval_s": 1.0}
    cfg = load_config(agent_config(tmp_path, assets, extra={"mqtt": mqtt}))
    # when the agent runs over the first 300 frames of vtest
    agent = Agent(cfg, max_frames=300)
    agent.start()
    agent.wait()
    summary = agent.close()
    local = read_events(tmp_path / "events.jsonl")
    assert summary.events == len(local) >= 4
    # then every event arrives, in order, valid against the published schema
    collector.wait_for(
        lambda msgs: sum(m.topic.endswith("/events") for m in msgs) >= len(local),
        timeout=20,
        what="all events",
    )
    collector.stop()
    received = [validate("event", m.payload) for m in collector.on("edge/test-dev/events")]
    assert [(e["event_id"], e["phase"]) for e in received] == [
        (e["event_id"], e["phase"]) for e in local
    ]
    # and each START's snapshot JPEG arrives on its own topic
    starts = [e for e in received if e["phase"] == "start" and e["rule_type"] != "camera"]
    for ev in starts:
        [snap] = collector.on(f"edge/test-dev/events/{ev['event_id']}/snapshot")
        assert snap.payload[:3] == b"\xff\xd8\xff"
    # and the birth and the health reports carry the agent's own sections
    status = [json.loads(m.payload) for m in collector.on("edge/test-dev/status")]
    assert status[0]["state"] == "online"
    health = [validate("health", m.payload) for m in collector.on("edge/test-dev/health")]
    assert health, "no health report"
    assert "street" in health[-1]["cameras"]
    assert health[-1]["cameras"]["street"]["detections"] > 0  # the rollout quality gate needs it
    assert health[-1]["inference"]["backend"]

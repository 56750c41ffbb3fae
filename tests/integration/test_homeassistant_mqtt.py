"""Home Assistant discovery through a real Mosquitto: the publisher, with discovery
enabled in the agent config, leaves retained configs that any later subscriber (Home
Assistant starting up) receives, after every connect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import AgentConfig, parse_config
from agent.protocol import Topics
from agent.publish import MqttPublisher
from agent.publish.homeassistant import discovery_from_config
from tests.mosquitto import (
    Collector,
    Mosquitto,
    Received,
    health_provider,
    synthetic_record,
    wait_until,
)

VERSIONS = {"agent": "0.1.0", "model": "m1"}
CONFIG = """
schema_version: 1
device: {id: dev-a, state_dir: %(state)s}
model: {path: /unused}
cameras:
  - id: cam1
    source: {type: file, path: /unused.avi}
    rules: [{id: r1, type: zone, polygon: [[0, 0], [1, 0], [1, 1]]}]
mqtt:
  host: 127.0.0.1
  port: %(port)d
  keepalive_s: 5
  reconnect: {initial_s: 0.1, max_s: 0.3, jitter: 0.5}
  home_assistant: {enabled: true}
"""


def agent_config(port: int, state: Path) -> AgentConfig:
    return parse_config(CONFIG % {"state": state, "port": port})


def start_publisher(cfg: AgentConfig) -> MqttPublisher:
    assert cfg.mqtt is not None
    pub = MqttPublisher(cfg.mqtt, cfg.device.id, cfg.device.state_dir, VERSIONS, health_provider)
    pub.set_discovery(discovery_from_config(cfg, VERSIONS))
    pub.start()
    return pub


def retained_configs(port: int, count: int, client_id: str) -> dict[str, Received]:
    """Subscribe afresh (as Home Assistant does on start) and collect retained configs."""
    sub = Collector(port, ["homeassistant/#", "edge/+/status"], client_id=client_id).start()
    try:
        msgs = sub.wait_for(
            lambda m: (
                len({x.topic for x in m if x.topic.startswith("homeassistant/")}) >= count
                and any(x.topic == "edge/dev-a/status" for x in m)
            ),
            10,
            f"{count} retained discovery configs and the status",
        )
    finally:
        sub.stop()
    return {m.topic: m for m in msgs}


def render(template: str, payload: bytes) -> str:
    jinja2 = pytest.importorskip("jinja2")
    sandbox = pytest.importorskip("jinja2.sandbox")
    env = sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    return str(env.from_string(template).render(value_json=json.loads(payload)))


def test_discovery_configs_are_retained_and_drive_the_entities(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # given the publisher with Home Assistant discovery enabled in the agent config
    cfg = agent_config(broker.port, tmp_path / "state")
    expected = dict(discovery_from_config(cfg, VERSIONS))
    assert len(expected) == 2 + 2 + 1
    events = Collector(broker.port, ["edge/dev-a/events"], client_id="events").start()
    pub = start_publisher(cfg)
    try:
        wait_until(lambda: pub.stats()["connected"], 10, "publisher connected")
        pub.emit(synthetic_record(0))
        got = events.wait_for(lambda m: len(m) >= 1, 10, "one event")
        # when Home Assistant subscribes later
        received = retained_configs(broker.port, len(expected), "ha-late")
    finally:
        pub.stop(5)
        events.stop()
    # then every config arrives retained and byte-identical to what was built
    for topic, payload in expected.items():
        assert received[topic].retain, topic
        assert received[topic].payload == payload
    # and the entities' templates work on what the device really sent
    configs = {json.loads(p)["name"]: json.loads(p) for p in expected.values()}
    status = received[Topics("edge", "dev-a").status].payload
    avail = configs["cam1 r1"]["availability"][0]
    assert render(avail["value_template"], status) == avail["payload_available"]
    assert render(configs["cam1 r1"]["value_template"], got[0].payload) == "ON"


def test_discovery_is_republished_after_each_connect(broker: Mosquitto, tmp_path: Path) -> None:
    # given a connected publisher whose configs are retained on the broker
    cfg = agent_config(broker.port, tmp_path / "state")
    count = len(discovery_from_config(cfg, VERSIONS))
    pub = start_publisher(cfg)
    try:
        wait_until(lambda: pub.stats()["connected"], 10, "publisher connected")
        retained_configs(broker.port, count, "ha-1")
        # when the broker crashes, losing its retained messages (no persistence), and returns
        connects = pub.stats()["connects"]
        broker.kill()
        wait_until(lambda: not pub.stats()["connected"], 10, "publisher noticed the outage")
        broker.start()
        wait_until(lambda: pub.stats()["connects"] > connects, 15, "publisher reconnected")
        # then a fresh subscriber finds every config again: they were sent on reconnect
        again = retained_configs(broker.port, count, "ha-2")
    finally:
        pub.stop(5)
    assert sum(1 for t in again if t.startswith("homeassistant/")) == count


def test_acl_refusal_is_logged_and_events_still_flow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a broker whose ACL grants the device its edge/ tree only (the shipped ACL's
    # shape without a discovery line)
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edge/#\n", encoding="utf-8")
    broker = Mosquitto(tmp_path / "broker", ["allow_anonymous true", f"acl_file {acl}"]).start()
    cfg = agent_config(broker.port, tmp_path / "state")
    events = Collector(broker.port, ["edge/dev-a/events"], client_id="events").start()
    pub = start_publisher(cfg)
    try:
        # when the publisher connects and sends its discovery configs and an event
        wait_until(lambda: pub.stats()["connected"], 10, "publisher connected")
        pub.emit(synthetic_record(0))
        events.wait_for(lambda m: len(m) >= 1, 10, "the event despite refused configs")
        # then the refusal (MQTT 5 PUBACK "not authorized") is logged, once per interval
        wait_until(
            lambda: any("discovery config refused" in r.message for r in caplog.records),
            10,
            "the refusal logged",
        )
    finally:
        pub.stop(5)
        events.stop()
        broker.stop()
    refusals = [r for r in caplog.records if "discovery config refused" in r.message]
    assert len(refusals) == 1
    assert pub.stats()["broker_rejected"] == 0  # outbox rows are not affected

"""Home Assistant discovery payloads: topics, ids, and templates rendered with Jinja
(Home Assistant's template engine) against the agent's real wire payloads."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

from agent.config import parse_config
from agent.protocol import DeviceState, InvalidIdError, Topics, ha_id
from agent.publish.health import HealthBuilder
from agent.publish.homeassistant import (
    DiscoveryOptions,
    RuleRef,
    discovery_from_config,
    discovery_messages,
    removal_messages,
)
from agent.publish.payloads import event_messages, status_payload
from agent.types import EventPhase, EventRecord
from tests.mosquitto import synthetic_record

VERSIONS = {"agent": "0.1.0", "model": "yolox_nano@1"}
RULES = [
    RuleRef("cam1", "r1", "zone"),
    RuleRef("cam1", "door", "line"),
    RuleRef("cam2", "r1", "count"),
]


def configs(topics: Topics, **opts: Any) -> dict[str, dict[str, Any]]:
    msgs = discovery_messages(topics, ["cam1", "cam2"], RULES, VERSIONS, DiscoveryOptions(**opts))
    return {topic: json.loads(payload) for topic, payload in msgs}


def by_name(cfgs: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [c for c in cfgs.values() if c["name"] == name]
    return found


def render(template: str, payload: bytes) -> str:
    """Render like Home Assistant's MQTT value templates: a sandbox, `value` and `value_json`.
    StrictUndefined makes a template that reads a missing key fail here, not silently there."""
    jinja2 = pytest.importorskip("jinja2")
    sandbox = pytest.importorskip("jinja2.sandbox")
    env = sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    text = payload.decode("utf-8")
    return str(env.from_string(template).render(value=text, value_json=json.loads(text)))


def health(cameras: dict[str, Any] | None, degraded: bool = False) -> bytes:
    """A real health report (the publisher's HealthBuilder and schema) with these sections."""
    stats = {
        "connected": True, "state": "connected", "session": 1, "published": 0,
        "broker_rejected": 0, "connects": 1, "incoming_rejected": {},
        "outbox": {"depth": 4, "bytes": 10, "evicted": 0, "oversize_dropped": 0},
    }  # fmt: skip
    sections = {"cameras": cameras, "inference": {"backend": "ort", "degraded": degraded}}
    builder = HealthBuilder("dev-a", 1.0, lambda: sections)
    payload = builder.due(time.monotonic(), 1, lambda: stats)
    assert payload is not None
    return payload


def event(phase: EventPhase, camera: str = "cam1", rule: str = "r1") -> bytes:
    rec = synthetic_record(1, camera=camera)
    ev = dataclasses.replace(rec.event, phase=phase, rule_id=rule)
    (msg,) = event_messages(Topics("edge", "dev-a"), EventRecord(ev), 1)
    return msg.payload


def test_topics_unique_ids_and_device_block() -> None:
    # given a device with two cameras and three rules
    cfgs = configs(Topics("edge", "dev-a"))
    # then: 2 device entities + 2 per camera + 1 per rule, under <prefix>/<component>/<node>/
    assert len(cfgs) == 2 + 2 * 2 + 3
    for topic in cfgs:
        prefix, component, node, _obj, last = topic.split("/")
        assert (prefix, node, last) == ("homeassistant", "dev-a", "config")
        assert component in {"binary_sensor", "sensor"}
    unique = [c["unique_id"] for c in cfgs.values()]
    assert len(set(unique)) == len(unique)
    for c in cfgs.values():
        assert c["device"] == {
            "identifiers": ["edge-vision_dev-a"],
            "name": "Edge agent dev-a",
            "manufacturer": "edge-vision",
            "model": "edge-vision agent",
            "sw_version": "0.1.0",
        }
        assert c["availability"][0]["topic"] == "edge/dev-a/status"
    # and the ids are stable from one start to the next, distinct across devices
    assert configs(Topics("edge", "dev-a")) == cfgs
    other = {c["unique_id"] for c in configs(Topics("edge", "dev-b")).values()}
    assert not other & set(unique)


def test_dotted_ids_get_safe_distinct_topic_levels() -> None:
    # HA node/object ids allow [A-Za-z0-9_-] only; our ids may contain '.'
    assert ha_id("dev-a") == "dev-a"
    assert ha_id("dev.a") != ha_id("dev_a")
    assert ha_id("dev.a").startswith("dev_a_")
    topics = {t.split("/")[2] for t in configs(Topics("edge", "site.1"))}
    assert topics == {ha_id("site.1")}
    assert "." not in ha_id("site.1")
    with pytest.raises(InvalidIdError):
        Topics("edge", "dev-a").ha_discovery("homeassistant", "binary/sensor", "x")


def test_custom_discovery_prefix() -> None:
    cfgs = configs(Topics("edge", "dev-a"), discovery_prefix="ha-test")
    assert all(t.startswith("ha-test/") for t in cfgs)


def test_availability_follows_the_status_birth_and_will() -> None:
    avail = by_name(configs(Topics("edge", "dev-a")), "cam1 online")["availability"][0]
    for state, expected in ((DeviceState.ONLINE, "payload_available"),
                            (DeviceState.OFFLINE, "payload_not_available")):  # fmt: skip
        payload = status_payload(state, device_id="dev-a", session=2, versions=VERSIONS,
                                 protocol="5", reason=None)  # fmt: skip
        assert render(avail["value_template"], payload) == avail[expected]


def test_camera_online_and_fps_from_health() -> None:
    cfgs = configs(Topics("edge", "dev-a"), expire_after_s=90)
    online, fps = by_name(cfgs, "cam1 online"), by_name(cfgs, "cam1 fps")
    assert online["state_topic"] == fps["state_topic"] == "edge/dev-a/health"
    assert online["device_class"] == "connectivity" and online["expire_after"] == 90
    streaming = health({"cam1": {"state": "streaming", "fps_processed": 9.5}})
    reconnecting = health({"cam1": {"state": "reconnecting", "fps_processed": 0.0}})
    assert render(online["value_template"], streaming) == "ON"
    assert render(online["value_template"], reconnecting) == "OFF"
    assert render(online["value_template"], health(None)) == "OFF"  # provider_error report
    assert render(fps["value_template"], streaming) == "9.5"
    assert json.loads(render(online["json_attributes_template"], streaming))["state"] == "streaming"
    assert render(fps["value_template"], health({})) == "None"  # HA: unknown


def test_device_entities_from_health() -> None:
    cfgs = configs(Topics("edge", "dev-a"))
    degraded, outbox = by_name(cfgs, "inference degraded"), by_name(cfgs, "outbox depth")
    assert render(degraded["value_template"], health({}, degraded=True)) == "ON"
    assert render(degraded["value_template"], health({}, degraded=False)) == "OFF"
    assert render(outbox["value_template"], health({})) == "4"


def test_zone_rule_sensor_follows_its_own_events_only() -> None:
    sensor = by_name(configs(Topics("edge", "dev-a")), "cam1 r1")
    assert sensor["state_topic"] == "edge/dev-a/events"
    assert sensor["device_class"] == "occupancy"
    tpl = sensor["value_template"]
    assert render(tpl, event(EventPhase.START)) == "ON"
    assert render(tpl, event(EventPhase.END)) == "OFF"
    # another rule, or the same rule id on another camera: empty output, ignored by HA
    assert render(tpl, event(EventPhase.START, rule="door")) == ""
    assert render(tpl, event(EventPhase.END, camera="cam2")) == ""


def test_line_rule_sensor_turns_on_and_holds() -> None:
    sensor = by_name(configs(Topics("edge", "dev-a"), line_hold_s=7), "cam1 door")
    assert sensor["off_delay"] == 7
    assert render(sensor["value_template"], event(EventPhase.START, rule="door")) == "ON"
    assert render(sensor["value_template"], event(EventPhase.END, rule="door")) == ""


def test_removal_messages_are_empty_retained_payloads() -> None:
    msgs = discovery_messages(Topics("edge", "dev-a"), ["cam1"], [], VERSIONS)
    assert removal_messages(msgs) == [(t, b"") for t, _ in msgs]


CONFIG = """
schema_version: 1
device: {id: dev-a, state_dir: /tmp/x}
model: {path: /m}
cameras:
  - id: cam1
    source: {type: file, path: /v.avi}
    rules: [{id: r1, type: zone, polygon: [[0, 0], [1, 0], [1, 1]]}]
  - id: spare
    enabled: false
    source: {type: file, path: /v.avi}
mqtt: {host: 127.0.0.1, health_interval_s: 10, %s}
"""


def test_discovery_from_config_is_off_by_default() -> None:
    cfg = parse_config(CONFIG % "prefix: edge")
    assert cfg.mqtt is not None and cfg.mqtt.home_assistant.enabled is False
    assert discovery_from_config(cfg, VERSIONS) == []


def test_discovery_from_config_when_enabled() -> None:
    ha = "home_assistant: {enabled: true, discovery_prefix: hass}"
    cfg = parse_config(CONFIG % ha)
    cfgs = {t: json.loads(p) for t, p in discovery_from_config(cfg, VERSIONS)}
    # the disabled camera is left out; health-driven entities expire after 3 intervals
    assert len(cfgs) == 2 + 2 + 1
    assert all(t.startswith("hass/") for t in cfgs)
    assert by_name(cfgs, "cam1 online")["expire_after"] == 30
    assert by_name(cfgs, "cam1 r1")["state_topic"] == "edge/dev-a/events"

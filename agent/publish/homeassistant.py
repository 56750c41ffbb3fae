"""Home Assistant MQTT discovery: retained configs that make the device's cameras and
rules appear in Home Assistant without any configuration there (pure functions).

Nothing new goes on the wire for these entities: every one reads a topic the agent
already publishes (`health`, `events`) through a Jinja `value_template`, and takes
its availability from the retained `status` birth / Last Will (JSON, so through a
template on `state`). The publisher sends the list from `discovery_messages` retained,
after the birth, on every connect (`MqttPublisher.set_discovery`).

Entities per device: inference degraded (binary_sensor, problem), outbox depth
(sensor); per camera: online (binary_sensor, connectivity: state == streaming, with
the camera's health section as attributes) and processed fps (sensor); per rule:
active (binary_sensor). Templates render an empty string for messages that concern
another rule or camera, which Home Assistant ignores without changing the state.
docs/protocol.md ("Home Assistant") lists the limits of this mapping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config import AgentConfig
from agent.protocol import Topics, ha_id, validate_id

ORIGIN = "edge-vision"


@dataclass(frozen=True)
class RuleRef:
    """One configured rule of one camera (`rule_type`: zone, line or count)."""

    camera_id: str
    rule_id: str
    rule_type: str


@dataclass(frozen=True)
class DiscoveryOptions:
    discovery_prefix: str = "homeassistant"
    expire_after_s: int | None = None
    """Health-driven entities turn unavailable when no report came for this long."""
    line_hold_s: int = 5
    """A line crossing has no duration: its sensor turns off after this many seconds."""


def _availability(topics: Topics) -> list[dict[str, str]]:
    return [
        {
            "topic": topics.status,
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]


def _device(topics: Topics, versions: Mapping[str, str]) -> dict[str, Any]:
    return {
        "identifiers": [f"{ORIGIN}_{ha_id(topics.device_id)}"],
        "name": f"Edge agent {topics.device_id}",
        "manufacturer": ORIGIN,
        "model": "edge-vision agent",
        "sw_version": versions.get("agent", "unknown"),
    }


def _camera_expr(camera_id: str) -> str:
    """Jinja expression for the camera's health section ({} when absent)."""
    return f"((value_json.cameras or {{}}).get('{validate_id(camera_id, 'camera id')}') or {{}})"


def _camera_entities(
    topics: Topics, camera_id: str, opts: DiscoveryOptions
) -> list[tuple[str, str, dict[str, Any]]]:
    cam = _camera_expr(camera_id)
    expire = {} if opts.expire_after_s is None else {"expire_after": opts.expire_after_s}
    online = {
        "name": f"{camera_id} online",
        "device_class": "connectivity",
        "state_topic": topics.health,
        "value_template": f"{{{{ 'ON' if {cam}.get('state') == 'streaming' else 'OFF' }}}}",
        "json_attributes_topic": topics.health,
        "json_attributes_template": f"{{{{ {cam} | tojson }}}}",
        **expire,
    }
    fps = {
        "name": f"{camera_id} fps",
        "state_topic": topics.health,
        "value_template": f"{{{{ {cam}.get('fps_processed') }}}}",
        "unit_of_measurement": "fps",
        "state_class": "measurement",
        "suggested_display_precision": 1,
        "entity_category": "diagnostic",
        **expire,
    }
    return [
        ("binary_sensor", f"{camera_id}/online", online),
        ("sensor", f"{camera_id}/fps", fps),
    ]


def _rule_entity(
    topics: Topics, rule: RuleRef, opts: DiscoveryOptions
) -> tuple[str, str, dict[str, Any]]:
    cam = validate_id(rule.camera_id, "camera id")
    rid = validate_id(rule.rule_id, "rule id")
    match = f"value_json.camera_id == '{cam}' and value_json.rule_id == '{rid}'"
    config: dict[str, Any] = {
        "name": f"{cam} {rid}",
        "state_topic": topics.events,
        "qos": 1,
    }
    if rule.rule_type == "line":  # START and END come together: hold ON for a while
        config["value_template"] = (
            f"{{% if {match} and value_json.phase == 'start' %}}ON{{% endif %}}"
        )
        config["off_delay"] = opts.line_hold_s
        config["icon"] = "mdi:transit-connection-horizontal"
    else:
        on_off = "{{ 'ON' if value_json.phase == 'start' else 'OFF' }}"
        config["value_template"] = f"{{% if {match} %}}{on_off}{{% endif %}}"
        if rule.rule_type == "zone":
            config["device_class"] = "occupancy"
    return ("binary_sensor", f"{cam}/{rid}/active", config)


def _device_entities(
    topics: Topics, opts: DiscoveryOptions
) -> list[tuple[str, str, dict[str, Any]]]:
    expire = {} if opts.expire_after_s is None else {"expire_after": opts.expire_after_s}
    degraded = {
        "name": "inference degraded",
        "device_class": "problem",
        "state_topic": topics.health,
        "value_template": "{{ 'ON' if (value_json.inference or {}).get('degraded') else 'OFF' }}",
        "json_attributes_topic": topics.health,
        "json_attributes_template": "{{ (value_json.inference or {}) | tojson }}",
        "entity_category": "diagnostic",
        **expire,
    }
    outbox = {
        "name": "outbox depth",
        "state_topic": topics.health,
        "value_template": "{{ value_json.publisher.outbox.depth }}",
        "unit_of_measurement": "messages",
        "state_class": "measurement",
        "entity_category": "diagnostic",
        **expire,
    }
    return [("binary_sensor", "agent/degraded", degraded), ("sensor", "agent/outbox", outbox)]


def discovery_messages(
    topics: Topics,
    cameras: Sequence[str],
    rules: Sequence[RuleRef],
    versions: Mapping[str, str],
    options: DiscoveryOptions | None = None,
) -> list[tuple[str, bytes]]:
    """(topic, JSON payload) of every discovery config, to be published retained, QoS 1.

    Raises InvalidIdError for a camera or rule id that is not a safe topic level (the
    config already refuses those)."""
    opts = options or DiscoveryOptions()
    entities = _device_entities(topics, opts)
    for camera_id in cameras:
        entities += _camera_entities(topics, camera_id, opts)
    entities += [_rule_entity(topics, rule, opts) for rule in rules]
    node = ha_id(topics.device_id)
    device = _device(topics, versions)
    origin = {"name": ORIGIN, "sw_version": versions.get("agent", "unknown")}
    out = []
    for component, key, config in entities:
        object_id = ha_id(key)
        payload = {
            **config,
            "unique_id": f"{ORIGIN}_{node}_{object_id}",
            "availability": _availability(topics),
            "device": device,
            "origin": origin,
        }
        topic = topics.ha_discovery(opts.discovery_prefix, component, object_id)
        out.append((topic, json.dumps(payload, sort_keys=True).encode("utf-8")))
    return out


def removal_messages(messages: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Empty retained payloads on the same topics: Home Assistant deletes the entities."""
    return [(topic, b"") for topic, _ in messages]


def discovery_from_config(cfg: AgentConfig, versions: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """The discovery messages for this agent config; [] when MQTT or discovery is off."""
    mqtt = cfg.mqtt
    if mqtt is None or not mqtt.home_assistant.enabled:
        return []
    cams = [c for c in cfg.cameras if c.enabled]
    rules = [RuleRef(c.id, r.id, r.type) for c in cams for r in c.rules]
    options = DiscoveryOptions(
        discovery_prefix=mqtt.home_assistant.discovery_prefix,
        expire_after_s=max(1, math.ceil(3 * mqtt.health_interval_s)),
        line_hold_s=mqtt.home_assistant.line_hold_s,
    )
    topics = Topics(mqtt.prefix, cfg.device.id)
    return discovery_messages(topics, [c.id for c in cams], rules, versions, options)

"""Desired state, commands and hostile payloads arriving at a real publisher."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.protocol import DesiredState
from agent.publish import MqttPublisher
from tests.mosquitto import (
    Collector,
    Mosquitto,
    event_ids,
    make_cfg,
    publisher,
    synthetic_record,
    validate,
    wait_until,
)


@pytest.fixture
def fleet(broker: Mosquitto) -> Iterator[Collector]:
    """The fleet side: watches device output and sends desired/cmd."""
    c = Collector(broker.port, ["edge/dev-a/#"], client_id="fleet").start()
    yield c
    c.stop()


@pytest.fixture
def pub(broker: Mosquitto, fleet: Collector, tmp_path: Path) -> Iterator[MqttPublisher]:
    p = publisher(make_cfg(broker.port), tmp_path / "state")
    p.start()
    fleet.wait_for(lambda m: any(x.topic == "edge/dev-a/status" for x in m), 5, "birth")
    wait_until(lambda: p.stats()["connected"], 5, "publisher connected")
    yield p
    p.stop(2)


def send(fleet: Collector, topic: str, payload: bytes, props: Properties | None = None,
         retain: bool = False) -> None:  # fmt: skip
    info = fleet.client.publish(topic, payload, qos=1, retain=retain, properties=props)
    info.wait_for_publish(5)


def test_desired_state_is_validated_stored_and_handed_to_the_hook(
    pub: MqttPublisher, fleet: Collector
) -> None:
    # given a hook on desired state
    got: list[DesiredState] = []
    arrived = threading.Event()
    pub.on_desired = lambda d: (got.append(d), arrived.set())  # type: ignore[func-returns-value]
    # when the fleet publishes a valid retained desired state
    desired = {"schema": 1, "model": {"version": "2.0", "manifest_url": "http://f/m.json",
                                      "sequence": 7}}  # fmt: skip
    send(fleet, "edge/dev-a/desired", json.dumps(desired).encode(), retain=True)
    # then the publisher validates it, stores it and calls the hook once
    assert arrived.wait(5)
    assert got[0].model is not None and got[0].model.version == "2.0"
    assert pub.desired == got[0]


def test_commands_answer_over_response_topic_with_correlation_data(
    pub: MqttPublisher, fleet: Collector
) -> None:
    # given MQTT 5 requests with a response topic and correlation data
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "edge/dev-a/response/req-1"
    props.CorrelationData = b"corr-1"
    # when the fleet sends ping, an unknown command, and a 3.1.1-style request
    send(fleet, "edge/dev-a/cmd/ping", b'{"schema": 1}', props)
    send(fleet, "edge/dev-a/cmd/reboot", b'{"schema": 1, "request_id": "r2"}')
    # then ping answers ok on the requested topic with the correlation data echoed
    msgs = fleet.wait_for(lambda m: any(x.topic == "edge/dev-a/response/req-1" for x in m), 5,
                          "ping response")  # fmt: skip
    ping = next(x for x in msgs if x.topic == "edge/dev-a/response/req-1")
    assert validate("command_response", ping.payload)["code"] == "ok"
    assert ping.properties.CorrelationData == b"corr-1"
    # and the unknown command answers `unsupported` on the default topic, request_id echoed
    msgs = fleet.wait_for(lambda m: any(x.topic == "edge/dev-a/response/reboot" for x in m), 5,
                          "reboot response")  # fmt: skip
    reboot = validate("command_response", fleet.on("edge/dev-a/response/reboot")[0].payload)
    assert reboot["code"] == "unsupported" and reboot["request_id"] == "r2"


def test_reported_state_is_retained(
    pub: MqttPublisher, broker: Mosquitto, fleet: Collector
) -> None:
    # when the agent reports its state
    pub.publish_reported({"model_version": "m1", "update_state": "committed"})
    fleet.wait_for(lambda m: any(x.topic == "edge/dev-a/reported" for x in m), 5, "reported")
    # then a late subscriber gets it retained, valid against the schema
    late = Collector(broker.port, ["edge/dev-a/reported"], client_id="late").start()
    msgs = late.wait_for(lambda m: len(m) >= 1, 5, "retained reported")
    late.stop()
    data = validate("reported", msgs[0].payload)
    assert msgs[0].retain and data["update_state"] == "committed" and data["device_id"] == "dev-a"


HOSTILE = [
    ("edge/dev-a/desired", b"not json {", "not_json"),
    ("edge/dev-a/desired", b'{"schema": 1, "model": {"version": 3}}', "schema"),
    ("edge/dev-a/desired", b'{"model": null}', "schema"),
    ("edge/dev-a/desired", b"[1, 2, 3]", "not_object"),
    ("edge/dev-a/desired", bytes(range(256)), "not_utf8"),
    ("edge/dev-a/desired", b"{" + b" " * 70_000 + b"}", "too_large"),
    ("edge/dev-a/desired", b"[" * 30_000 + b"]" * 30_000, "not_json"),
    ("edge/dev-a/cmd/ping", b"\xff\xfe\x00", "not_utf8"),
    ("edge/dev-a/cmd/ping", b'{"schema": 1, "args": [], "extra": 1}', "schema"),
    ("edge/dev-a/cmd/bad name", b'{"schema": 1}', "unexpected_topic"),
]


def test_hostile_payloads_are_rejected_with_a_reason_and_publishing_goes_on(
    pub: MqttPublisher, fleet: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.publish")
    # when the fleet side sends malformed, wrong-schema, huge and binary payloads
    for topic, payload, _ in HOSTILE:
        send(fleet, topic, payload)
    # then each is rejected, counted by reason, and logged with that reason
    expected: dict[str, int] = {}
    for _, _, reason in HOSTILE:
        expected[reason] = expected.get(reason, 0) + 1
    wait_until(lambda: pub.stats()["incoming_rejected"] == expected, 5, "all rejections")
    logged = {r.getMessage().split("reason=")[1].split()[0] for r in caplog.records
              if "rejected incoming payload" in r.getMessage()}  # fmt: skip
    assert logged == set(expected)
    # and bad command requests still get an `invalid` answer
    wait_until(lambda: len(fleet.on("edge/dev-a/response/ping")) == 2, 5, "invalid answers")
    answers = [
        validate("command_response", m.payload) for m in fleet.on("edge/dev-a/response/ping")
    ]
    assert {a["code"] for a in answers} == {"invalid"}
    # and the publisher is still connected and delivering events
    pub.emit(synthetic_record(1))
    msgs = fleet.wait_for(lambda m: len(event_ids(m)) == 1, 5, "event after hostile input")
    assert event_ids(msgs) == ["dev-a.cam1.r1.000001"]
    assert pub.stats()["connected"] and pub.stats()["protocol"] == "5" and pub.desired is None

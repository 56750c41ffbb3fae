"""Mutual TLS and the shipped ACL on a real Mosquitto, certificates made by openssl."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.mqtt import MqttConfig
from agent.publish import MqttPublisher
from tests.mosquitto import (
    REPO,
    Collector,
    Mosquitto,
    Pki,
    client_tls,
    event_ids,
    health_provider,
    make_pki,
    synthetic_record,
    tls_conf_lines,
    wait_until,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ["dev-a", "fleet"], ["rogue"])


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker", tls_conf_lines(pki)).start()
    yield b
    b.stop()


@pytest.fixture
def fleet(broker: Mosquitto, pki: Pki) -> Iterator[Collector]:
    c = Collector(broker.port, ["edge/#"], "fleet", tls=client_tls(pki, "fleet")).start()
    yield c
    c.stop()


def tls_cfg(port: int, pki: Pki, cert: str, ca: Path | None = None) -> MqttConfig:
    crt, key = pki.client(cert)
    data: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "keepalive_s": 5,
        "reconnect": {"initial_s": 0.05, "max_s": 0.2},
        "tls": {"ca_file": str(ca or pki.ca), "cert_file": str(crt), "key_file": str(key)},
    }  # fmt: skip
    return MqttConfig.model_validate(data)


def test_device_with_its_certificate_delivers_events(
    broker: Mosquitto, fleet: Collector, pki: Pki, tmp_path: Path
) -> None:
    # given a device whose certificate (CN=dev-a) is signed by the fleet CA
    pub = MqttPublisher(tls_cfg(broker.port, pki, "dev-a"), "dev-a", tmp_path / "s", {},
                        health_provider)  # fmt: skip
    pub.start()
    # when it emits events
    pub.emit(synthetic_record(1))
    pub.emit(synthetic_record(2))
    # then the fleet receives them over mutual TLS
    msgs = fleet.wait_for(lambda m: len(event_ids(m)) >= 2, 10, "events over TLS")
    pub.stop(2)
    assert event_ids(msgs)[:2] == ["dev-a.cam1.r1.000001", "dev-a.cam1.r1.000002"]


@pytest.mark.parametrize("case", ["client cert from another CA", "server from an untrusted CA"])
def test_wrong_certificates_are_refused(
    broker: Mosquitto, fleet: Collector, pki: Pki, tmp_path: Path, case: str
) -> None:
    # given a device with a client certificate from a rogue CA, or trusting the wrong CA
    if case == "client cert from another CA":
        cfg = tls_cfg(broker.port, pki, "rogue")
    else:
        cfg = tls_cfg(broker.port, pki, "dev-a", ca=pki.dir / "rogue-ca.crt")
    pub = MqttPublisher(cfg, "dev-a", tmp_path / "s", {}, health_provider)
    pub.start()
    pub.emit(synthetic_record(1))
    # when it has tried to connect a few times
    wait_until(lambda: pub.stats()["connect_failures"] >= 3, 10, "three failed connects")
    pub.stop(1)
    # then it never connected, nothing reached the fleet, and the event is still queued
    assert pub.stats()["connects"] == 0
    assert not fleet.on("edge/dev-a/events") and not fleet.on("edge/dev-a/status")
    assert pub.stats()["outbox"]["depth"] == 1


def test_device_publishing_outside_its_namespace_gets_nothing_delivered(
    broker: Mosquitto, fleet: Collector, pki: Pki
) -> None:
    # given dev-a connected with its own certificate under the shipped ACL
    acks: dict[int, Any] = {}
    dev = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dev-a",
                      protocol=mqtt.MQTTv5)  # fmt: skip
    dev.tls_set_context(client_tls(pki, "dev-a"))
    dev.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc)
    dev.connect("127.0.0.1", broker.port)
    dev.loop_start()
    try:
        # when it publishes as dev-b, to the fleet's desired topic of dev-b, then to its own
        forged = dev.publish("edge/dev-b/events", b'{"forged": true}', qos=1)
        forged_desired = dev.publish("edge/dev-b/desired", b'{"forged": true}', qos=1)
        own = dev.publish("edge/dev-a/events", b'{"marker": true}', qos=1)
        for info in (forged, forged_desired, own):
            info.wait_for_publish(5)
        # then only its own topic reaches the fleet (the marker arrives after the forgeries
        # would have: one connection, in order)
        fleet.wait_for(lambda m: any(x.topic == "edge/dev-a/events" for x in m), 5, "marker")
        assert [m.topic for m in fleet.messages] == ["edge/dev-a/events"]
        # and MQTT 5 tells the device why
        assert acks[forged.mid].getName() == "Not authorized"
        assert not acks[own.mid].is_failure
    finally:
        dev.disconnect()
        dev.loop_stop()


def test_publisher_configured_with_another_devices_id_is_refused_and_counts_it(
    broker: Mosquitto, fleet: Collector, pki: Pki, tmp_path: Path
) -> None:
    # given a publisher holding dev-a's certificate but configured as dev-b
    pub = MqttPublisher(tls_cfg(broker.port, pki, "dev-a"), "dev-b", tmp_path / "s", {},
                        health_provider)  # fmt: skip
    pub.start()
    # when it emits an event
    pub.emit(synthetic_record(1, device_id="dev-b"))
    # then the broker refuses it, the publisher counts it, and the fleet sees nothing of dev-b
    wait_until(lambda: pub.stats()["broker_rejected"] >= 1, 5, "broker refusal")
    pub.stop(1)
    assert not [m for m in fleet.messages if m.topic.startswith("edge/dev-b/")]


def test_shipped_broker_config_example_runs(tmp_path: Path, pki: Pki) -> None:
    # given the shipped example config with its paths pointed at the test PKI
    text = (REPO / "configs" / "mosquitto" / "mosquitto.conf").read_text()
    b = Mosquitto(tmp_path / "broker", [])
    subs = {
        r"^listener 8883$": "",
        r"^cafile .*": f"cafile {pki.ca}",
        r"^certfile .*": f"certfile {pki.server_cert}",
        r"^keyfile .*": f"keyfile {pki.server_key}",
        r"^acl_file .*": f"acl_file {REPO / 'configs' / 'mosquitto' / 'acl'}",
        r"^persistence_location .*": f"persistence_location {tmp_path}/",
    }
    for pattern, repl in subs.items():
        text = re.sub(pattern, repl, text, flags=re.MULTILINE)
    # (the helper's own `listener PORT` line comes first; the example's settings apply to it)
    b.conf_lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    b.start()
    try:
        # when the fleet connects with its certificate
        c = Collector(b.port, ["edge/+/status"], "fleet", tls=client_tls(pki, "fleet")).start()
        c.client.publish("edge/dev-a/status", json.dumps({"probe": 1}), qos=1).wait_for_publish(5)
        # then it works end to end
        c.wait_for(lambda m: len(m) >= 1, 5, "probe")
        c.stop()
    finally:
        b.stop()

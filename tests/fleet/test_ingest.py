"""MQTT ingest against a real Mosquitto, with the agent's own publisher as the device."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from agent.protocol import DeviceState, Topics
from fleet.config import FleetConfig
from fleet.db import Database, open_database
from fleet.ingest import FleetMqtt
from fleet.models import Device, Event, Reported
from tests.fleet.helpers import RawDevice, fleet_config, running_ingest
from tests.mosquitto import Mosquitto, make_cfg, publisher, synthetic_record, wait_until


@pytest.fixture
def setup(broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[FleetConfig, Database, FleetMqtt]]:
    with running_ingest(tmp_path, broker.port) as running:
        yield running


def _device(db: Database, device_id: str) -> Device | None:
    with db.session() as s:
        return s.get(Device, device_id)


def test_device_appears_on_birth_and_goes_offline_on_its_will(
    broker: Mosquitto, setup: tuple[FleetConfig, Database, FleetMqtt]
) -> None:
    _, db, _conn = setup
    # given a device that connects with a Will and sends its birth
    dev = RawDevice(broker.port, "cam-01", session=3, client_id="cam-01").connect_and_birth()
    wait_until(lambda: _device(db, "cam-01") is not None, 5, "device registered")
    d = _device(db, "cam-01")
    assert d is not None
    assert (d.online, d.session, d.versions["model"]) == (True, 3, "m3")
    # when the connection dies and the broker publishes the Will
    dev.die()
    # then the device is offline with reason will
    wait_until(lambda: not _device(db, "cam-01").online, 5, "offline from Will")  # type: ignore[union-attr]
    assert _device(db, "cam-01").offline_reason == "will"  # type: ignore[union-attr]


def test_a_stale_will_from_an_older_session_is_ignored(
    broker: Mosquitto, setup: tuple[FleetConfig, Database, FleetMqtt]
) -> None:
    _, db, conn = setup
    # given an old connection (session 1) still open while a newer one (session 2) births
    old = RawDevice(broker.port, "cam-02", session=1, client_id="cam-02-old").connect_and_birth()
    new = RawDevice(broker.port, "cam-02", session=2, client_id="cam-02-new").connect_and_birth()
    wait_until(lambda: conn.stored["status"] >= 2, 5, "both births")
    # when the old connection's Will arrives late
    old.die()
    wait_until(lambda: conn.stored["status"] >= 3, 5, "the stale Will processed")
    # then the device stays online in session 2
    d = _device(db, "cam-02")
    assert d is not None
    assert (d.online, d.session) == (True, 2)
    # and the current session's Will still takes it offline
    new.die()
    wait_until(lambda: not _device(db, "cam-02").online, 5, "offline from the current Will")  # type: ignore[union-attr]


def test_retained_birth_published_before_the_controller_started_is_picked_up(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # given a device that was born before any controller existed
    RawDevice(broker.port, "early", session=5, client_id="early").connect_and_birth()
    cfg = fleet_config(tmp_path, broker.port)
    assert cfg.mqtt is not None
    db = open_database(cfg.database_url)
    conn = FleetMqtt(cfg.mqtt, db, cfg.snapshots_dir)
    # when the controller starts
    conn.start()
    try:
        # then the retained birth registers the device
        wait_until(lambda: _device(db, "early") is not None, 5, "retained birth")
    finally:
        conn.stop()


def test_agent_events_health_snapshot_and_reported_are_stored_once(
    broker: Mosquitto, setup: tuple[FleetConfig, Database, FleetMqtt], tmp_path: Path,
    assets: Path,
) -> None:  # fmt: skip
    cfg, db, conn = setup
    jpeg = (assets / "person.jpg").read_bytes()
    # given the agent's real publisher sending health, two events (one with a snapshot)
    pub = publisher(make_cfg(broker.port, health_interval_s=0.2), tmp_path / "state", "dev-a")
    pub.start()
    pub.emit(synthetic_record(1, snapshot=jpeg))
    pub.emit(synthetic_record(2))
    pub.publish_reported({"update": {"state": "probation", "version": "0.2.0"}})
    try:
        wait_until(lambda: conn.stored["events"] >= 2 and conn.stored["snapshot"] >= 1, 10,
                   "events and snapshot")  # fmt: skip
        wait_until(lambda: conn.stored["health"] >= 1 and conn.stored["reported"] >= 1, 10,
                   "health and reported")  # fmt: skip
        # when the same event is delivered again (at-least-once duplicate, identical bytes)
        raw = RawDevice(broker.port, "dev-a", session=0, client_id="dup")
        raw.client.connect("127.0.0.1", broker.port)
        raw.client.loop_start()
        with db.session() as s:
            first = s.scalar(select(Event).where(Event.event_id == "dev-a.cam1.r1.000001"))
            assert first is not None
            payload = json.dumps(first.payload).encode()
        raw.publish(Topics("edge", "dev-a").events, payload)
        wait_until(lambda: conn.duplicates >= 1, 5, "the duplicate seen")
        raw.client.disconnect()
        raw.client.loop_stop()
    finally:
        pub.stop(2.0)
    # then each event is stored once, the snapshot is on disk and linked, health is kept
    with db.session() as s:
        events = s.scalars(select(Event).order_by(Event.event_id)).all()
        assert [e.event_id for e in events] == ["dev-a.cam1.r1.000001", "dev-a.cam1.r1.000002"]
        assert events[0].snapshot_path is not None and events[1].snapshot_path is None
        stored = (cfg.snapshots_dir / events[0].snapshot_path).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(jpeg).hexdigest()
        dev = s.get(Device, "dev-a")
        assert dev is not None and dev.last_health is not None
        assert dev.last_health["publisher"]["connected"] is True
        rep = s.get(Reported, "dev-a")
        assert rep is not None and rep.update_state == "probation"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("edge/dev-x/health", b"\xff\xfe", "not_utf8"),
        ("edge/dev-x/events", b"{not json", "not_json"),
        ("edge/dev-x/events", b"[1, 2]", "not_object"),
        ("edge/dev-x/status", b'{"schema": 1, "state": "online"}', "schema"),
        ("edge/dev-x/events/e1/snapshot", b"GIF89a....", "not_jpeg"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(
    broker: Mosquitto, setup: tuple[FleetConfig, Database, FleetMqtt],
    topic: str, payload: bytes, reason: str,
) -> None:  # fmt: skip
    _, db, conn = setup
    raw = RawDevice(broker.port, "dev-x", session=0, client_id="bad")
    raw.client.connect("127.0.0.1", broker.port)
    raw.client.loop_start()
    try:
        raw.publish(topic, payload)
        wait_until(lambda: conn.rejected[reason] >= 1, 5, f"rejection {reason}")
    finally:
        raw.client.disconnect()
        raw.client.loop_stop()
    assert _device(db, "dev-x") is None


def test_payload_for_another_device_than_its_topic_is_rejected(
    broker: Mosquitto, setup: tuple[FleetConfig, Database, FleetMqtt]
) -> None:
    _, db, conn = setup
    # given a status claiming to be dev-b, published on dev-c's topic
    dev_b = RawDevice(broker.port, "dev-b", session=1, client_id="spoof")
    body = dev_b._status(DeviceState.ONLINE)
    dev_b.client.connect("127.0.0.1", broker.port)
    dev_b.client.loop_start()
    try:
        dev_b.publish(Topics("edge", "dev-c").status, body)
        wait_until(lambda: conn.rejected["device_mismatch"] >= 1, 5, "device_mismatch")
    finally:
        dev_b.client.disconnect()
        dev_b.client.loop_stop()
    assert _device(db, "dev-b") is None and _device(db, "dev-c") is None

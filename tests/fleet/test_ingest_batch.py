"""Batched ingest against a real Mosquitto: one transaction per batch, same semantics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from agent.protocol import DesiredState, DeviceState, ReportedState, StatusPayload, Topics
from fleet.config import FleetConfig
from fleet.db import Database
from fleet.ingest import FleetMqtt
from fleet.models import Device, Reported
from fleet.mqtt_client import FleetMqttError
from tests.fleet.helpers import RawDevice, running_ingest
from tests.mosquitto import Mosquitto, wait_until

WINDOW_S = 0.5  # wide enough that a quick burst lands in one batch


@pytest.fixture
def setup(broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[FleetConfig, Database, FleetMqtt]]:
    with running_ingest(tmp_path, broker.port, batch_window_s=WINDOW_S) as running:
        yield running


def _status(device_id: str, session: int, state: DeviceState) -> bytes:
    return StatusPayload(
        state=state, device_id=device_id, session=session, timestamp=1.0,
        versions={"agent": "0.1.0"}, protocol="5", reason=None if session else "will",
    ).to_json()  # fmt: skip


def _reported(device_id: str, state: str) -> bytes:
    body = {"device_id": device_id, "timestamp": 1.0, "update": {"state": state, "sequence": 7}}
    return ReportedState.model_validate(body).to_json()


def test_a_burst_is_stored_in_few_transactions_with_per_message_rules(
    broker: Mosquitto, setup: tuple[FleetConfig, Database, FleetMqtt]
) -> None:
    _, db, conn = setup
    seen: list[dict[str, str | None]] = []
    got = threading.Event()

    def listener(rep: dict[str, str | None]) -> None:
        seen.append(dict(rep))
        got.set()

    conn.add_reported_listener(listener)
    raw = RawDevice(broker.port, "dev-b", session=0, client_id="burst")
    raw.client.connect("127.0.0.1", broker.port)
    raw.client.loop_start()
    try:
        # given a burst: 100 devices' births, a newer then an older (stale) status of one,
        # a payload whose device_id differs from its topic, and reported states
        infos = [
            raw.client.publish(Topics("edge", f"d{i:03d}").status,
                               _status(f"d{i:03d}", 1, DeviceState.ONLINE), 1)
            for i in range(100)
        ]  # fmt: skip
        t = Topics("edge", "dev-b")
        for topic, payload in [
            (t.status, _status("dev-b", 5, DeviceState.ONLINE)),
            (t.status, _status("dev-b", 4, DeviceState.OFFLINE)),
            (t.reported, _reported("someone-else", "committed")),
            (t.reported, _reported("dev-b", "downloading")),
            (t.reported, _reported("dev-b", "committed")),
        ]:
            infos.append(raw.client.publish(topic, payload, 1))
        for info in infos:
            info.wait_for_publish(5)
        # when the ingest has drained it
        wait_until(lambda: conn.stored["reported"] >= 2 and conn.idle(), 10, "burst stored")
    finally:
        raw.client.disconnect()
        raw.client.loop_stop()
    # then everything valid is stored, in far fewer transactions than messages
    assert conn.stored["status"] == 102
    assert conn.batches <= 10
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Device)) == 101
        dev = s.get(Device, "dev-b")
        assert dev is not None and (dev.online, dev.session) == (True, 5)  # stale Will ignored
        rep = s.get(Reported, "dev-b")
        assert rep is not None and rep.update_state == "committed"  # the later one wins
    assert conn.rejected["device_mismatch"] == 1
    # and the listener heard the batch's last update state of each reporting device
    assert got.wait(5)
    assert {k: v for batch in seen for k, v in batch.items()} == {"dev-b": "committed"}


def test_many_desired_states_are_published_and_acknowledged_together(
    broker: Mosquitto, setup: tuple[FleetConfig, Database, FleetMqtt]
) -> None:
    _, _, conn = setup
    # given 300 devices' desired states
    desired = DesiredState.model_validate({"schema": 1})
    items = [(f"d{i:03d}", desired) for i in range(300)]
    # when they are published at once
    acked = conn.publish_desired_many(items, timeout=10)
    # then every one is acknowledged by the broker
    assert sorted(acked) == [d for d, _ in items]


def test_publishing_many_without_a_connection_fails(
    setup: tuple[FleetConfig, Database, FleetMqtt],
) -> None:
    _, _, conn = setup
    conn.stop()
    with pytest.raises(FleetMqttError):
        conn.publish_desired_many([("d000", None)])

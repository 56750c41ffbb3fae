"""Fleet test helpers: a controller config in tmp_path, a real uvicorn server in a thread,
and raw device clients that can leave with their Last Will."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.protocol import DeviceState, StatusPayload, Topics
from fleet.app import create_app
from fleet.config import FleetConfig
from fleet.db import Database, open_database
from fleet.ingest import FleetMqtt
from fleet.signing import generate_keypair
from tests.mosquitto import free_port, wait_until


def fleet_config(tmp_path: Path, broker_port: int | None, http_port: int = 0) -> FleetConfig:
    """A controller config under tmp_path with a fresh signing key."""
    key = tmp_path / "keys" / "fleet.key"
    if not key.exists():
        generate_keypair(key, key.with_suffix(".pub"))
    data: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'fleet.sqlite3'}",
        "data_dir": str(tmp_path / "data"),
        "mqtt": None if broker_port is None else {
            "host": "127.0.0.1", "port": broker_port, "keepalive_s": 5,
        },
        "http": {"host": "127.0.0.1", "port": http_port,
                 "public_url": f"http://127.0.0.1:{http_port}"},
        "signing": {"private_key": str(key)},
    }  # fmt: skip
    return FleetConfig.model_validate(data)


@contextlib.contextmanager
def running_ingest(
    tmp_path: Path, broker_port: int, **ingest: Any
) -> Iterator[tuple[FleetConfig, Database, FleetMqtt]]:
    """The controller's MQTT ingest on its own database, connected to the broker."""
    cfg = fleet_config(tmp_path, broker_port)
    assert cfg.mqtt is not None
    db = open_database(cfg.database_url)
    conn = FleetMqtt(cfg.mqtt, db, cfg.snapshots_dir, **ingest)
    conn.start()
    try:
        yield cfg, db, conn
    finally:
        conn.stop()
        db.dispose()


class FleetServer:
    """The real controller app under uvicorn on a free port, in a thread."""

    def __init__(self, cfg: FleetConfig, db: Database) -> None:
        self.cfg, self.db = cfg, db
        self.app = create_app(cfg, db)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=cfg.http.port, log_config=None, lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = f"http://127.0.0.1:{cfg.http.port}"

    def start(self) -> FleetServer:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), 15, "uvicorn")
        if not self.server.started:
            raise AssertionError("uvicorn did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def http_port() -> int:
    return free_port()


class RawDevice:
    """A device connection with a retained Will; `die()` makes the broker publish it."""

    def __init__(self, port: int, device_id: str, session: int, client_id: str) -> None:
        self.topics = Topics("edge", device_id)
        self.device_id, self.session = device_id, session
        self.connected = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        self.client.will_set(self.topics.status, self._status(DeviceState.OFFLINE, "will"), 1, True)
        self.client.on_connect = lambda *_a: self.connected.set()
        self.port = port

    def _status(self, state: DeviceState, reason: str | None = None) -> bytes:
        return StatusPayload(
            state=state, device_id=self.device_id, session=self.session, timestamp=time.time(),
            versions={"agent": "0.1.0", "model": f"m{self.session}"}, protocol="5", reason=reason,
        ).to_json()  # fmt: skip

    def connect_and_birth(self) -> RawDevice:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(5):
            raise AssertionError("raw device did not connect")
        info = self.client.publish(self.topics.status, self._status(DeviceState.ONLINE), 1, True)
        info.wait_for_publish(5)
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(5)

    def die(self) -> None:
        """DISCONNECT with reason 0x04: the broker publishes the Will (MQTT 5)."""
        rc = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
        self.client.disconnect(reasoncode=rc)
        self.client.loop_stop()

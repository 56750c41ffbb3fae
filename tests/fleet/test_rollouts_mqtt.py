"""A two-wave rollout end to end: real Mosquitto, the real controller (HTTP, FleetMqtt
ingest, the engine's background task) and small paho devices speaking agent.protocol."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from agent.protocol import (
    DesiredState,
    HealthPayload,
    ReportedState,
    StatusPayload,
    Topics,
    parse_payload,
)
from fleet.artifacts import PublishedArtifact, publish_artifact
from fleet.auth import create_token
from fleet.db import open_database
from fleet.models import Device
from fleet.rollout_models import RolloutHistory
from fleet.signing import load_private_key
from tests.fleet.helpers import FleetServer, fleet_config, http_port
from tests.fleet.rollout_world import PUBLISHER
from tests.mosquitto import Mosquitto, wait_until

REPO = Path(__file__).resolve().parents[2]
OTA = ("downloading", "verifying", "staging", "validating", "activating", "probation",
       "committed")  # fmt: skip


class SimDevice:
    """Births, reports health counters, and on a new `desired` walks the OTA states to
    `committed` (as the agent would after its own probation), restarting its counters."""

    def __init__(self, port: int, device_id: str) -> None:
        self.topics = Topics("edge", device_id)
        self.port, self.device_id = port, device_id
        self.desired: list[DesiredState] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=device_id, protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(self.topics.desired, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        desired = parse_payload(DesiredState, bytes(msg.payload), 65536)
        self.desired.append(desired)
        assert desired.config is not None
        for state in OTA:
            self.report(state, desired.config.sequence)
        self.health(frames=500, detections=1000)  # the agent restarted on the new config

    def start(self, frames: float, detections: float) -> SimDevice:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(5):
            raise AssertionError(f"{self.device_id} did not subscribe")
        birth = StatusPayload.model_validate({"state": "online", "device_id": self.device_id,
                                             "session": 1, "timestamp": time.time(),
                                             "versions": {"agent": "0.1.0"}})  # fmt: skip
        self.client.publish(self.topics.status, birth.to_json(), 1, True).wait_for_publish(5)
        self.health(frames, detections)
        return self

    def report(self, state: str, sequence: int) -> None:
        rep = ReportedState.model_validate(
            {
                "device_id": self.device_id,
                "timestamp": time.time(),
                "update": {"state": state, "sequence": sequence},
            }
        )
        self.client.publish(self.topics.reported, rep.to_json(), 1, True)

    def health(self, frames: float, detections: float) -> None:
        cam = {"state": "streaming", "frames_processed": frames, "detections": detections,
               "confidence_sum": 0.7 * detections}  # fmt: skip
        health = HealthPayload.model_validate({
            "device_id": self.device_id, "seq": 1, "session": 1, "started_at": 0.0,
            "timestamp": time.time(), "uptime_s": 1.0, "publisher": PUBLISHER,
            "cameras": {"cam1": cam}})  # fmt: skip
        self.client.publish(self.topics.health, health.to_json(), 1)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish_v2(srv: FleetServer, tmp_path: Path) -> PublishedArtifact:
    assert srv.cfg.signing is not None
    path = tmp_path / "demo-2.yaml"
    path.write_text((REPO / "configs" / "demo.yaml").read_text() + "\n# 2\n")
    return publish_artifact(
        srv.db, srv.cfg.blobs_dir, load_private_key(srv.cfg.signing.private_key), kind="config",
        path=path, public_url=srv.cfg.http.public_url, ttl_s=3600, name="demo", version="2",
    )  # fmt: skip


def _stored_frames(srv: FleetServer, dev: str) -> float:
    with srv.db.session() as s:
        row = s.get(Device, dev)
        health = row.last_health if row is not None else None
        return float(health["cameras"]["cam1"]["frames_processed"]) if health else -1.0


def test_a_two_wave_rollout_reaches_every_device_over_mqtt(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cfg = fleet_config(tmp_path, broker.port, http_port())
    db = open_database(cfg.database_url)
    srv = FleetServer(cfg, db)
    srv.app.state.rollout_tick_s = 0.1
    srv.start()
    ids = ["cam-a", "cam-b", "cam-c"]
    devices = [SimDevice(broker.port, d).start(frames=1000, detections=2000) for d in ids]
    auth = {"Authorization": f"Bearer {create_token(db, 'ops')}"}
    client = httpx.Client(base_url=srv.url, headers=auth)
    try:
        v2 = _publish_v2(srv, tmp_path)
        wait_until(lambda: all(_stored_frames(srv, d) == 1000 for d in ids), 5, "births+health")
        # given a rollout of config demo@2 in two waves, a short probation and the quality gate
        spec = {"name": "demo-2", "target": {"device_ids": ids},
                "config": {"name": "demo", "version": "2"}, "waves": ["1", "100%"],
                "probation_s": 1.5, "quality_gate": {"min_frames": 200}}  # fmt: skip
        r = client.post("/api/rollouts", json=spec)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        # when the controller publishes the canary's desired state
        wait_until(lambda: sum(bool(d.desired) for d in devices) == 1, 5, "canary desired")
        canary = next(d for d in devices if d.desired)
        control = [d for d in devices if d is not canary]
        for dev in control:  # the old version keeps detecting 2 objects per frame
            dev.health(frames=2000, detections=4000)
        # then after its commit and probation the second wave reaches the others
        wait_until(lambda: all(d.desired for d in devices), 10, "second wave desired")
        wait_until(lambda: client.get(f"/api/rollouts/{rid}").json()["state"] == "completed",
                   10, "rollout completed")  # fmt: skip
    finally:
        client.close()
        for dev in devices:
            dev.stop()
        srv.stop()
        db.dispose()
    # every device got exactly one desired state, carrying demo@2's signed manifest ref
    for dev in devices:
        assert [d.config.sequence for d in dev.desired if d.config] == [v2.sequence]
        assert dev.desired[0].config is not None
        assert dev.desired[0].config.manifest_url == v2.manifest_url
    history = _history(cfg.database_url, rid)
    kinds = [h[0] for h in history]
    assert kinds.index("wave_started") < kinds.index("wave_succeeded") < kinds.index("completed")
    gates = [h[1] for h in history if h[0] == "gate"]
    assert gates[0]["verdict"] == "pass" and gates[-1]["verdict"] == "inconclusive"


def _history(url: str, rid: int) -> list[tuple[str, dict[str, Any]]]:
    db = open_database(url)
    with db.session() as s:
        rows = s.scalars(select(RolloutHistory).where(RolloutHistory.rollout_id == rid)
                         .order_by(RolloutHistory.id))  # fmt: skip
        out = [(h.kind, h.detail) for h in rows]
    db.dispose()
    return out

"""A fleet in a SQLite file for rollout tests: devices written through fleet.store with
agent.protocol payloads (as the MQTT ingest would), published config artifacts, a
recording DesiredSink and a clock the test moves by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from agent.protocol import DesiredState, HealthPayload, ReportedState, StatusPayload
from fleet import store
from fleet.artifacts import PublishedArtifact, publish_artifact
from fleet.db import open_database
from fleet.models import Device
from fleet.mqtt_client import FleetMqttError
from fleet.rollout_commands import create_rollout
from fleet.rollout_models import Rollout, RolloutDevice, RolloutHistory, RolloutWave
from fleet.rollout_spec import RolloutSpec
from fleet.rollouts import RolloutEngine
from fleet.signing import generate_keypair, load_private_key

REPO = Path(__file__).resolve().parents[2]
URL = "http://fleet.test"
PUBLISHER = {
    "connected": True, "state": "connected", "session": 1, "published": 0, "broker_rejected": 0,
    "connects": 1, "incoming_rejected": {},
    "outbox": {"depth": 0, "bytes": 0, "evicted": 0, "oversize_dropped": 0},
}  # fmt: skip


class RecordingSink:
    """A DesiredSink that keeps what it was asked to publish; `down` makes it fail."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any] | None]] = []
        self.down = False

    def publish_desired(self, device_id: str, desired: DesiredState | None) -> None:
        if self.down:
            raise FleetMqttError("not connected to the broker")
        dump = None if desired is None else desired.model_dump(mode="json", by_alias=True)
        self.published.append((device_id, dump))

    def to(self, device_id: str) -> list[dict[str, Any] | None]:
        return [d for dev, d in self.published if dev == device_id]


class World:
    def __init__(self, tmp_path: Path, n: int, tags: dict[str, list[str]] | None = None) -> None:
        self.db = open_database(f"sqlite:///{tmp_path / 'fleet.sqlite3'}")
        key = tmp_path / "keys" / "fleet.key"
        generate_keypair(key, key.with_suffix(".pub"))
        self.v1 = self._publish(tmp_path, key, "1")
        self.v2 = self._publish(tmp_path, key, "2")
        self.sink = RecordingSink()
        self.engine = RolloutEngine(self.db, self.sink)
        self.t = 1_000_000.0
        self.ids = [f"dev-{i:02d}" for i in range(n)]
        with self.db.session() as s:
            for i, dev in enumerate(self.ids):
                store.apply_status(s, StatusPayload.model_validate({
                    "state": "online", "device_id": dev, "session": 1, "timestamp": self.t,
                    "versions": {"agent": "0.1.0"}}), self.t)  # fmt: skip
                s.flush()
                row = s.get(Device, dev)
                assert row is not None
                row.tags = (tags or {}).get(dev, ["site-a"] if i % 2 == 0 else ["site-b"])

    def _publish(self, tmp_path: Path, key: Path, version: str) -> PublishedArtifact:
        path = tmp_path / f"demo-{version}.yaml"  # distinct bytes per version
        text = (REPO / "configs" / "demo.yaml").read_text(encoding="utf-8")
        path.write_text(f"{text}\n# version {version}\n", encoding="utf-8")
        return publish_artifact(
            self.db, tmp_path / "blobs", load_private_key(key), kind="config", path=path,
            public_url=URL, ttl_s=3600, name="demo", version=version,
        )  # fmt: skip

    # ------------------------------------------------------------------ device side
    def desired_v1(self, *devices: str) -> dict[str, Any]:
        """Give devices a previous desired state (config demo@1), as `desired set` would."""
        desired = DesiredState.model_validate(
            {
                "schema": 1,
                "config": {
                    "version": "1",
                    "manifest_url": self.v1.manifest_url,
                    "sequence": self.v1.sequence,
                },
            }
        )
        dump = desired.model_dump(mode="json", by_alias=True)
        with self.db.session() as s:
            for dev in devices:
                row = s.get(Device, dev)
                assert row is not None
                row.desired = dump
        return dump

    def report(self, dev: str, state: str, sequence: int | None = None, **extra: Any) -> None:
        """A retained `reported` with the update position for config demo@2 (or `sequence`)."""
        seq = self.v2.sequence if sequence is None else sequence
        rep = ReportedState.model_validate(
            {
                "device_id": dev,
                "timestamp": self.t,
                "update": {"state": state, "sequence": seq, **extra},
            }
        )
        with self.db.session() as s:
            store.record_reported(s, rep, self.t)

    def walk(self, dev: str, *states: str) -> None:
        for state in states:
            self.report(dev, state)

    def commit(self, *devices: str) -> None:
        for dev in devices:
            self.walk(dev, "downloading", "verifying", "staging", "validating", "activating",
                      "probation", "committed")  # fmt: skip

    def health(self, dev: str, frames: float, detections: float, conf_sum: float | None = None,
               drift: float | None = None) -> None:  # fmt: skip
        cam: dict[str, Any] = {"state": "streaming", "frames_processed": frames,
                               "detections": detections}  # fmt: skip
        if conf_sum is not None:
            cam["confidence_sum"] = conf_sum
        if drift is not None:
            cam["drift"] = {"scores": {"detection_rate": drift, "confidence": 0.0}}
        health = HealthPayload.model_validate({
            "device_id": dev, "seq": 1, "session": 1, "started_at": 0.0, "timestamp": self.t,
            "uptime_s": 1.0, "publisher": PUBLISHER, "cameras": {"cam1": cam}})  # fmt: skip
        with self.db.session() as s:
            store.record_health(s, health, self.t)

    # ------------------------------------------------------------------ controller side
    def start(self, **spec: Any) -> int:
        body: dict[str, Any] = {"name": "r", "target": {"device_ids": self.ids},
                                "config": {"name": "demo", "version": "2"}}  # fmt: skip
        body.update(spec)
        return create_rollout(self.db, RolloutSpec.model_validate(body), URL, "ops", now=self.t)

    def tick(self, dt: float = 0.0) -> int:
        self.t += dt
        return self.engine.tick(self.t)

    def rollout(self, rid: int) -> Rollout:
        with self.db.session() as s:
            r = s.get(Rollout, rid)
            assert r is not None
            return r

    def waves(self, rid: int) -> list[RolloutWave]:
        with self.db.session() as s:
            q = select(RolloutWave).where(RolloutWave.rollout_id == rid).order_by(RolloutWave.index)
            return list(s.scalars(q))

    def members(self, rid: int, wave: int | None = None) -> dict[str, RolloutDevice]:
        with self.db.session() as s:
            rows = s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == rid)
                             .order_by(RolloutDevice.rank))  # fmt: skip
            return {r.device_id: r for r in rows if wave is None or r.wave == wave}

    def states(self, rid: int, wave: int | None = None) -> dict[str, str]:
        return {d: r.state for d, r in self.members(rid, wave).items()}

    def history(self, rid: int) -> list[RolloutHistory]:
        with self.db.session() as s:
            q = select(RolloutHistory).where(RolloutHistory.rollout_id == rid)
            return list(s.scalars(q.order_by(RolloutHistory.id)))

    def device_desired(self, dev: str) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.get(Device, dev)
            assert row is not None
            return row.desired

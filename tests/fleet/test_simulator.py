"""The device simulator against a real Mosquitto and the controller's real MQTT ingest."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from agent.protocol import ArtifactRef, DesiredState, Topics
from fleet.config import FleetConfig
from fleet.db import Database
from fleet.ingest import FleetMqtt
from fleet.models import Device, Event, Reported
from fleet.simulator import SimConfig, Simulator
from tests.fleet.helpers import running_ingest
from tests.mosquitto import Collector, Mosquitto, wait_until

REPO = Path(__file__).resolve().parents[2]
OTA_PATH = ["pending", "downloading", "verifying", "staging", "validating", "activating",
            "probation", "committed"]  # fmt: skip


@pytest.fixture
def ingest(broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[FleetConfig, Database, FleetMqtt]]:
    with running_ingest(tmp_path, broker.port) as running:
        yield running


@pytest.fixture
def sims() -> Iterator[list[Simulator]]:
    started: list[Simulator] = []
    yield started
    for sim in started:
        sim.stop(timeout=2)


def _start(sims: list[Simulator], port: int, **over: object) -> Simulator:
    fields: dict[str, object] = {"port": port, "event_rate": 0.0, "health_interval_s": 0.3,
                                 "seed": 7, "ota_step_s": 0.05, "probation_s": 0.2}  # fmt: skip
    fields.update(over)
    sim = Simulator(SimConfig(**fields))  # type: ignore[arg-type]
    sims.append(sim)
    sim.start()
    return sim


def _count(db: Database, *where: object) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Device).where(*where)) or 0)  # type: ignore[arg-type]


def _update_state(db: Database, device_id: str) -> str | None:
    with db.session() as s:
        rep = s.get(Reported, device_id)
        return None if rep is None else rep.update_state


def test_twenty_simulated_devices_come_online_and_their_wills_take_them_offline(
    broker: Mosquitto, ingest: tuple[FleetConfig, Database, FleetMqtt]
) -> None:
    _cfg, db, _conn = ingest
    # given `edge-fleet simulate` running 20 devices in its own process
    cmd = [sys.executable, "-m", "fleet.cli", "simulate", "--devices", "20",
           "--broker", f"127.0.0.1:{broker.port}", "--id-prefix", "simt",
           "--health-interval", "0.5", "--event-rate", "0", "--stats-interval", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # then all 20 appear online in the registry, each with a health report
        wait_until(lambda: _count(db, Device.online.is_(True)) == 20, 20, "20 devices online")
        wait_until(lambda: _count(db, Device.health_seq.is_not(None)) == 20, 10, "health from all")
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert (ready["event"], ready["connected"]) == ("ready", 20)
        # when the simulator process is killed (no clean shutdown at all)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # then the broker publishes every device's Will and the registry shows them offline
        wait_until(lambda: _count(db, Device.online.is_(True)) == 0, 15, "all offline")
        assert _count(db, Device.offline_reason == "will") == 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_a_desired_model_is_walked_through_every_ota_state_to_committed(
    broker: Mosquitto, ingest: tuple[FleetConfig, Database, FleetMqtt], sims: list[Simulator]
) -> None:
    _cfg, db, conn = ingest
    watcher = Collector(broker.port, ["edge/+/reported"], client_id="watch-reported").start()
    try:
        # given one simulated device on model 1.0.0
        _start(sims, broker.port, devices=1, id_prefix="ota")
        wait_until(lambda: _count(db, Device.online.is_(True)) == 1, 10, "device online")
        # when the controller publishes a retained desired model 2.0.0
        ref = ArtifactRef(version="2.0.0", manifest_url="http://fleet/m.json", sequence=9)
        conn.publish_desired("ota-0000", DesiredState.model_validate({"schema": 1, "model": ref}))
        # then reported walks every state in order and ends committed on 2.0.0
        wait_until(lambda: _update_state(db, "ota-0000") == "committed", 10, "committed")
        topic = Topics("edge", "ota-0000").reported
        states = [
            (json.loads(m.payload).get("update") or {}).get("state")
            for m in watcher.wait_for(lambda ms: len(ms) >= 9, 5, "reported messages")
            if m.topic == topic
        ]
        assert [s for s in states if s is not None] == OTA_PATH
        with db.session() as s:
            rep = s.get(Reported, "ota-0000")
            dev = s.get(Device, "ota-0000")
            assert rep is not None
            assert dev is not None
            assert rep.payload["model"]["version"] == "2.0.0"
            assert rep.payload["update"]["target"] == {"model": "2.0.0", "config": "1"}
        wait_until(lambda: _versions(db, "ota-0000").get("model") == "2.0.0", 5, "new birth")
    finally:
        watcher.stop()


def _versions(db: Database, device_id: str) -> dict[str, object]:
    with db.session() as s:
        dev = s.get(Device, device_id)
        return {} if dev is None else dict(dev.versions)


def test_failing_updates_report_failed_with_a_code_and_keep_the_old_version(
    broker: Mosquitto, ingest: tuple[FleetConfig, Database, FleetMqtt], sims: list[Simulator]
) -> None:
    _cfg, db, conn = ingest
    # given a device whose every update fails
    _start(sims, broker.port, devices=1, id_prefix="bad", fail_rate=1.0)
    wait_until(lambda: _count(db, Device.online.is_(True)) == 1, 10, "device online")
    # when a new model is desired
    ref = ArtifactRef(version="2.0.0", manifest_url="http://fleet/m.json", sequence=3)
    conn.publish_desired("bad-0000", DesiredState.model_validate({"schema": 1, "model": ref}))
    # then it reports failed with an error code and still runs 1.0.0
    wait_until(lambda: _update_state(db, "bad-0000") == "failed", 10, "failed")
    with db.session() as s:
        rep = s.get(Reported, "bad-0000")
        assert rep is not None
        assert rep.payload["update"]["error"].endswith(("_failed", "_mismatch", "_signature"))
        assert rep.payload["model"]["version"] == "1.0.0"


def test_events_arrive_with_their_snapshots_and_a_clean_stop_says_shutdown(
    broker: Mosquitto, ingest: tuple[FleetConfig, Database, FleetMqtt], sims: list[Simulator]
) -> None:
    cfg, db, _conn = ingest
    # given two devices raising events often
    sim = _start(sims, broker.port, devices=2, id_prefix="ev", event_rate=5.0)

    def snapshots() -> int:
        with db.session() as s:
            q = select(func.count()).select_from(Event).where(Event.snapshot_path.is_not(None))
            return int(s.scalar(q) or 0)

    # then events are stored with their JPEG snapshots linked
    wait_until(lambda: snapshots() >= 3, 10, "events with snapshots")
    with db.session() as s:
        rel = s.scalar(select(Event.snapshot_path).where(Event.snapshot_path.is_not(None)))
    assert rel is not None
    assert (cfg.snapshots_dir / rel).read_bytes()[:3] == b"\xff\xd8\xff"
    # when the simulator stops cleanly
    sim.stop()
    sims.remove(sim)
    # then both devices are offline with reason shutdown (not their Wills)
    wait_until(lambda: _count(db, Device.offline_reason == "shutdown") == 2, 10, "shutdown")

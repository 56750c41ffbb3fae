"""Rollouts end to end: real Mosquitto, the real controller under uvicorn (HTTP API,
MQTT ingest, the engine's background task) and `fleet.simulator`'s devices, which walk
the OTA state machine in `reported` and fail, roll back or report collapsed detection
statistics on demand. Time is driven by short probation windows and a 0.1 s engine
tick; the tests wait on what the broker and the API show, never on bare sleeps."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.artifacts import ArtifactKind, PublishedArtifact, publish_artifact
from fleet.auth import create_token
from fleet.db import open_database
from fleet.signing import load_private_key
from fleet.simulator import SimConfig, Simulator
from tests.fleet.helpers import FleetServer, fleet_config, http_port
from tests.mosquitto import Mosquitto, wait_until
from tests.ota_helpers import make_version

REPO = Path(__file__).resolve().parents[2]
TICK_S = 0.1
SIM = {"event_rate": 0.0, "health_interval_s": 0.3, "seed": 11, "ota_step_s": 0.05,
       "probation_s": 0.2, "cameras": 1}  # fmt: skip


@dataclass(frozen=True)
class Seen:
    at: float
    device: str
    kind: str  # "desired" or "reported"
    payload: dict[str, Any] | None  # None: an empty (cleared) retained message


class Watch:
    """Subscribes to every device's `desired` and `reported` and timestamps each message."""

    def __init__(self, port: int) -> None:
        self.seen: list[Seen] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id="e2e-watch", protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.on_connect = lambda c, *_a: c.subscribe(
            [("edge/+/desired", 1), ("edge/+/reported", 1)]
        )
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.port = port

    def start(self) -> Watch:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("watch did not subscribe")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        _prefix, device, kind = msg.topic.split("/", 2)
        payload = json.loads(msg.payload) if msg.payload else None
        with self._cond:
            self.seen.append(Seen(time.time(), device, kind, payload))
            self._cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(pred, timeout):
                raise AssertionError(f"timed out waiting for {what}")

    def desired(self, device: str) -> list[dict[str, Any] | None]:
        with self._cond:
            return [s.payload for s in self.seen if s.device == device and s.kind == "desired"]

    def versions(self, device: str, kind: str = "config") -> list[str | None]:
        """The `kind` version of each desired the device received (None: cleared)."""
        return [(d.get(kind) or {}).get("version") if d else None for d in self.desired(device)]

    def first(self, device: str, pred: Callable[[Seen], bool]) -> float | None:
        with self._cond:
            return next((s.at for s in self.seen if s.device == device and pred(s)), None)


class CountingClock:
    """The engine's clock: each call is one tick (`RolloutEngine.tick` reads it once)."""

    def __init__(self) -> None:
        self._calls: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        now = time.time()
        with self._lock:
            self._calls.append(now)
        return now

    def ticks_after(self, t: float) -> int:
        with self._lock:
            return sum(c > t for c in self._calls)


@dataclass
class Env:
    srv: FleetServer
    api: httpx.Client
    watch: Watch
    clock: CountingClock
    port: int
    tmp: Path
    sims: list[Simulator]

    def publish_config(self, version: str) -> PublishedArtifact:
        path = self.tmp / f"demo-{version}.yaml"
        path.write_text((REPO / "configs" / "demo.yaml").read_text() + f"\n# {version}\n")
        return self.publish("config", path, "demo", version)

    def publish(
        self, kind: ArtifactKind, path: Path, name: str | None, version: str | None
    ) -> PublishedArtifact:
        assert self.srv.cfg.signing is not None
        return publish_artifact(
            self.srv.db, self.srv.cfg.blobs_dir, load_private_key(self.srv.cfg.signing.private_key),
            kind=kind, path=path, public_url=self.srv.cfg.http.public_url, ttl_s=3600,
            name=name, version=version,
        )  # fmt: skip

    def simulate(self, n: int, **over: Any) -> list[str]:
        """n simulated devices, online and with a health report in the registry."""
        sim = Simulator(SimConfig(devices=n, port=self.port, id_prefix="e2e", **{**SIM, **over}))
        self.sims.append(sim)
        sim.start()
        ids = [d.id for d in sim.devices]

        def registered() -> bool:
            rows = {d["id"]: d for d in self.api.get("/api/devices").json()}
            return all(i in rows and rows[i]["online"] and rows[i]["health_seq"] is not None
                       for i in ids)  # fmt: skip

        wait_until(registered, 10, f"{n} simulated devices online with health")
        return ids

    def desire_v1(self, ids: list[str]) -> None:
        """Give every device a desired config demo@1 (what it already runs)."""
        for dev in ids:
            r = self.api.put(f"/api/devices/{dev}/desired",
                             json={"config": {"name": "demo", "version": "1"}})  # fmt: skip
            assert r.status_code == 200, r.text
        self.watch.wait(lambda: all(self.watch.versions(d) == ["1"] for d in ids), 5, "v1")

    def start(self, ids: list[str], **spec: Any) -> int:
        body = {"name": "e2e", "target": {"device_ids": ids},
                "config": {"name": "demo", "version": "2"}, **spec}  # fmt: skip
        r = self.api.post("/api/rollouts", json=body)
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def rollout(self, rid: int) -> dict[str, Any]:
        body: dict[str, Any] = self.api.get(f"/api/rollouts/{rid}").json()
        return body

    def wait_state(self, rid: int, state: str, timeout: float) -> dict[str, Any]:
        wait_until(lambda: self.rollout(rid)["state"] == state, timeout, f"rollout {state}")
        return self.rollout(rid)

    def members(self, rid: int) -> dict[str, dict[str, Any]]:
        return {d["device_id"]: d for d in self.api.get(f"/api/rollouts/{rid}/devices").json()}

    def waves(self, rid: int) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for dev, row in self.members(rid).items():
            out.setdefault(row["wave"], []).append(dev)
        return out

    def history(self, rid: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.api.get(f"/api/rollouts/{rid}/history").json()
        return rows


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    broker = Mosquitto(tmp_path / "broker").start()
    cfg = fleet_config(tmp_path, broker.port, http_port())
    db = open_database(cfg.database_url)
    srv = FleetServer(cfg, db)
    clock = CountingClock()
    srv.app.state.rollout_tick_s = TICK_S
    srv.app.state.rollout_clock = clock
    srv.start()
    watch = Watch(broker.port).start()
    api = httpx.Client(
        base_url=srv.url, headers={"Authorization": f"Bearer {create_token(db, 'ops')}"}
    )
    e = Env(srv, api, watch, clock, broker.port, tmp_path, [])
    try:
        yield e
    finally:
        api.close()
        for sim in e.sims:
            sim.stop(timeout=2)
        watch.stop()
        srv.stop()
        db.dispose()
        broker.stop()


def _committed(s: Seen) -> bool:
    upd = (s.payload or {}).get("update") or {}
    return s.kind == "reported" and upd.get("state") == "committed"


def _got_v2(s: Seen) -> bool:
    return s.kind == "desired" and ((s.payload or {}).get("config") or {}).get("version") == "2"


def test_a_rollout_to_simulated_devices_proceeds_wave_by_wave(env: Env) -> None:
    # given six simulated devices on config demo@1 and demo@2 published
    env.publish_config("1")
    env.publish_config("2")
    ids = env.simulate(6)
    # when a rollout in three waves (1, 50 %, 100 %) with 0.5 s probation is started over HTTP
    probation = 0.5
    rid = env.start(ids, waves=["1", "50%", "100%"], probation_s=probation)
    done = env.wait_state(rid, "completed", 20)
    # then every device committed, and the waves were 1, 2 and 3 devices
    assert (done["updated"], done["failed"]) == (6, 0)
    waves = env.waves(rid)
    assert [len(waves[w]) for w in (0, 1, 2)] == [1, 2, 3]
    # and no device of a wave received the new desired before every device of the wave
    # before it had committed and that wave's probation window had passed
    hist = env.history(rid)
    succeeded = {h["wave"]: h["at"] for h in hist if h["kind"] == "wave_succeeded"}
    for w in (1, 2):
        first_desired = min(_at(env, d, _got_v2) for d in waves[w])
        last_commit = max(_at(env, d, _committed) for d in waves[w - 1])
        assert first_desired >= succeeded[w - 1] >= last_commit
        assert first_desired - last_commit >= probation - 0.05
    # and each device got exactly one desired (demo@2), committed once
    assert all(env.watch.versions(d) == ["2"] for d in ids)
    kinds = [h["kind"] for h in hist]
    assert kinds.count("wave_started") == kinds.count("wave_succeeded") == 3
    assert kinds[-1] == "completed"


def _at(env: Env, device: str, pred: Callable[[Seen], bool]) -> float:
    at = env.watch.first(device, pred)
    assert at is not None, device
    return at


@pytest.mark.parametrize(
    ("sim", "state"),
    [({"fail_rate": 1.0}, "failed"), ({"probation_fail_rate": 1.0}, "rolled_back")],
)
def test_a_wave_failing_beyond_the_threshold_halts_and_rolls_back(
    env: Env, sim: dict[str, float], state: str
) -> None:
    # given six devices whose updates all fail (or roll back in probation), each with a
    # previous desired state demo@1
    env.publish_config("1")
    env.publish_config("2")
    ids = env.simulate(6, **sim)
    env.desire_v1(ids)
    # when a rollout of demo@2 starts with a first wave of two and a 40 % failure threshold
    rid = env.start(ids, waves=["2", "100%"], probation_s=0.5, failure_threshold=0.4)
    # then it halts on its own
    halted = env.wait_state(rid, "halted", 15)
    assert halted["reason"] == "failure_threshold"
    waves = env.waves(rid)
    first, rest = waves[0], waves[1]
    # and the failed wave's devices get their previous desired (demo@1) republished
    env.watch.wait(lambda: all(env.watch.versions(d) == ["1", "2", "1"] for d in first), 5,
                   "rollback to demo@1")  # fmt: skip
    members = env.members(rid)
    assert all(members[d]["reverted"] for d in first)
    assert any(members[d]["state"] == state for d in first)
    # the registry's desired is back to demo@1 as well (recorded once the PUBACKs are in)
    env.watch.wait(
        lambda: all(
            env.api.get(f"/api/devices/{d}").json()["desired"]["config"]["version"] == "1"
            for d in first
        ),
        5,
        "registry desired back to demo@1",
    )
    # while the next wave never received the new version
    assert all(env.watch.versions(d) == ["1"] for d in rest)
    assert all(members[d]["state"] == "waiting" for d in rest)
    kinds = [h["kind"] for h in env.history(rid)]
    assert kinds[-2:] == ["halted", "rollback"]


def test_pause_resume_and_abort_over_http_drive_the_waves(env: Env) -> None:
    # given six devices with demo@1 desired and a three-wave rollout of demo@2
    env.publish_config("1")
    env.publish_config("2")
    ids = env.simulate(6)
    env.desire_v1(ids)
    rid = env.start(ids, waves=["1", "50%", "100%"], probation_s=1.0)
    wait_until(lambda: env.rollout(rid)["waves"][0]["state"] == "probation", 10, "probation")
    waves = env.waves(rid)
    # when it is paused during the first wave's probation
    r = env.api.post(f"/api/rollouts/{rid}/pause")
    assert r.json()["state"] == "paused"
    until = env.rollout(rid)["waves"][0]["probation_until"]
    # then after the window has passed and the engine has ticked several times, the next
    # wave has not started and its devices have nothing new
    wait_until(lambda: env.clock.ticks_after(until) >= 3, 5, "ticks after probation")
    paused = env.rollout(rid)
    assert (paused["current_wave"], paused["waves"][1]["state"]) == (0, "waiting")
    assert paused["waves"][0]["state"] == "probation"
    assert all(env.watch.versions(d) == ["1"] for d in waves[1] + waves[2])
    # when resumed, the second wave starts and its devices receive demo@2
    assert env.api.post(f"/api/rollouts/{rid}/resume").json()["state"] == "running"
    env.watch.wait(lambda: all(env.watch.versions(d) == ["1", "2"] for d in waves[1]), 5,
                   "second wave desired")  # fmt: skip
    # when aborted with rollback
    r = env.api.post(f"/api/rollouts/{rid}/abort", json={"rollback": True})
    assert (r.json()["state"], r.json()["reason"]) == ("aborted", "aborted")
    # then every launched device gets demo@1 back, the last wave never got demo@2,
    # and the simulated devices end up running demo@1 again
    launched = waves[0] + waves[1]
    env.watch.wait(lambda: all(env.watch.versions(d)[-1] == "1" for d in launched) and
                   all(len(env.watch.versions(d)) == 3 for d in launched), 5,
                   "rollback of launched devices")  # fmt: skip
    assert all(env.watch.versions(d) == ["1"] for d in waves[2])
    devices = {d.id: d for d in env.sims[0].devices}
    wait_until(lambda: all(devices[d].running["config"] == "1" and devices[d].update is None
                           for d in launched), 10, "devices back on demo@1")  # fmt: skip
    story = [(h["kind"], h["actor"]) for h in env.history(rid)
             if h["kind"] in {"paused", "resumed", "aborted", "rollback"}]  # fmt: skip
    assert story == [("paused", "ops"), ("resumed", "ops"), ("aborted", "ops"),
                     ("rollback", "ops")]  # fmt: skip


def test_the_quality_gate_halts_a_rollout_whose_canaries_stop_detecting(
    env: Env, assets: Path
) -> None:
    # given a model 0.2.0 whose detection rate collapses on the devices (--bad-version)
    model = env.publish("model", make_version(env.tmp, assets, "0.2.0"), None, None)
    assert model.version == "0.2.0"
    ids = env.simulate(6, bad_versions=frozenset({"0.2.0"}))
    # when it is rolled out with two canaries and a probation far longer than the test
    rid = env.start(ids, config=None, model={"name": "yolox_nano", "version": "0.2.0"},
                    waves=["2", "100%"], probation_s=30)  # fmt: skip
    # then the gate halts it during the canaries' probation
    halted = env.wait_state(rid, "halted", 15)
    assert halted["reason"] == "quality_gate"
    wave0 = halted["waves"][0]
    assert wave0["devices"] == {"committed": 2}
    assert halted["finished_at"] < wave0["probation_until"]
    gate = wave0["gate"]
    assert gate["verdict"] == "fail"
    halt = next(h for h in env.history(rid) if h["kind"] == "halted")
    assert "detection_rate" in halt["detail"]["failed_checks"]
    # and the canaries, which had no previous desired, get theirs cleared; control is untouched
    waves = env.waves(rid)
    env.watch.wait(lambda: all(env.watch.versions(d, "model") == ["0.2.0", None]
                               for d in waves[0]), 5, "canaries cleared")  # fmt: skip
    assert all(env.watch.desired(d) == [] for d in waves[1])

"""Health history: ingest against a real Mosquitto (interval, pruning, the agent's own
publisher's counters) and `GET /api/devices/{id}/health` over real HTTP."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from agent.protocol import Topics
from agent.publish.publisher import MqttPublisher
from fleet.auth import create_token
from fleet.config import HealthHistoryConfig
from fleet.db import Database, open_database
from fleet.health_history import query_points
from fleet.ingest import FleetMqtt
from fleet.models import HealthSample
from tests.fleet.helpers import FleetServer, RawDevice, fleet_config, http_port, running_ingest
from tests.fleet.history_helpers import camera, health
from tests.mosquitto import Mosquitto, make_cfg, wait_until

T = 1_700_000_000.0


class Clock:
    """The controller's clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _raw(port: int, device_id: str) -> RawDevice:
    return RawDevice(port, device_id, session=1, client_id=f"{device_id}-raw").connect_and_birth()


def _rows(db: Database, device_id: str) -> list[HealthSample]:
    with db.session() as s:
        q = select(HealthSample).where(HealthSample.device_id == device_id)
        return list(s.scalars(q.order_by(HealthSample.time)))


class Sender:
    """Publishes a health report at a chosen controller time and waits until it is stored."""

    def __init__(self, dev: RawDevice, conn: FleetMqtt, clock: Clock) -> None:
        self.dev, self.conn, self.clock = dev, conn, clock

    def __call__(self, seq: int, at: float) -> None:
        self.clock.now = at
        want = self.conn.stored["health"] + 1
        self.dev.publish(self.dev.topics.health, health(self.dev.device_id, seq, at).to_json())
        wait_until(lambda: self.conn.stored["health"] >= want, 5, f"health {seq} stored")


def test_ingest_stores_at_most_one_row_per_device_per_interval(
    broker: Mosquitto, tmp_path: Path
) -> None:
    clock = Clock(T)
    cfg = HealthHistoryConfig(interval_s=60)
    with running_ingest(tmp_path, broker.port, clock=clock, history=cfg) as (_c, db, conn):
        dev = _raw(broker.port, "hist-a")
        send = Sender(dev, conn, clock)
        # given reports at 0, 10, 59.9 and 60 s of controller time
        for seq, at in ((1, T), (2, T + 10), (3, T + 59.9), (4, T + 60)):
            send(seq, at)
        # and a burst of three at 200 s (probably one batch)
        clock.now = T + 200
        for seq in (5, 6, 7):
            dev.publish(dev.topics.health, health("hist-a", seq, T + 200 + seq).to_json())
        wait_until(lambda: conn.stored["health"] >= 7, 5, "the burst")
        # then only the first report of each interval has a row, and the registry has the last
        assert [r.seq for r in _rows(db, "hist-a")] == [1, 4, 5]
        assert conn.stored["history"] == 3
        assert [r.received_at for r in _rows(db, "hist-a")] == [T, T + 60, T + 200]
        # and a second device is gated on its own
        other = _raw(broker.port, "hist-b")
        Sender(other, conn, clock)(1, T + 201)
        assert [r.seq for r in _rows(db, "hist-b")] == [1]
        dev.client.disconnect()
        other.client.disconnect()


def test_ingest_prunes_rows_older_than_the_retention_only_every_prune_interval(
    broker: Mosquitto, tmp_path: Path
) -> None:
    clock = Clock(T)
    cfg = HealthHistoryConfig(hours=1, interval_s=0, prune_interval_s=600)
    with running_ingest(tmp_path, broker.port, clock=clock, history=cfg) as (_c, db, conn):
        dev = _raw(broker.port, "hist-p")
        send = Sender(dev, conn, clock)
        # given rows stored at 0 and 1800 s (the first batch also ran a prune: nothing old)
        send(1, T)
        send(2, T + 1800)
        # when a batch at 3700 s prunes (1 h retention): the row from 0 s goes
        send(3, T + 3700)
        assert [r.seq for r in _rows(db, "hist-p")] == [2, 3]
        assert conn.history.pruned == 1
        # and at 5000 s another prune finds nothing old enough
        send(4, T + 5000)
        # when the 1800 s row expires at 5450 s, less than 600 s after the last prune
        send(5, T + 5450)
        # then it is still there: pruning is periodic, not per message
        assert [r.seq for r in _rows(db, "hist-p")] == [2, 3, 4, 5]
        # and the next batch after the prune interval removes it
        send(6, T + 5600)
        assert [r.seq for r in _rows(db, "hist-p")] == [3, 4, 5, 6]
        assert conn.history.pruned == 2
        dev.client.disconnect()


def test_rates_come_from_the_agent_publishers_cumulative_counters(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # given the agent's real publisher whose camera counters grow faster every report
    calls = itertools.count(1)
    totals = {"frames_processed": 0, "detections": 0, "confidence_sum": 0.0,
              "frames_decoded": 0, "drops": 0}  # fmt: skip

    def provider() -> dict[str, Any]:
        k = next(calls)
        for key, step in (("frames_processed", 100), ("detections", 100 * k),
                          ("confidence_sum", 60.0 * k), ("frames_decoded", 125),
                          ("drops", 25)):  # fmt: skip
            totals[key] += step
        cam = {"state": "streaming", "fps_processed": 10.0, **totals}
        return {"cameras": {"cam1": cam}, "inference": {"backend": "onnxruntime"}}

    cfg = HealthHistoryConfig(interval_s=0)
    with running_ingest(tmp_path, broker.port, history=cfg) as (_c, db, conn):
        pub = MqttPublisher(make_cfg(broker.port, health_interval_s=0.2), "agent-h",
                            tmp_path / "state", {"agent": "0.1.0"}, provider)  # fmt: skip
        pub.start()
        try:
            wait_until(lambda: conn.stored["history"] >= 4, 10, "four history rows")
        finally:
            pub.stop(2.0)
        # when the points are read back
        with db.session() as s:
            points = query_points(s, "agent-h")
    # then detections/frame and confidence are per interval, not since start
    rows = _rows(db, "agent-h")
    dets = [r.cameras["cam1"]["det"] for r in rows]
    frames = [r.cameras["cam1"]["fr"] for r in rows]
    steps = zip(itertools.pairwise(dets), itertools.pairwise(frames), strict=True)
    expected = [dets[0] / frames[0]] + [(d1 - d0) / (f1 - f0) for (d0, d1), (f0, f1) in steps]
    got = [v for p in points if (v := p.cameras["cam1"].detections_per_frame) is not None]
    assert len(got) == len(points)
    assert got == pytest.approx(expected)
    assert got[-1] > got[0] + 1  # the rate grew; a since-start average would lag behind
    assert all(p.cameras["cam1"].confidence_mean == pytest.approx(0.6) for p in points)
    assert all(p.cameras["cam1"].drop_pct == pytest.approx(20.0) for p in points)


# --------------------------------------------------------------------------- API
@pytest.fixture
def api(broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[FleetServer, dict[str, str]]]:
    cfg = fleet_config(tmp_path, broker.port, http_port())
    cfg = cfg.model_copy(update={"health_history": HealthHistoryConfig(interval_s=0)})
    db = open_database(cfg.database_url)
    srv = FleetServer(cfg, db).start()
    dev = _raw(broker.port, "api-h")
    _raw(broker.port, "api-quiet")
    for i in range(5):
        cams = {"cam1": camera(fps=9.0 + i / 10), "cam2": camera(p99=40.0 + i)}
        dev.publish(dev.topics.health, health("api-h", i + 1, T + 10 * i, cams).to_json())
    wait_until(lambda: len(_rows(db, "api-h")) == 5, 10, "five history rows")
    headers = {"Authorization": f"Bearer {create_token(db, 'ops')}"}
    yield srv, headers
    dev.client.disconnect()
    srv.stop()
    db.dispose()


def _get(srv: FleetServer, path: str, headers: dict[str, str], **params: Any) -> httpx.Response:
    return httpx.get(srv.url + path, headers=headers, params=params)


def test_api_returns_history_oldest_first_within_since_until_and_limit(
    api: tuple[FleetServer, dict[str, str]],
) -> None:
    srv, headers = api
    path = "/api/devices/api-h/health"
    # when the whole history is asked for
    r = _get(srv, path, headers)
    # then every row comes back oldest first with per-camera numbers
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["time"] for p in body] == [T + 10 * i for i in range(5)]
    assert [p["cameras"]["cam1"]["fps"] for p in body] == [9.0, 9.1, 9.2, 9.3, 9.4]
    assert [p["cameras"]["cam2"]["latency_p99_ms"] for p in body] == [40, 41, 42, 43, 44]
    first = body[0]
    assert (first["backend"], first["degraded"], first["hottest_c"]) == ("tensorrt", False, 51.5)
    assert first["cameras"]["cam1"]["detections_per_frame"] == 1.8
    # and since is inclusive, until exclusive, limit keeps the newest
    window = _get(srv, path, headers, since=T + 10, until=T + 40).json()
    assert [p["seq"] for p in window] == [2, 3, 4]
    assert [p["seq"] for p in _get(srv, path, headers, limit=2).json()] == [4, 5]
    # and a known device without history has an empty list
    assert _get(srv, "/api/devices/api-quiet/health", headers).json() == []


@pytest.mark.parametrize(
    ("params", "detail"),
    [({"since": T + 20, "until": T + 20}, "must be before until"),
     ({"since": "nan"}, "since must be a finite"), ({"until": "inf"}, "until must be a finite"),
     ({"since": "yesterday"}, "float"), ({"limit": 0}, "greater than or equal to 1"),
     ({"limit": 10_001}, "less than or equal to 10000")],
)  # fmt: skip
def test_api_refuses_bad_parameters_with_a_reason(
    api: tuple[FleetServer, dict[str, str]], params: dict[str, Any], detail: str
) -> None:
    srv, headers = api
    r = _get(srv, "/api/devices/api-h/health", headers, **params)
    assert r.status_code == 422
    assert detail in r.text


def test_api_history_needs_a_token_and_a_known_device(
    api: tuple[FleetServer, dict[str, str]],
) -> None:
    srv, headers = api
    for bad in ({}, {"Authorization": "Bearer eft_wrong"}):
        r = _get(srv, "/api/devices/api-h/health", bad)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
    missing = _get(srv, "/api/devices/nobody/health", headers)
    assert missing.status_code == 404
    assert "unknown device 'nobody'" in missing.text
    assert _get(srv, "/api/devices/bad%20id/health", headers).status_code == 422
    spec = httpx.get(srv.url + "/openapi.json").json()
    assert "/api/devices/{device_id}/health" in spec["paths"]


def test_a_nan_in_a_report_is_left_out_of_history_and_the_api_answers_valid_json(
    broker: Mosquitto, api: tuple[FleetServer, dict[str, str]]
) -> None:
    # given a report with a NaN fps (Python's JSON parser lets NaN through)
    srv, headers = api
    dev = _raw(broker.port, "api-nan")
    body = health("api-nan", 1, T, {"cam1": camera(fps=math.nan)}).model_dump(by_alias=True)
    payload = json.dumps(body).encode()
    assert b"NaN" in payload
    dev.publish(Topics("edge", "api-nan").health, payload)
    wait_until(lambda: len(_rows(srv.db, "api-nan")) == 1, 5, "the NaN report stored")
    # then the API answers valid JSON with that number left out
    r = _get(srv, "/api/devices/api-nan/health", headers)
    assert r.status_code == 200
    cam = r.json()[0]["cameras"]["cam1"]
    assert (cam["fps"], cam["latency_p99_ms"]) == (None, 50.0)
    dev.client.disconnect()

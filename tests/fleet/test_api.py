"""The HTTP API over real HTTP (uvicorn on a free port) with a real Mosquitto behind it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.protocol import DesiredState, Topics, parse_payload
from fleet.artifacts import PublishedArtifact, blob_path, publish_artifact
from fleet.auth import create_token
from fleet.db import open_database
from fleet.signing import load_private_key, load_public_key, verify_envelope
from tests.fleet.helpers import FleetServer, RawDevice, fleet_config, http_port
from tests.mosquitto import Collector, Mosquitto, make_cfg, publisher, synthetic_record, wait_until

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(broker: Mosquitto, tmp_path: Path) -> Iterator[FleetServer]:
    cfg = fleet_config(tmp_path, broker.port, http_port())
    db = open_database(cfg.database_url)
    srv = FleetServer(cfg, db).start()
    yield srv
    srv.stop()
    db.dispose()


@pytest.fixture
def token(server: FleetServer) -> str:
    return create_token(server.db, "ops")


def _publish_config(srv: FleetServer, version: str = "1") -> PublishedArtifact:
    assert srv.cfg.signing is not None
    return publish_artifact(
        srv.db, srv.cfg.blobs_dir, load_private_key(srv.cfg.signing.private_key),
        kind="config", path=REPO / "configs" / "demo.yaml", public_url=srv.cfg.http.public_url,
        ttl_s=3600, name="demo", version=version,
    )  # fmt: skip


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer eft_wrong"}, {"Authorization": "Basic b3BzOm9wcw=="},
     {"Authorization": "Bearer eft_"}],
)  # fmt: skip
def test_api_refuses_requests_without_a_valid_token(
    server: FleetServer, token: str, headers: dict[str, str]
) -> None:
    for path in ("/api/devices", "/api/events", "/api/artifacts"):
        r = httpx.get(server.url + path, headers=headers)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"


def test_api_answers_with_a_valid_token_and_publishes_openapi(
    server: FleetServer, token: str
) -> None:
    r = httpx.get(server.url + "/api/devices", headers={"Authorization": f"Bearer {token}"})
    assert (r.status_code, r.json()) == (200, [])
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/api/devices", "/api/events", "/api/devices/{device_id}/desired"} <= set(spec["paths"])
    health = httpx.get(server.url + "/healthz").json()
    assert health == {"status": "ok", "mqtt_connected": True}


def test_ranged_download_returns_exactly_the_requested_bytes(server: FleetServer) -> None:
    # given a published artifact
    pub = _publish_config(server)
    data = blob_path(server.cfg.blobs_dir, pub.sha256).read_bytes()
    url = f"{server.url}/artifacts/{pub.sha256}/{pub.filename}"
    # when a device resumes a download from byte 100
    r = httpx.get(url, headers={"Range": "bytes=100-"})
    # then it gets 206 with the tail, and a middle slice works too
    assert r.status_code == 206
    assert r.content == data[100:]
    assert r.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    mid = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert (mid.status_code, mid.content) == (206, data[10:20])
    assert httpx.get(url).content == data


def test_served_manifest_verifies_with_the_fleet_public_key(server: FleetServer) -> None:
    pub = _publish_config(server)
    r = httpx.get(pub.manifest_url.replace(server.cfg.http.public_url, server.url))
    assert server.cfg.signing is not None
    key = load_public_key(server.cfg.signing.private_key.with_suffix(".pub"))
    m = verify_envelope(r.content, key)
    assert (m.sha256, m.sequence) == (pub.sha256, pub.sequence)


@pytest.mark.parametrize(
    "path",
    ["/artifacts/..%2F..%2Fetc/passwd", "/artifacts/" + "a" * 64 + "/x.yaml",
     "/artifacts/ABC/manifest.json"],
)  # fmt: skip
def test_unknown_or_traversing_artifact_paths_are_404(server: FleetServer, path: str) -> None:
    _publish_config(server)
    assert httpx.get(server.url + path).status_code == 404


def test_put_desired_publishes_a_retained_desired_the_device_accepts(
    broker: Mosquitto, server: FleetServer, token: str
) -> None:
    # given a registered device and a published config
    RawDevice(broker.port, "cam-01", session=1, client_id="cam-01").connect_and_birth()
    auth = {"Authorization": f"Bearer {token}"}
    wait_until(
        lambda: httpx.get(server.url + "/api/devices/cam-01", headers=auth).status_code == 200,
        5, "device registered",
    )  # fmt: skip
    pub = _publish_config(server)
    # when the operator sets its desired config
    body = {"config": {"name": "demo", "version": "1"}}
    r = httpx.put(server.url + "/api/devices/cam-01/desired", json=body, headers=auth)
    assert r.status_code == 200, r.text
    # then a retained desired is on the device's topic, valid for the agent's model
    topic = Topics("edge", "cam-01").desired
    sub = Collector(broker.port, [topic], client_id="late-subscriber").start()
    try:
        msgs = sub.wait_for(lambda m: any(x.topic == topic for x in m), 5, "retained desired")
    finally:
        sub.stop()
    desired = parse_payload(DesiredState, msgs[0].payload, 65536)
    assert msgs[0].retain
    assert desired.config is not None and desired.config.sequence == pub.sequence
    assert desired.config.manifest_url == pub.manifest_url
    detail = httpx.get(server.url + "/api/devices/cam-01", headers=auth).json()
    assert detail["desired"]["config"]["version"] == "1"
    # and unknown artifacts or devices are 404
    bad = {"config": {"name": "demo", "version": "9"}}
    assert (
        httpx.put(server.url + "/api/devices/cam-01/desired", json=bad, headers=auth).status_code
        == 404
    )
    assert (
        httpx.put(server.url + "/api/devices/nope/desired", json=body, headers=auth).status_code
        == 404
    )


def test_events_filter_and_snapshot_download(
    broker: Mosquitto, server: FleetServer, token: str, tmp_path: Path, assets: Path
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    jpeg = (assets / "person.jpg").read_bytes()
    # given two cameras' events from the agent's publisher, one with a snapshot
    pub = publisher(make_cfg(broker.port), tmp_path / "state", "dev-a")
    pub.start()
    pub.emit(synthetic_record(1, snapshot=jpeg, camera="cam1"))
    pub.emit(synthetic_record(2, camera="cam2"))
    try:

        def count() -> int:
            return len(httpx.get(server.url + "/api/events", headers=auth).json())

        wait_until(lambda: count() == 2, 10, "two events")
    finally:
        pub.stop(2.0)
    # when filtering by camera and time
    cam1 = httpx.get(server.url + "/api/events", params={"camera": "cam1"}, headers=auth).json()
    late = httpx.get(
        server.url + "/api/events", params={"since": 1_700_000_001.5}, headers=auth
    ).json()
    # then only the matching events come back
    assert [e["camera_id"] for e in cam1] == ["cam1"]
    assert [e["event_id"] for e in late] == ["dev-a.cam2.r1.000002"]
    eid = cam1[0]["event_id"]
    wait_until(
        lambda: httpx.get(f"{server.url}/api/events/{eid}/snapshot", headers=auth).status_code
        == 200, 5, "snapshot linked",
    )  # fmt: skip
    snap = httpx.get(f"{server.url}/api/events/{eid}/snapshot", headers=auth)
    assert (snap.headers["content-type"], snap.content) == ("image/jpeg", jpeg)
    assert json.loads(json.dumps(cam1[0]["payload"]))["snapshot"]["size"] == len(jpeg)

"""Rollouts over real HTTP (uvicorn, the engine's background task) and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.protocol import StatusPayload
from fleet import store
from fleet.artifacts import publish_artifact
from fleet.auth import create_token
from fleet.cli import main
from fleet.config import load_fleet_config
from fleet.db import Database, open_database
from fleet.signing import load_private_key
from tests.fleet.helpers import FleetServer, fleet_config, http_port
from tests.mosquitto import wait_until

REPO = Path(__file__).resolve().parents[2]


def _add_devices(db: Database, *ids: str) -> None:
    with db.session() as s:
        for dev in ids:
            store.apply_status(s, StatusPayload.model_validate({
                "state": "online", "device_id": dev, "session": 1, "timestamp": 1.0,
                "versions": {}}), 1.0)  # fmt: skip


def _config_file(tmp_path: Path, version: str) -> Path:
    path = tmp_path / f"demo-{version}.yaml"
    path.write_text((REPO / "configs" / "demo.yaml").read_text() + f"\n# {version}\n")
    return path


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FleetServer]:
    cfg = fleet_config(tmp_path, None, http_port())
    db = open_database(cfg.database_url)
    assert cfg.signing is not None
    publish_artifact(
        db, cfg.blobs_dir, load_private_key(cfg.signing.private_key), kind="config",
        path=_config_file(tmp_path, "2"), public_url=cfg.http.public_url, ttl_s=3600,
        name="demo", version="2",
    )  # fmt: skip
    _add_devices(db, "cam-a", "cam-b", "cam-c")
    srv = FleetServer(cfg, db)
    srv.app.state.rollout_tick_s = 0.05
    srv.start()
    yield srv
    srv.stop()
    db.dispose()


SPEC: dict[str, Any] = {
    "name": "demo-2", "target": {"device_ids": ["cam-a", "cam-b", "cam-c"]},
    "config": {"name": "demo", "version": "2"}, "waves": ["1", "100%"],
    "quality_gate": {"enabled": False},
}  # fmt: skip


def test_rollout_api_needs_a_token(server: FleetServer) -> None:
    for method, path in (("GET", "/api/rollouts"), ("POST", "/api/rollouts/1/pause")):
        r = httpx.request(method, server.url + path)
        assert r.status_code == 401, path
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/api/rollouts", "/api/rollouts/{rollout_id}/history"} <= set(spec["paths"])


@pytest.fixture
def client(server: FleetServer) -> Iterator[httpx.Client]:
    token = create_token(server.db, "ops")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def test_start_pause_resume_abort_and_history_over_http(client: httpx.Client) -> None:
    # given a rollout started over HTTP
    r = client.post("/api/rollouts", json=SPEC)
    assert r.status_code == 201, r.text
    body = r.json()
    rid = body["id"]
    assert (body["state"], [w["size"] for w in body["waves"]]) == ("running", [1, 2])
    # then the engine's background task launches the first wave on its own
    wait_until(lambda: client.get(f"/api/rollouts/{rid}").json()["current_wave"] == 0, 5,
               "first wave launched")  # fmt: skip
    devices = client.get(f"/api/rollouts/{rid}/devices").json()
    assert sorted(d["state"] for d in devices) == ["pending", "waiting", "waiting"]
    # and overlapping, unknown or invalid requests are refused
    assert client.post("/api/rollouts", json=SPEC).status_code == 409
    assert client.get("/api/rollouts/999").status_code == 404
    assert client.post("/api/rollouts", json={**SPEC, "target": {}}).status_code == 422
    # when paused, resumed and aborted with rollback
    assert client.post(f"/api/rollouts/{rid}/pause").json()["state"] == "paused"
    assert client.post(f"/api/rollouts/{rid}/pause").status_code == 409
    assert client.post(f"/api/rollouts/{rid}/resume").json()["state"] == "running"
    r = client.post(f"/api/rollouts/{rid}/abort", json={"rollback": True})
    assert (r.json()["state"], r.json()["reason"]) == ("aborted", "aborted")
    # then the whole story is in the history, with who did what
    history = client.get(f"/api/rollouts/{rid}/history").json()
    story = [(h["kind"], h["actor"]) for h in history]
    assert story == [("created", "ops"), ("wave_started", "engine"), ("paused", "ops"),
                     ("resumed", "ops"), ("aborted", "ops"), ("rollback", "ops")]  # fmt: skip
    later = client.get(f"/api/rollouts/{rid}/history", params={"after": history[2]["id"]}).json()
    assert [h["kind"] for h in later] == ["resumed", "aborted", "rollback"]
    assert [x["id"] for x in client.get("/api/rollouts").json()] == [rid]


@pytest.fixture
def fleet_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["keys", "generate", "--private", str(tmp_path / "keys" / "fleet.key")]) == 0
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "database_url: sqlite:///fleet.sqlite3\ndata_dir: data\nmqtt: null\n"
        "signing:\n  private_key: keys/fleet.key\n"
    )
    for version in ("1", "2"):
        assert (
            main(
                [
                    "artifact",
                    "publish",
                    "--kind",
                    "config",
                    "--name",
                    "demo",
                    "--version",
                    version,
                    "-c",
                    str(path),
                    str(_config_file(tmp_path, version)),
                ]
            )
            == 0
        )
    _add_devices(open_database(load_fleet_config(path).database_url), "cam-a", "cam-b")
    capsys.readouterr()
    return path


def test_cli_starts_shows_and_stops_a_rollout(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ["-c", str(fleet_yaml)]
    # given a rollout started from the command line
    assert (
        main(
            [
                "rollout",
                "start",
                *c,
                "--name",
                "cfg2",
                "--device",
                "cam-a",
                "--device",
                "cam-b",
                "--config-artifact",
                "demo@2",
                "--waves",
                "1,100%",
                "--no-gate",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("rollout 1 'cfg2': running")
    assert [line.split()[:4] for line in out.splitlines()[4:6]] == [
        ["0", "1", "1", "waiting"], ["1", "100%", "1", "waiting"]]  # fmt: skip
    # when listed, paused, shown with devices and aborted
    assert main(["rollout", "list", *c]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[:3] == ["1", "cfg2", "running"]
    assert main(["rollout", "pause", *c, "1"]) == 0
    assert capsys.readouterr().out.strip() == "rollout 1: paused"
    assert main(["rollout", "status", *c, "1", "--devices", "--history", "5"]) == 0
    status = capsys.readouterr().out
    assert "DEVICE" in status and "cam-a" in status and "paused" in status
    assert main(["rollout", "abort", *c, "1", "--rollback"]) == 0
    assert "aborted (rollback queued)" in capsys.readouterr().out
    # then operator mistakes exit 2 with one line
    assert main(["rollout", "resume", *c, "1"]) == 2
    assert "invalid_state" in capsys.readouterr().err
    assert main(["rollout", "status", *c, "7"]) == 2
    assert "not_found" in capsys.readouterr().err
    assert main(["rollout", "start", *c, "--tag", "x", "--config-artifact", "demo"]) == 2
    assert "NAME@VERSION" in capsys.readouterr().err
    assert main(["rollout", "start", *c, "--config-artifact", "demo@2"]) == 2
    assert "invalid rollout spec" in capsys.readouterr().err

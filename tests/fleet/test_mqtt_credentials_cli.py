"""`edge-fleet mqtt ...` in-process, and the flashing path: issue --out, export, the agent
connects with the file systemd hands it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.cli import main
from fleet.db import open_database
from fleet.models import MqttCredential
from fleet.mqtt_auth import verify_password
from tests.mosquitto import Collector, Mosquitto, make_cfg, publisher, wait_until


@pytest.fixture
def fleet_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text("database_url: sqlite:///fleet.sqlite3\nmqtt: {prefix: edge}\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored(fleet_yaml: Path, user: str) -> MqttCredential | None:
    db = open_database(f"sqlite:///{fleet_yaml.parent / 'fleet.sqlite3'}")
    with db.session() as s:
        return s.get(MqttCredential, user)


def test_issue_prints_the_password_once_and_stores_only_its_hash(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ("-c", str(fleet_yaml))
    code, out, err = run(capsys, "mqtt", "issue", "gate-07", *c)
    password = out.strip()
    assert code == 0 and len(password) == 43 and "only its hash is kept" in err
    row = stored(fleet_yaml, "gate-07")
    assert row is not None and verify_password(password, row.password_hash)
    assert password.encode() not in (fleet_yaml.parent / "fleet.sqlite3").read_bytes()
    # a second issue is refused; --rotate replaces the password
    code, _, err = run(capsys, "mqtt", "issue", "gate-07", *c)
    assert code == 2 and "already has a device credential" in err
    code, out, _ = run(capsys, "mqtt", "issue", "gate-07", "--rotate", *c)
    row = stored(fleet_yaml, "gate-07")
    assert code == 0 and row is not None and verify_password(out.strip(), row.password_hash)
    assert not verify_password(password, row.password_hash)


def test_bad_ids_and_unknown_users_exit_2_naming_the_problem(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ("-c", str(fleet_yaml))
    code, out, err = run(capsys, "mqtt", "issue", "gate/07", *c)
    assert code == 2 and out == "" and "invalid device id 'gate/07'" in err
    assert run(capsys, "mqtt", "revoke", "nobody", *c)[2] == (
        "edge-fleet: no MQTT credential for 'nobody'\n"
    )
    code, _, err = run(capsys, "mqtt", "rotate", "nobody", *c)
    assert code == 2 and "issue one first" in err
    code, _, err = run(capsys, "mqtt", "export", "--passwd", "p", "--acl", "p", *c)
    assert code == 2 and "must be different files" in err


def test_out_writes_0600_refuses_an_existing_file_and_then_stores_nothing(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    c = ("-c", str(fleet_yaml))
    out_file = tmp_path / "ids" / "gate-07" / "mqtt-password"
    out_file.parent.mkdir(parents=True)
    code, out, _ = run(capsys, "mqtt", "issue", "gate-07", "--out", str(out_file), *c)
    assert code == 0 and "written to" in out and out_file.stat().st_mode & 0o777 == 0o600
    row = stored(fleet_yaml, "gate-07")
    assert row is not None and verify_password(out_file.read_text().strip(), row.password_hash)
    # another device pointed at an existing file: refused, and no credential is created
    code, _, err = run(capsys, "mqtt", "issue", "gate-08", "--out", str(out_file), *c)
    assert code == 2 and "refusing to overwrite" in err and stored(fleet_yaml, "gate-08") is None
    # rotate --out replaces the file (still 0600) with the new password
    before = out_file.read_text()
    assert run(capsys, "mqtt", "rotate", "gate-07", "--out", str(out_file), *c)[0] == 0
    row = stored(fleet_yaml, "gate-07")
    assert out_file.read_text() != before and out_file.stat().st_mode & 0o777 == 0o600
    assert row is not None and verify_password(out_file.read_text().strip(), row.password_hash)
    assert sorted(os.listdir(out_file.parent)) == ["mqtt-password"]


def test_password_file_adopts_a_provisioned_password(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    c = ("-c", str(fleet_yaml))
    short = tmp_path / "short"
    short.write_text("abc\n")
    code, _, err = run(capsys, "mqtt", "issue", "gate-07", "--password-file", str(short), *c)
    assert code == 2 and "password must be 16-256 characters" in err
    good = tmp_path / "mqtt-password"
    good.write_text("s3cr3t-from-provision-device\n")
    assert run(capsys, "mqtt", "issue", "gate-07", "--password-file", str(good), *c)[0] == 0
    row = stored(fleet_yaml, "gate-07")
    assert row is not None and verify_password("s3cr3t-from-provision-device", row.password_hash)


def test_list_shows_roles_and_states_without_hashes(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = ("-c", str(fleet_yaml))
    run(capsys, "mqtt", "issue", "gate-07", *c)
    run(capsys, "mqtt", "issue", "ops-alerts", "--role", "alerts", *c)
    assert run(capsys, "mqtt", "revoke", "gate-07", *c)[1].startswith("revoked gate-07")
    assert "already revoked" in run(capsys, "mqtt", "revoke", "gate-07", *c)[1]
    code, out, _ = run(capsys, "mqtt", "list", *c)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["USER", "ROLE", "STATE"]
    assert lines[2].split()[:3] == ["gate-07", "device", "revoked"] and "never" in lines[2]
    assert lines[3].split()[:3] == ["ops-alerts", "alerts", "active"]
    assert "$7$" not in out


def test_issued_file_exported_files_and_the_agent_connect_end_to_end(
    fleet_yaml: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given credentials issued for the device (to the file systemd will load) and the fleet
    c = ("-c", str(fleet_yaml))
    creds = tmp_path / "credentials"
    creds.mkdir()
    assert run(capsys, "mqtt", "issue", "dev-a", "--out", str(creds / "mqtt-password"), *c)[0] == 0
    code, out, _ = run(capsys, "mqtt", "issue", "fleet", "--role", "fleet", *c)
    fleet_password = out.strip()
    # when the files are exported (0640) and a broker runs on them
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    code, out, _ = run(capsys, "mqtt", "export", "--passwd", str(passwd), "--acl", str(acl), *c)
    assert code == 0 and "2 users, 1 devices, changed" in out
    assert acl.stat().st_mode & 0o777 == 0o640
    conf = ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"]
    broker = Mosquitto(tmp_path / "broker", conf).start()
    fleet = Collector(broker.port, ["edge/#"], client_id="fleet")
    fleet.client.username_pw_set("fleet", fleet_password)
    fleet.start()
    # then the agent, reading its password as a systemd credential, comes online
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cred = {"username": "dev-a", "password_credential": "mqtt-password"}  # a name, not a secret
    cfg = make_cfg(broker.port, **cred)
    pub = publisher(cfg, tmp_path / "state", device="dev-a")
    try:
        pub.start()
        fleet.wait_for(lambda m: any(x.topic == "edge/dev-a/status" for x in m), 5, "birth")
        wait_until(lambda: bool(pub.stats()["connected"]), 5, "agent connected")
        # and export --reload-pid signals that broker (and refuses other processes)
        assert broker.proc is not None
        args = ("mqtt", "export", "--passwd", str(passwd), "--acl", str(acl), *c)
        code, out, _ = run(capsys, *args, "--reload-pid", str(broker.proc.pid))
        assert code == 0 and "unchanged" in out and "sent SIGHUP" in out
        wait_until(lambda: "Reloading config." in broker.log_text(), 5, "reload")
        code, _, err = run(capsys, *args, "--reload-pid", str(os.getpid()))
        assert code == 2 and "not mosquitto" in err
    finally:
        pub.stop(2)
        fleet.stop()
        broker.stop()

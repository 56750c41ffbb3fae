"""Per-device MQTT credentials against a real Mosquitto running on the exported files."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.protocol import Topics, ha_id
from fleet.db import Database, open_database
from fleet.models import MqttCredential
from fleet.mqtt_auth import (
    AclOptions,
    MqttAuthError,
    MqttRole,
    export_files,
    hash_password,
    issue_credential,
    parse_hash,
    revoke_credential,
    rotate_credential,
    verify_password,
)
from fleet.mqtt_files import MqttFileError, reload_mosquitto
from tests.mosquitto import Collector, Mosquitto, wait_until

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
USERS = {"dev-a": MqttRole.DEVICE, "dev-b": MqttRole.DEVICE, "cam.lobby": MqttRole.DEVICE,
         "fleet": MqttRole.FLEET, "alerts": MqttRole.ALERTS,
         "homeassistant": MqttRole.HOMEASSISTANT}  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return open_database(f"sqlite:///{tmp_path / 'db' / 'fleet.sqlite3'}")


@dataclass
class World:
    """A registry, the files exported from it and a broker that reads them."""

    db: Database
    passwd: Path
    acl: Path
    broker: Mosquitto
    passwords: dict[str, str] = field(default_factory=dict)

    def export_and_reload(self) -> None:
        export_files(self.db, self.passwd, self.acl, AclOptions())
        before = self.broker.log_text().count("Reloading config.")
        assert self.broker.proc is not None
        reload_mosquitto(self.broker.proc.pid)
        # Mosquitto logs this, then reloads before it serves anything else.
        wait_until(lambda: self.broker.log_text().count("Reloading config.") > before, 5, "reload")

    def collector(self, user: str, topics: list[str]) -> Collector:
        c = Collector(self.broker.port, topics, client_id=f"{user}-collector")
        c.client.username_pw_set(user, self.passwords[user])
        return c.start()


@pytest.fixture
def world(db: Database, tmp_path: Path) -> Iterator[World]:
    etc = tmp_path / "etc"
    etc.mkdir()
    passwd, acl = etc / "passwd", etc / "acl"
    passwords = {u: issue_credential(db, u, role).password for u, role in USERS.items()}
    export_files(db, passwd, acl, AclOptions())
    conf = ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"]
    broker = Mosquitto(tmp_path / "broker", conf).start()
    yield World(db, passwd, acl, broker, passwords)
    broker.stop()


class Session:
    """One paho client with a user name and password; records its CONNACK."""

    def __init__(self, port: int, user: str, password: str, client_id: str) -> None:
        self.connack: ReasonCode | None = None
        self.answered = threading.Event()
        self.dropped = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id, protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.dropped.set()
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.answered.wait(5), "no CONNACK"

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        if self.connack is None:
            self.connack = rc
        self.answered.set()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes = b"x") -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connects(world: World, user: str, password: str) -> bool:
    s = Session(world.broker.port, user, password, client_id=f"{user}-probe")
    s.close()
    return s.accepted


# --------------------------------------------------------------------------- hashes
def test_a_mosquitto_passwd_hash_verifies_and_ours_has_its_shape(tmp_path: Path) -> None:
    if not Path(MOSQUITTO_PASSWD).exists():
        pytest.skip("mosquitto_passwd is not installed")
    # given a password file written by mosquitto_passwd itself
    path = tmp_path / "pw"
    cmd = [MOSQUITTO_PASSWD, "-c", "-b", str(path), "alice", "correct horse"]
    subprocess.run(cmd, check=True, capture_output=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    # then our verifier accepts its password and nothing else
    assert verify_password("correct horse", theirs)
    assert not verify_password("correct horsE", theirs)
    # and our hashes have exactly its shape: $7$101$<12-byte salt>$<64-byte hash>
    ours = hash_password("correct horse")
    shape = r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}=="
    assert re.fullmatch(shape, theirs) and re.fullmatch(shape, ours)
    iterations, salt, digest = parse_hash(ours)
    assert (iterations, len(salt), len(digest)) == (101, 12, 64)
    assert verify_password("correct horse", ours) and ours != hash_password("correct horse")


@pytest.mark.parametrize(
    ("encoded", "reason"),
    [("$6$abc$def", "not a Mosquitto PBKDF2"), ("$7$0$" + "A" * 16 + "$" + "A" * 88, "iteration"),
     ("$7$101$!!!!$" + "A" * 88, "base64"), ("$7$101$AAAA$" + "A" * 88, "3-byte salt")],
)  # fmt: skip
def test_malformed_hashes_are_rejected_with_the_reason(encoded: str, reason: str) -> None:
    with pytest.raises(MqttAuthError, match=reason):
        parse_hash(encoded)


# --------------------------------------------------------------------------- registry
@pytest.mark.parametrize("bad", ["a/b", "dev+", "#", "", " dev", "-dev", "d" * 65, "dév"])
def test_bad_device_ids_are_rejected_and_nothing_is_stored(db: Database, bad: str) -> None:
    with pytest.raises(MqttAuthError, match="invalid device id"):
        issue_credential(db, bad)
    with db.session() as s:
        assert s.query(MqttCredential).count() == 0


def test_an_existing_credential_is_refused_unless_rotated(db: Database) -> None:
    first = issue_credential(db, "dev-a")
    with pytest.raises(MqttAuthError, match="already has a device credential"):
        issue_credential(db, "dev-a")
    with pytest.raises(MqttAuthError, match="is a device credential, not fleet"):
        issue_credential(db, "dev-a", MqttRole.FLEET, rotate=True)
    second = rotate_credential(db, "dev-a")
    with db.session() as s:
        row = s.get(MqttCredential, "dev-a")
        assert row is not None and row.rotated_at is not None
        assert verify_password(second.password, row.password_hash)
        assert not verify_password(first.password, row.password_hash)
        assert first.password not in row.password_hash
    assert len(first.password) == 43 and second.rotated


def test_a_failing_delivery_stores_nothing(db: Database) -> None:
    def fail(_issued: object) -> None:
        raise MqttFileError("disk full")

    with pytest.raises(MqttFileError):
        issue_credential(db, "dev-a", deliver=fail)
    with db.session() as s:
        assert s.get(MqttCredential, "dev-a") is None


# --------------------------------------------------------------------------- export
def test_export_is_deterministic_mode_0640_and_leaves_out_revoked_users(
    db: Database, tmp_path: Path
) -> None:
    for user in ("dev-b", "cam.lobby", "dev-a", "gone"):
        issue_credential(db, user)
    issue_credential(db, "fleet", MqttRole.FLEET)
    revoke_credential(db, "gone")
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    result = export_files(db, passwd, acl, AclOptions())
    assert (result.users, result.devices, result.changed) == (4, 3, True)
    users = [line.split(":")[0] for line in passwd.read_text().splitlines()[1:]]
    assert users == ["fleet", "cam.lobby", "dev-a", "dev-b"]
    text = acl.read_text()
    assert "gone" not in text and "gone" not in passwd.read_text()
    assert "user fleet\ntopic readwrite edge/#\n" in text
    assert ("user dev-a\ntopic readwrite edge/dev-a/#\n"
            "topic write homeassistant/+/dev-a/+/config\n") in text  # fmt: skip
    # a dotted id's discovery node id is what the agent's Topics builds
    node = Topics("edge", "cam.lobby").ha_discovery("homeassistant", "sensor", "x").split("/")[2]
    assert node != "cam.lobby" and f"topic write homeassistant/+/{node}/+/config" in text
    for path in (passwd, acl):
        assert path.stat().st_mode & 0o777 == 0o640
    before = (passwd.read_bytes(), acl.read_bytes())
    again = export_files(db, passwd, acl, AclOptions(), mode=0o600)
    assert not again.changed and (passwd.read_bytes(), acl.read_bytes()) == before
    assert passwd.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["acl", "db", "passwd"]


def test_a_failed_export_changes_neither_file_and_leaves_no_temp_files(
    db: Database, tmp_path: Path
) -> None:
    issue_credential(db, "dev-a")
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    export_files(db, passwd, acl, AclOptions())
    before = acl.read_bytes()
    issue_credential(db, "dev-b")
    with pytest.raises(MqttFileError, match="cannot write"):
        export_files(db, tmp_path / "missing" / "passwd", acl, AclOptions())
    (tmp_path / "dir").mkdir()
    with pytest.raises(MqttFileError, match="cannot write"):
        export_files(db, tmp_path / "dir", tmp_path / "acl2", AclOptions())
    assert acl.read_bytes() == before and not (tmp_path / "acl2").exists()
    assert sorted(os.listdir(tmp_path)) == ["acl", "db", "dir", "passwd"]
    with pytest.raises(MqttAuthError, match="discovery prefix"):
        AclOptions(discovery_prefix="home/assistant")


def test_reload_refuses_a_process_that_is_not_mosquitto() -> None:
    with pytest.raises(MqttFileError, match="not mosquitto: not signalled"):
        reload_mosquitto(os.getpid())
    with pytest.raises(MqttFileError, match="invalid pid"):
        reload_mosquitto(0)


# --------------------------------------------------------------------------- broker
def test_a_device_uses_its_own_topics_with_its_issued_password(world: World) -> None:
    # given the fleet watching everything and dev-a subscribed to its own tree
    fleet = world.collector("fleet", ["edge/#"])
    dev = world.collector("dev-a", ["edge/dev-a/#"])
    try:
        # when dev-a publishes an event and the fleet sends it a desired state
        dev.client.publish("edge/dev-a/events", b"e1", qos=1).wait_for_publish(5)
        fleet.client.publish("edge/dev-a/desired", b"d1", qos=1).wait_for_publish(5)
        # then both arrive
        fleet.wait_for(lambda m: any(x.payload == b"e1" for x in m), 5, "dev-a's event")
        dev.wait_for(lambda m: any(x.payload == b"d1" for x in m), 5, "dev-a's desired")
    finally:
        fleet.stop()
        dev.stop()


def test_a_device_cannot_read_or_write_another_devices_topics(world: World) -> None:
    fleet = world.collector("fleet", ["edge/#"])
    ha = world.collector("homeassistant", ["homeassistant/#"])
    dev_a = world.collector("dev-a", ["edge/dev-a/#", "edge/dev-b/#"])
    dev_b = Session(world.broker.port, "dev-b", world.passwords["dev-b"], "dev-b")
    lobby = Session(world.broker.port, "cam.lobby", world.passwords["cam.lobby"], "lobby")
    try:
        # when dev-a writes into dev-b's tree and dev-b's discovery, then a marker of its own
        for topic in ("edge/dev-b/desired", "homeassistant/sensor/dev-b/x/config",
                      "homeassistant/sensor/dev-a/x/config", "edge/dev-a/marker"):  # fmt: skip
            dev_a.client.publish(topic, b"from-a", qos=1).wait_for_publish(5)
        lobby.publish(Topics("edge", "cam.lobby").ha_discovery("homeassistant", "sensor", "x"))
        # then the marker and dev-a's own discovery config arrive, the trespasses do not
        fleet.wait_for(lambda m: any(x.topic == "edge/dev-a/marker" for x in m), 5, "marker")
        got = ha.wait_for(lambda m: len(m) >= 2, 5, "own discovery configs")
        assert sorted(m.topic.split("/")[2] for m in got) == sorted([ha_id("cam.lobby"), "dev-a"])
        assert fleet.on("edge/dev-b/desired") == []
        # and dev-a does not receive dev-b's status, though the fleet does
        dev_b.publish("edge/dev-b/status", b"b-online")
        fleet.wait_for(lambda m: any(x.payload == b"b-online" for x in m), 5, "dev-b status")
        fleet.client.publish("edge/dev-a/desired", b"after", qos=1).wait_for_publish(5)
        dev_a.wait_for(lambda m: any(x.payload == b"after" for x in m), 5, "desired marker")
        assert not any(m.topic.startswith("edge/dev-b/") for m in dev_a.messages)
    finally:
        for c in (fleet, ha, dev_a):
            c.stop()
        dev_b.close()
        lobby.close()


def test_wrong_passwords_and_unknown_users_are_refused(world: World) -> None:
    assert connects(world, "dev-a", world.passwords["dev-a"])
    assert not connects(world, "dev-a", world.passwords["dev-b"])
    assert not connects(world, "dev-c", world.passwords["dev-a"])
    assert not connects(world, "dev-a", "")


def test_a_revoked_device_is_refused_and_dropped_after_export_and_reload(world: World) -> None:
    # given dev-a connected, then revoked in the registry
    live = Session(world.broker.port, "dev-a", world.passwords["dev-a"], "dev-a-live")
    try:
        revoke_credential(world.db, "dev-a")
        # then nothing changes until the files are exported and the broker reloads
        assert connects(world, "dev-a", world.passwords["dev-a"])
        world.export_and_reload()
        # then its live session is dropped and a new connect is refused; others still work
        assert live.dropped.wait(5)
        assert not connects(world, "dev-a", world.passwords["dev-a"])
        assert connects(world, "dev-b", world.passwords["dev-b"])
    finally:
        live.close()


def test_rotation_refuses_the_old_password_and_accepts_the_new(world: World) -> None:
    old = world.passwords["dev-a"]
    new = rotate_credential(world.db, "dev-a").password
    world.export_and_reload()
    assert not connects(world, "dev-a", old)
    assert connects(world, "dev-a", new)
    assert base64.urlsafe_b64decode(new + "=") and new != old

"""Test helpers: a real Mosquitto on a free port, a test PKI, a collecting subscriber.

`Mosquitto` runs `mosquitto -c FILE` as a child process with its own config
(plain, or mTLS with the ACL the project ships in configs/mosquitto/acl); `kill()`
is a SIGKILL (a broker crash) and `start()` again reuses the same port.
"""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config.mqtt import MqttConfig
from agent.publish import MqttPublisher
from agent.types import Event, EventPhase, EventRecord

REPO = Path(__file__).resolve().parents[1]
SHIPPED_ACL = REPO / "configs" / "mosquitto" / "acl"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` (cheap, observable state) until true; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.02)


class Mosquitto:
    """One broker process with its own config file; restartable on the same port."""

    def __init__(self, workdir: Path, conf_lines: list[str] | None = None) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf_lines = conf_lines if conf_lines is not None else ["allow_anonymous true"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    def write_conf(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}"]
        lines += [*self.conf_lines, "log_dest stderr", "log_type all"]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def start(self, timeout: float = 5.0) -> Mosquitto:
        conf = self.write_conf()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        log.close()

        def accepting() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(accepting, timeout, f"mosquitto on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL: the broker dies without closing anything cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------- PKI
@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_csr(cwd: Path, name: str, cn: str) -> None:
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd,
    )  # fmt: skip


def _ca(cwd: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd,
    )  # fmt: skip


def _sign(cwd: Path, name: str, ca: str, ext: str) -> None:
    (cwd / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\n"
        f"authorityKeyIdentifier=keyid\n{ext}\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_pki(directory: Path, clients: list[str], rogue_clients: list[str]) -> Pki:
    """A CA, a server cert for 127.0.0.1/localhost, client certs (CN = name) from that
    CA, and `rogue_clients` signed by a second, untrusted CA (files `<name>.crt/.key`)."""
    directory.mkdir(parents=True, exist_ok=True)
    _ca(directory, "ca")
    _ca(directory, "rogue-ca")
    _key_and_csr(directory, "server", "localhost")
    _sign(
        directory,
        "server",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
    )
    for name in clients:
        _key_and_csr(directory, name, name)
        _sign(directory, name, "ca", "extendedKeyUsage=clientAuth")
    for name in rogue_clients:
        _key_and_csr(directory, name, name)
        _sign(directory, name, "rogue-ca", "extendedKeyUsage=clientAuth")
    return Pki(directory, directory / "ca.crt", directory / "server.crt", directory / "server.key")


def tls_conf_lines(pki: Pki, acl: Path = SHIPPED_ACL) -> list[str]:
    return [
        f"cafile {pki.ca}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "require_certificate true",
        "use_identity_as_username true",
        f"acl_file {acl}",
    ]


# --------------------------------------------------------------------------- clients
@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any


class Collector:
    """A paho subscriber that records every message; `wait_for` synchronises on them."""

    def __init__(
        self,
        port: int,
        topics: list[str],
        client_id: str = "collector",
        tls: ssl.SSLContext | None = None,
        protocol: int = mqtt.MQTTv5,
    ) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._topics = topics
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.2)
        self.port = port

    def start(self, timeout: float = 5.0) -> Collector:
        self.subscribed.clear()
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise AssertionError("collector did not subscribe")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            received = Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.properties)
            self.messages.append(received)
            self._cond.notify_all()

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float, what: str
    ) -> list[Received]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                got = [(m.topic, m.payload[:80]) for m in self.messages[-10:]]
                raise AssertionError(f"timed out waiting for {what}; last: {got}")
            return list(self.messages)


def client_tls(pki: Pki, name: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if name is not None:
        cert, key = pki.client(name)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


# --------------------------------------------------------------------------- events
def synthetic_record(
    i: int, device_id: str = "dev-a", snapshot: bytes | None = None, camera: str = "cam1"
) -> EventRecord:
    """A start event with a deterministic id `<device>.<camera>.r1.<i>`."""
    event = Event(
        event_id=f"{device_id}.{camera}.r1.{i:06d}",
        phase=EventPhase.START,
        device_id=device_id,
        camera_id=camera,
        rule_id="r1",
        rule_type="zone",
        label="person",
        class_id=0,
        track_id=i,
        episode=0,
        score=0.87,
        box=(10.0, 20.0, 110.0, 220.0),
        started_at=float(i),
        stream_time=float(i),
        wall_time=1_700_000_000.0 + i,
        frame_seq=i * 10,
        attributes={"dwell_s": 1.5},
    )
    return EventRecord(event=event, snapshot_jpeg=snapshot)


# --------------------------------------------------------------------------- publisher
SCHEMAS = REPO / "docs" / "schemas"
FAST = {"reconnect": {"initial_s": 0.1, "max_s": 0.3, "jitter": 0.5}, "keepalive_s": 5}
SLOW = {"reconnect": {"initial_s": 1.0, "max_s": 1.0, "jitter": 0.3}}


def validate(kind: str, payload: bytes) -> dict[str, Any]:
    """Check a payload against the committed JSON Schema (jsonschema) and return it."""
    jsonschema = pytest.importorskip("jsonschema")
    data: dict[str, Any] = json.loads(payload)
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    return data


def make_cfg(port: int, **over: Any) -> MqttConfig:
    data: dict[str, Any] = {"host": "127.0.0.1", "port": port, **FAST, **over}
    return MqttConfig.model_validate(data)


def health_provider() -> dict[str, Any]:
    return {
        "cameras": {"cam1": {"state": "streaming", "fps_in": 10.0, "fps_processed": 9.5}},
        "inference": {"backend": "onnxruntime", "degraded": False},
    }


def event_ids(messages: list[Received], topic: str = "edge/dev-a/events") -> list[str]:
    return [json.loads(m.payload)["event_id"] for m in messages if m.topic == topic]


def publisher(cfg: MqttConfig, state: Path, device: str = "dev-a") -> MqttPublisher:
    return MqttPublisher(cfg, device, state, {"agent": "0.1.0", "model": "m1"}, health_provider)

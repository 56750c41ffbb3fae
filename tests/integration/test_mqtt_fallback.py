"""MQTT 5 -> 3.1.1 fallback against a scripted loopback broker (Mosquitto always speaks 5).

The fake answers an MQTT 5 CONNECT the way a 3.1.1-only broker does (a 3.1.1 CONNACK
with return code 1, "unacceptable protocol version") and accepts a 3.1.1 CONNECT.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config.mqtt import MqttConfig
from agent.publish import MqttPublisher
from tests.mosquitto import wait_until


class OldBroker:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.levels: list[int] = []
        self.packets: list[int] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_packet(conn: socket.socket) -> tuple[int, bytes]:
        head = conn.recv(1)
        if not head:
            raise ConnectionError
        length, shift = 0, 0
        while True:
            b = conn.recv(1)[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        body = b""
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                raise ConnectionError
            body += chunk
        return head[0], body

    def _client(self, conn: socket.socket) -> None:
        try:
            _, body = self._read_packet(conn)
            level = body[6]  # after the 2-byte length and "MQTT"
            self.levels.append(level)
            if level == 5:
                conn.sendall(b"\x20\x02\x00\x01")  # 3.1.1 CONNACK: unacceptable protocol
                conn.close()
                return
            conn.sendall(b"\x20\x02\x00\x00")
            while True:
                kind, _ = self._read_packet(conn)
                self.packets.append(kind >> 4)
        except (OSError, ConnectionError, IndexError):
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


@pytest.fixture
def old_broker() -> Iterator[OldBroker]:
    b = OldBroker()
    yield b
    b.close()


def test_auto_protocol_falls_back_to_311_when_broker_refuses_5(
    old_broker: OldBroker, tmp_path: Path
) -> None:
    # given a publisher in protocol 'auto' and a broker that only speaks 3.1.1
    cfg = MqttConfig(host="127.0.0.1", port=old_broker.port, protocol="auto")
    pub = MqttPublisher(cfg, "dev-a", tmp_path / "s", {}, lambda: {})
    # when it connects
    pub.start()
    try:
        wait_until(lambda: pub.stats()["connected"], 5, "connected")
        # then it tried MQTT 5 first, then connected with 3.1.1 and went on (birth, subscribe)
        assert old_broker.levels == [5, 4]
        assert pub.stats()["protocol"] == "3.1.1"
        wait_until(lambda: {3, 8} <= set(old_broker.packets), 5, "PUBLISH and SUBSCRIBE")
    finally:
        pub.stop(0.5)


def test_explicit_protocol_5_does_not_fall_back(old_broker: OldBroker, tmp_path: Path) -> None:
    # given a publisher pinned to MQTT 5
    cfg = MqttConfig.model_validate(
        {"host": "127.0.0.1", "port": old_broker.port, "protocol": "5",
         "reconnect": {"initial_s": 0.05, "max_s": 0.1}}
    )  # fmt: skip
    pub = MqttPublisher(cfg, "dev-a", tmp_path / "s", {}, lambda: {})
    pub.start()
    # when the broker refuses it twice
    wait_until(lambda: len(old_broker.levels) >= 2, 5, "two attempts")
    pub.stop(0.5)
    # then it kept to MQTT 5 and never connected
    assert set(old_broker.levels) == {5} and pub.stats()["connects"] == 0

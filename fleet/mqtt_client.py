"""paho client construction from the fleet's MQTT config, and a one-shot publisher.

`make_client` applies credentials (password read from its file at each call) and
TLS. `OneShotSink` connects, publishes retained `desired` messages and
disconnects: the CLI's `desired set` uses it when no controller connection exists.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.protocol import DesiredState, Topics
from fleet.config import FleetMqttConfig


class FleetMqttError(Exception):
    """The controller's MQTT connection cannot do what was asked."""


def make_client(cfg: FleetMqttConfig, client_id: str, *, persistent: bool) -> mqtt.Client:
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else not persistent,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        manual_ack=persistent,
    )
    if cfg.username is not None:
        password = None
        if cfg.password_file is not None:
            password = cfg.password_file.read_text(encoding="utf-8").strip()
        client.username_pw_set(cfg.username, password)
    if cfg.ca_file is not None:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file))
        if cfg.cert_file is not None and cfg.key_file is not None:
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
        client.tls_set_context(ctx)
    client.reconnect_delay_set(1, 30)
    return client


def publish_retained(
    client: mqtt.Client, topic: str, payload: bytes, what: str, timeout: float
) -> None:
    """Publish QoS 1 retained and wait for the broker's PUBACK."""
    info = client.publish(topic, payload, qos=1, retain=True)
    try:
        info.wait_for_publish(timeout)
    except (RuntimeError, ValueError) as exc:
        raise FleetMqttError(f"{what} not published: {exc}") from exc
    if not info.is_published():
        raise FleetMqttError(f"{what} not acknowledged within {timeout}s")


def wait_published(infos: Sequence[tuple[str, mqtt.MQTTMessageInfo]], timeout: float) -> list[str]:
    """Wait, `timeout` in all, for many publishes; the keys of those acknowledged."""
    deadline = time.monotonic() + timeout
    done = []
    for key, info in infos:
        left = max(0.0, deadline - time.monotonic())
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(left)
        if info.is_published():
            done.append(key)
    return done


def desired_message(prefix: str, device_id: str, desired: DesiredState | None) -> tuple[str, bytes]:
    """Topic and payload of a device's retained desired state (empty payload clears it)."""
    return Topics(prefix, device_id).desired, desired.to_json() if desired is not None else b""


class OneShotSink:
    """A short-lived connection that publishes `desired` (context manager)."""

    def __init__(self, cfg: FleetMqttConfig, timeout: float = 10.0) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self._connected = threading.Event()
        self._client = make_client(cfg, f"{cfg.client_id}-cli", persistent=False)
        self._client.on_connect = self._on_connect

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self._connected.set()

    def __enter__(self) -> OneShotSink:
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        if not self._connected.wait(self.timeout):
            self._client.loop_stop()
            raise FleetMqttError(f"cannot connect to {self.cfg.host}:{self.cfg.port}")
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish_desired(self, device_id: str, desired: DesiredState | None) -> None:
        topic, payload = desired_message(self.cfg.prefix, device_id, desired)
        publish_retained(self._client, topic, payload, f"desired for {device_id}", self.timeout)

"""The MQTT publisher: an EventSink that queues durably and sends on its own thread.

`emit` (inference worker threads) only writes the event to the SQLite outbox and
returns. The `mqtt-publisher` thread alone owns the paho client: it connects (one
fresh client per connect session, jittered backoff between attempts, MQTT 5 with
3.1.1 fallback), publishes the retained birth, subscribes to desired/cmd, sends
outbox rows in id order with at most `max_inflight` unacknowledged, deletes each
row when paho reports its PUBACK/PUBCOMP, and publishes health on a fixed grid.
After any disconnect it resends from the oldest row still in the outbox, so
delivery is at-least-once and in order; consumers deduplicate by `event_id`.
"""

from __future__ import annotations

import enum
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.mqtt import MqttConfig
from agent.metrics import RateLimitedLog
from agent.protocol import DesiredState, DeviceState, ReportedState, Topics
from agent.publish.client import (
    ConnackOutcome,
    MqttClientError,
    backoff_delay,
    classify_connack,
    connect_properties,
    new_client,
)
from agent.publish.events import EventQueue
from agent.publish.health import HealthBuilder
from agent.publish.incoming import CommandHandler, IncomingHandler
from agent.publish.outbox import Outbox
from agent.publish.payloads import status_payload
from agent.publish.sender import OutboxSender
from agent.publish.session import SessionCounter
from agent.state import StateError
from agent.types import EventRecord

log = logging.getLogger(__name__)

_TICK_S = 0.05
_DISCONNECT_WITH_WILL = 0x04


class PublisherState(str, enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    REFUSED = "refused"
    STOPPED = "stopped"


class MqttPublisher:
    """Durable, ordered, at-least-once event publishing plus status, health, commands."""

    name = "mqtt"

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        state_dir: Path,
        versions: dict[str, str],
        health_provider: Callable[[], dict[str, Any]],
    ) -> None:
        self._cfg = cfg
        self._topics = Topics(cfg.prefix, device_id)
        self._client_id = cfg.client_id or device_id
        self._versions = dict(versions)
        self._sessions = SessionCounter(state_dir / "mqtt_session")
        self._outbox = Outbox(
            state_dir / "outbox.sqlite3",
            cfg.outbox.max_messages,
            cfg.outbox.max_bytes,
            cfg.outbox.synchronous,
        )
        self._health = HealthBuilder(device_id, cfg.health_interval_s, health_provider)
        self.on_desired: Callable[[DesiredState], None] | None = None
        self._commands: dict[str, CommandHandler] = {"ping": lambda _req: {"pong": True}}
        self._incoming = IncomingHandler(
            self._topics, cfg.max_incoming_bytes, self._call_on_desired, self._commands
        )
        self._stop = threading.Event()
        self._closed = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._ratelog = RateLimitedLog(10.0)
        self._reported_lock = threading.Lock()
        self._reported: bytes | None = None
        self._reported_dirty = False
        self._discovery: tuple[tuple[str, bytes], ...] = ()
        # Owned by the publisher thread.
        self._client: mqtt.Client | None = None
        self._protocol = "3.1.1" if cfg.protocol == "3.1.1" else "5"
        self._connack: ReasonCode | None = None
        self._connected = False
        self._failures = 0
        self._offline_mid: int | None = None
        self._offline_acked = False
        self._discovery_mids: dict[int, str] = {}
        self._sender = OutboxSender(self._outbox, cfg.outbox.max_inflight)
        self._events = EventQueue(self._outbox, self._topics, cfg.events_qos)
        self._counters = {"connects": 0, "connect_failures": 0}
        self._state = PublisherState.IDLE

    # ------------------------------------------------------------------ public API
    def register_command(self, name: str, handler: CommandHandler) -> None:
        """Answer `cmd/<name>` with `handler(request)` (runs on the publisher thread)."""
        self._topics.cmd(name)  # validates the name
        self._commands[name] = handler

    def set_discovery(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Retained (topic, payload) pairs published after the birth on every connect:
        Home Assistant discovery configs (`agent.publish.homeassistant`)."""
        self._discovery = tuple(messages)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("publisher already started")
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def emit(self, record: EventRecord) -> None:
        """Queue one event durably (fsynced per the outbox policy) and return."""
        if self._closed:
            self._events.drop_after_stop(record)
        else:
            self._events.put(record)

    def close(self) -> None:
        self.stop(self._cfg.flush_timeout_s)

    def publish_reported(self, payload: dict[str, Any]) -> None:
        """Publish `payload` retained on `reported` now (or on the next connect)."""
        data = {"device_id": self._topics.device_id, "timestamp": round(time.time(), 3)}
        data.update(payload)
        encoded = ReportedState.model_validate(data).to_json()
        with self._reported_lock:
            self._reported = encoded
            self._reported_dirty = True

    @property
    def desired(self) -> DesiredState | None:
        """The last valid desired state received (None until one arrives)."""
        return self._incoming.desired

    def stats(self) -> dict[str, Any]:
        counts = self._outbox.counts()
        out: dict[str, Any] = {
            "connected": self._connected,
            "state": self._state.value,
            "protocol": self._protocol if self._connected else None,
            "session": self._sessions.current,
            "incoming_rejected": self._incoming.rejected(),
            "health_seq": self._health.last_seq,
            "outbox": {
                "depth": counts.depth,
                "bytes": counts.bytes,
                "evicted": counts.evicted,
                "oversize_dropped": counts.oversize_dropped,
            },
        }
        out.update(self._counters)
        out["published"] = self._sender.published
        out["broker_rejected"] = self._sender.broker_rejected
        out["invalid_events"] = self._events.invalid_events
        out["emit_errors"] = self._events.emit_errors
        out["dropped_after_stop"] = self._events.dropped_after_stop
        return out

    def stop(self, timeout_s: float) -> None:
        """Flush for up to `timeout_s`, mark offline, disconnect. Nothing is sent after."""
        if self._closed:
            return
        self._deadline = time.monotonic() + timeout_s
        self._stop.set()
        alive = False
        if self._thread is not None:
            self._thread.join(timeout_s + self._cfg.connect_timeout_s + 1.0)
            alive = self._thread.is_alive()
        self._closed = True
        self._state = PublisherState.STOPPED
        if alive:
            log.warning("publisher thread did not stop in time; outbox left open")
        else:
            self._outbox.close()
        log.info("mqtt publisher stopped %s", _kv(self.stats() if not alive else {}))

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while not self._stop.is_set():
            self._step()
        try:
            self._finish()
        except Exception:
            log.exception("publisher shutdown error")
        self._state = PublisherState.STOPPED

    def _step(self) -> None:
        try:
            if self._connected:
                self._service()
            else:
                self._connect_session()
        except Exception:  # keep the thread alive whatever a callback or the disk does
            log.exception("publisher loop error; reconnecting")
            self._drop_connection()
            self._backoff("loop error", PublisherState.BACKOFF)

    def _service(self) -> None:
        client = self._client
        if client is None:
            self._connected = False
            return
        rc = client.loop(_TICK_S)
        if rc != mqtt.MQTT_ERR_SUCCESS or not self._connected:
            self._lost(f"loop rc={rc}")
            return
        self._sender.pump(client)
        self._send_health(client)
        self._send_reported(client)

    def _connect_session(self) -> None:
        self._state = PublisherState.CONNECTING
        try:
            client = self._open_session()
            outcome = self._await_connack(client)
        except (OSError, ssl.SSLError, MqttClientError, StateError) as exc:
            self._drop_connection()
            self._backoff(f"{type(exc).__name__}: {exc}", PublisherState.BACKOFF)
            return
        if outcome is ConnackOutcome.OK and self._stop.is_set():
            self._drop_connection()  # stopped meanwhile: publish nothing
        elif outcome is ConnackOutcome.OK:
            self._session_up(client)
        elif outcome is ConnackOutcome.UNSUPPORTED_PROTOCOL and self._cfg.protocol == "auto" \
                and self._protocol == "5":  # fmt: skip
            log.warning("broker refused MQTT 5; falling back to 3.1.1 host=%s", self._cfg.host)
            self._drop_connection()
            self._protocol = "3.1.1"
        else:
            self._drop_connection()
            refused = outcome is ConnackOutcome.REFUSED_AUTH
            self._backoff(
                f"connack {self._connack}",
                PublisherState.REFUSED if refused else PublisherState.BACKOFF,
            )

    def _open_session(self) -> mqtt.Client:
        self._sessions.next()
        client = new_client(self._cfg, self._client_id, self._protocol)
        will = self._status(DeviceState.OFFLINE, "will")
        client.will_set(self._topics.status, will, qos=1, retain=True)
        client.max_inflight_messages_set(self._cfg.outbox.max_inflight + 16)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._connack = None
        max_packet = self._cfg.max_incoming_bytes * 4 + 4096
        client.connect(
            self._cfg.host,
            self._cfg.port,
            self._cfg.keepalive_s,
            properties=connect_properties(self._protocol, max_packet),
        )
        return client

    def _await_connack(self, client: mqtt.Client) -> ConnackOutcome | None:
        deadline = time.monotonic() + self._cfg.connect_timeout_s
        while self._connack is None and time.monotonic() < deadline and not self._stop.is_set():
            if client.loop(_TICK_S) != mqtt.MQTT_ERR_SUCCESS:
                break
        if self._connack is None:
            raise OSError("no CONNACK (connection closed or timed out)")
        return classify_connack(self._connack)

    def _session_up(self, client: mqtt.Client) -> None:
        self._connected = True
        self._failures = 0
        self._state = PublisherState.CONNECTED
        self._counters["connects"] += 1
        self._sender.reset()
        self._publish_birth(client)
        self._publish_discovery(client)
        topics = self._topics
        client.subscribe([(topics.desired, 1), (topics.cmd_filter, 1), (topics.status, 1)])
        with self._reported_lock:
            self._reported_dirty = self._reported is not None
        log.info(
            "mqtt connected host=%s port=%d protocol=%s session=%d outbox_depth=%d",
            self._cfg.host,
            self._cfg.port,
            self._protocol,
            self._sessions.current,
            self._outbox.counts().depth,
        )

    def _publish_birth(self, client: mqtt.Client) -> None:
        birth = self._status(DeviceState.ONLINE)
        client.publish(self._topics.status, birth, qos=1, retain=True)

    def _publish_discovery(self, client: mqtt.Client) -> None:
        self._discovery_mids.clear()
        for topic, payload in self._discovery:
            self._discovery_mids[client.publish(topic, payload, qos=1, retain=True).mid] = topic

    def _status(self, state: DeviceState, reason: str | None = None) -> bytes:
        return status_payload(
            state,
            device_id=self._topics.device_id,
            session=self._sessions.current,
            versions=self._versions,
            protocol=self._protocol,
            reason=reason,
        )

    def _backoff(self, reason: str, state: PublisherState) -> None:
        self._failures += 1
        self._counters["connect_failures"] += 1
        self._state = state
        failures = 10_000 if state is PublisherState.REFUSED else self._failures
        delay = backoff_delay(failures, self._cfg.reconnect)
        level = logging.ERROR if state is PublisherState.REFUSED else logging.WARNING
        if self._ratelog.allow(f"connect:{state.value}", time.monotonic()) is not None:
            log.log(
                level,
                "mqtt connect failed host=%s port=%d reason=%s retry_in_s=%.1f",
                self._cfg.host,
                self._cfg.port,
                reason,
                delay,
            )
        self._stop.wait(delay)

    def _lost(self, reason: str) -> None:
        log.warning("mqtt connection lost reason=%s inflight=%d", reason, self._sender.inflight)
        self._drop_connection()
        self._backoff(reason, PublisherState.BACKOFF)

    def _drop_connection(self) -> None:
        self._connected = False
        client, self._client = self._client, None
        if client is not None:
            sock = client.socket()  # closed without DISCONNECT: the broker fires the Will
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    log.debug("socket close failed", exc_info=True)

    def _send_health(self, client: mqtt.Client) -> None:
        payload = self._health.due(time.monotonic(), self._sessions.current, self.stats)
        if payload is not None:
            client.publish(self._topics.health, payload, qos=self._cfg.health_qos)

    def _send_reported(self, client: mqtt.Client) -> None:
        with self._reported_lock:
            if not self._reported_dirty or self._reported is None:
                return
            payload, self._reported_dirty = self._reported, False
        client.publish(self._topics.reported, payload, qos=1, retain=True)

    def _finish(self) -> None:
        """Flush until the deadline, then an explicit retained offline, then DISCONNECT."""
        client = self._client
        if client is None or not self._connected:
            self._drop_connection()
            return
        while time.monotonic() < self._deadline and self._connected and self._sender.unsent():
            if client.loop(_TICK_S) != mqtt.MQTT_ERR_SUCCESS:
                break
            self._sender.pump(client)
        if self._connected:
            offline = self._status(DeviceState.OFFLINE, "shutdown")
            self._offline_mid = client.publish(self._topics.status, offline, 1, True).mid
            end = max(self._deadline, time.monotonic() + 0.2)
            while not self._offline_acked and self._connected and time.monotonic() < end:
                client.loop(_TICK_S)
            self._disconnect(client)
        self._drop_connection()

    def _disconnect(self, client: mqtt.Client) -> None:
        if self._offline_acked or self._protocol != "5":
            client.disconnect()  # 3.1.1 without the ack: the Will is lost; accepted
        else:  # the offline did not make it: ask the broker to publish our Will instead
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL)
            client.disconnect(reasoncode=rc)
        client.loop(_TICK_S)

    # ------------------------------------------------------------------ paho callbacks
    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode,
                    _p: Properties | None) -> None:  # fmt: skip
        self._connack = reason

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode,
                       _p: Properties | None) -> None:  # fmt: skip
        self._connected = False

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode,
                    _p: Properties | None) -> None:  # fmt: skip
        if mid == self._offline_mid:
            self._offline_acked = True
        topic = self._discovery_mids.pop(mid, None)
        if topic is not None and reason.is_failure:
            suppressed = self._ratelog.allow("discovery", time.monotonic())
            if suppressed is not None:
                log.warning(
                    "discovery config refused by broker (ACL?) topic=%s reason=%s suppressed=%d",
                    topic,
                    reason,
                    suppressed,
                )
        self._sender.acked(mid, reason)

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        payload = bytes(msg.payload)
        result = self._incoming.handle(msg.topic, payload, props, self._sessions.current)
        if self._closed:
            return
        for reply in result.replies:
            client.publish(reply.topic, reply.payload, qos=1, properties=reply.properties)
        if (
            result.rebirth
            and not self._stop.is_set()
            and self._ratelog.allow("rebirth", time.monotonic()) is not None
        ):
            self._publish_birth(client)

    def _call_on_desired(self, desired: DesiredState) -> None:
        hook = self.on_desired
        if hook is not None:
            hook(desired)


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items() if not isinstance(v, dict))

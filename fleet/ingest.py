"""MQTT ingest: devices' status, health, events, snapshots and reported state into the DB.

One paho client per controller replica, `manual_ack`: the network thread only
queues each message; the `fleet-ingest` thread validates it with agent.protocol's
models, writes it in one transaction and only then acknowledges it (QoS 1/2), so a
controller crash between receipt and commit gets the message again (at least once;
events deduplicate by `event_id` + `phase`). The session is persistent
(`clean_start=False`), so the broker queues for us while we are down.

Health, events and snapshots use a shared subscription (`$share/<group>/...`) so
replicas split the load. Status and reported are subscribed plainly: the broker
does not send retained messages to shared subscriptions (MQTT 5, 4.8.2), and every
replica must see the retained births; applying them twice is harmless.

Publishing `desired` (retained, QoS 1) goes through the same connection.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.protocol import (
    DesiredState,
    EventPayload,
    HealthPayload,
    InvalidIdError,
    PayloadRejectedError,
    ReportedState,
    StatusPayload,
    Topics,
    parse_payload,
)
from fleet import store
from fleet.config import FleetMqttConfig
from fleet.db import Database
from fleet.mqtt_client import FleetMqttError, desired_message, make_client, publish_retained

log = logging.getLogger(__name__)

KINDS = ("status", "reported", "health", "events", "events/+/snapshot")
SHARED_KINDS = frozenset({"health", "events", "events/+/snapshot"})
SESSION_EXPIRY_S = 24 * 3600
_Payload = StatusPayload | HealthPayload | EventPayload | ReportedState
_MODELS: dict[str, type[_Payload]] = {
    "status": StatusPayload,
    "health": HealthPayload,
    "events": EventPayload,
    "reported": ReportedState,
}


@dataclass(frozen=True)
class Route:
    kind: str
    device_id: str
    event_id: str | None = None


def route(prefix: str, topic: str) -> Route | None:
    """Which device message `topic` is, checked against agent.protocol's builders."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != prefix:
        return None
    try:
        topics = Topics(prefix, parts[1])
        if len(parts) == 5 and topic == topics.snapshot(parts[3]):
            return Route("snapshot", topics.device_id, parts[3])
    except InvalidIdError:
        return None
    simple = {topics.status: "status", topics.health: "health", topics.events: "events"}
    simple[topics.reported] = "reported"
    kind = simple.get(topic)
    return Route(kind, topics.device_id) if kind else None


class _RateLimitedLog:
    """The first few of each reason at WARNING, then every 100th."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, reason: str, topic: str, detail: str) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= 5 or n % 100 == 0:
            log.warning("payload rejected reason=%s topic=%s count=%d detail=%s",
                        reason, topic, n, detail)  # fmt: skip


@dataclass
class _Msg:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


class FleetMqtt:
    """The controller's broker connection: ingest worker plus `desired` publishing."""

    def __init__(
        self,
        cfg: FleetMqttConfig,
        db: Database,
        snapshots_dir: Path,
        clock: Callable[[], float] = time.time,
        queue_size: int = 10_000,
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.snapshots_dir = snapshots_dir
        self.clock = clock
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.stored: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self.dropped = 0
        self._reject_log = _RateLimitedLog()
        self._queue: queue.Queue[_Msg | None] = queue.Queue(maxsize=queue_size)
        self._generation = 0
        self._pending_subs: set[int] = set()
        self._worker = threading.Thread(target=self._work, name="fleet-ingest", daemon=True)
        self._client = self._make_client()

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe and start the worker; raise FleetMqttError on timeout."""
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        self._worker.start()
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = self.cfg.receive_maximum
        kwargs: dict[str, Any] = {"keepalive": self.cfg.keepalive_s, "properties": props}
        if self._v5:
            kwargs["clean_start"] = False
        self._client.connect_async(self.cfg.host, self.cfg.port, **kwargs)
        self._client.loop_start()
        if not self.subscribed.wait(timeout):
            raise FleetMqttError(
                f"not subscribed to {self.cfg.host}:{self.cfg.port} within {timeout}s"
            )

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(10)

    def idle(self) -> bool:
        """True when no received message is waiting to be stored (for tests and benches)."""
        return self._queue.unfinished_tasks == 0

    # ------------------------------------------------------------------ publishing
    def publish_desired(
        self, device_id: str, desired: DesiredState | None, timeout: float = 5.0
    ) -> None:
        """Publish (or clear, with None) the retained `desired` of a device, QoS 1."""
        topic, payload = desired_message(self.cfg.prefix, device_id, desired)
        if not self.connected.is_set():
            raise FleetMqttError("not connected to the broker")
        publish_retained(self._client, topic, payload, f"desired for {device_id}", timeout)

    # ------------------------------------------------------------------ paho side
    @property
    def _v5(self) -> bool:
        return self.cfg.protocol == "5"

    def _make_client(self) -> mqtt.Client:
        client = make_client(self.cfg, self.cfg.client_id, persistent=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _filters(self) -> list[str]:
        out = []
        for kind in KINDS:
            flt = Topics.fleet_filter(self.cfg.prefix, kind)
            if kind in SHARED_KINDS and self.cfg.shared_group and self._v5:
                flt = f"$share/{self.cfg.shared_group}/{flt}"
            out.append(flt)
        return out

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused connection reason=%s", rc)
            return
        self._generation += 1
        self.connected.set()
        log.info("connected to broker host=%s port=%d", self.cfg.host, self.cfg.port)
        _res, mid = client.subscribe([(f, 1) for f in self._filters()])
        if mid is not None:
            self._pending_subs.add(mid)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        bad = [str(c) for c in codes if c.is_failure]
        if bad:
            log.error("subscription refused reasons=%s", ",".join(bad))
            return
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        log.warning("disconnected from broker reason=%s", rc)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = _Msg(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._generation)
        if msg.qos == 0:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.dropped += 1  # QoS 0 is best effort; QoS>0 is bounded by receive_maximum
            return
        self._queue.put(item)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(item)
                if item.qos > 0 and item.generation == self._generation:
                    self._client.ack(item.mid, item.qos)
            except Exception:
                log.exception("ingest failed topic=%s", item.topic if item else None)
            finally:
                self._queue.task_done()

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.rejected[reason] += 1
        self._reject_log(reason, topic, detail)

    def _handle(self, item: _Msg) -> None:
        r = route(self.cfg.prefix, item.topic)
        if r is None:
            self._reject("topic", item.topic, "not a device topic")
            return
        if r.kind == "status" and not item.payload:
            return  # a cleared retained status
        try:
            self._store(r, item.payload)
        except PayloadRejectedError as exc:
            self._reject(exc.code.value, item.topic, exc.detail)
        except store.StoreError as exc:
            self._reject(exc.code, item.topic, str(exc))

    def _store(self, r: Route, data: bytes) -> None:
        now = self.clock()
        max_b = self.cfg.max_payload_bytes
        if r.kind == "snapshot":
            if len(data) > self.cfg.max_snapshot_bytes:
                raise store.StoreError("too_large", f"snapshot of {len(data)} bytes")
            with self.db.session() as s:
                store.record_snapshot(s, r.device_id, r.event_id or "", data, self.snapshots_dir)
            self.stored["snapshot"] += 1
            return
        model: type[_Payload] = _MODELS[r.kind]
        payload: _Payload = parse_payload(model, data, max_b)
        if getattr(payload, "device_id", None) != r.device_id:
            raise store.StoreError("device_mismatch", "payload device_id differs from topic")
        with self.db.session() as s:
            self._apply(s, payload, now)
        self.stored[r.kind] += 1

    def _apply(self, s: Any, payload: Any, now: float) -> None:
        if isinstance(payload, StatusPayload):
            store.apply_status(s, payload, now)
        elif isinstance(payload, HealthPayload):
            store.record_health(s, payload, now)
        elif isinstance(payload, EventPayload):
            if not store.record_event(s, payload, now, self.snapshots_dir):
                self.duplicates += 1
        elif isinstance(payload, ReportedState):
            store.record_reported(s, payload, now)

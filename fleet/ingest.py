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

Throughput: the worker takes up to `batch_size` queued messages (or what arrives
within `batch_window_s` of the first) and stores them in one transaction, then acks
each; a rejected message writes nothing, and a batch whose commit fails is redone
one message per transaction. After a commit, listeners registered with
`add_reported_listener` get the batch's `reported` device ids (the rollout engine
wakes on them).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.orm import Session

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
from fleet.config import FleetMqttConfig, HealthHistoryConfig
from fleet.db import Database
from fleet.health_history import HealthHistory
from fleet.mqtt_client import (
    FleetMqttError,
    desired_message,
    make_client,
    publish_retained,
    wait_published,
)

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


ReportedListener = Callable[[dict[str, str | None]], None]
"""Called after a batch commits with {device_id: update state} of its `reported`."""


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
class _Tally:
    """What a batch stored; counted into FleetMqtt only once the batch commits."""

    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    reported: dict[str, str | None] = field(default_factory=dict)
    history: dict[str, float] = field(default_factory=dict)
    """Devices whose health history row this batch stored, and when (controller time)."""


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
        *,
        batch_size: int = 200,
        batch_window_s: float = 0.05,
        history: HealthHistoryConfig | None = None,
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
        self.batches = 0
        self.batch_size, self.batch_window_s = batch_size, batch_window_s
        self.history = HealthHistory(history or HealthHistoryConfig())
        self._listeners: list[ReportedListener] = []
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

    def add_reported_listener(self, listener: ReportedListener) -> None:
        """Call `listener` (on the ingest thread) after each batch that stored `reported`."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ publishing
    def publish_desired(
        self, device_id: str, desired: DesiredState | None, timeout: float = 5.0
    ) -> None:
        """Publish (or clear, with None) the retained `desired` of a device, QoS 1."""
        topic, payload = desired_message(self.cfg.prefix, device_id, desired)
        if not self.connected.is_set():
            raise FleetMqttError("not connected to the broker")
        publish_retained(self._client, topic, payload, f"desired for {device_id}", timeout)

    def publish_desired_many(
        self, items: Sequence[tuple[str, DesiredState | None]], timeout: float = 10.0
    ) -> list[str]:
        """Publish many retained desired states without waiting for each PUBACK.

        All are handed to paho at once (it keeps the in-flight window), then waited
        for together up to `timeout`. Returns the ids of the devices whose PUBACK
        came; the others are not known to be published.
        """
        if not self.connected.is_set():
            raise FleetMqttError("not connected to the broker")
        infos: list[tuple[str, mqtt.MQTTMessageInfo]] = []
        for device_id, desired in items:
            topic, payload = desired_message(self.cfg.prefix, device_id, desired)
            infos.append((device_id, self._client.publish(topic, payload, qos=1, retain=True)))
        return wait_published(infos, timeout)

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
        running = True
        while running:
            batch, running = self._next_batch()
            try:
                self._commit_batch(batch)
            except Exception:
                log.exception("ingest batch failed size=%d", len(batch))
            finally:
                for _ in range(len(batch) + (0 if running else 1)):
                    self._queue.task_done()

    def _next_batch(self) -> tuple[list[_Msg], bool]:
        """Block for one message, then take more until `batch_size` or `batch_window_s`.

        Returns the messages and False once the stop marker (None) was taken.
        """
        batch: list[_Msg] = []
        item = self._queue.get()
        deadline = time.monotonic() + self.batch_window_s
        while item is not None:
            batch.append(item)
            if len(batch) >= self.batch_size:
                return batch, True
            left = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                return batch, True
        return batch, False

    def _commit_batch(self, items: list[_Msg]) -> None:
        """Store `items` in one transaction, then ack them; after a failure, one by one."""
        if not items:
            return
        tally = _Tally()
        routes = [route(self.cfg.prefix, item.topic) for item in items]
        devices = {r.device_id for r in routes if r is not None}
        reported = {r.device_id for r in routes if r is not None and r.kind == "reported"}
        try:
            with self.db.session() as s:
                held = store.preload(s, devices, reported)
                for item in items:
                    self._handle(s, item, tally)
                del held
        except Exception:
            if len(items) == 1:
                log.exception("ingest failed topic=%s", items[0].topic)
                return
            log.warning("ingest batch rolled back, storing one by one size=%d", len(items))
            for item in items:
                self._commit_batch([item])
            return
        self.batches += 1
        self.history.committed(tally.history)
        self.stored.update(tally.stored)
        self.duplicates += tally.duplicates
        for item in items:
            if item.qos > 0 and item.generation == self._generation:
                self._client.ack(item.mid, item.qos)
        if tally.reported:
            self._notify(tally.reported)
        self.history.maybe_prune(self.db, self.clock())

    def _notify(self, reported: dict[str, str | None]) -> None:
        for listener in list(self._listeners):
            try:
                listener(reported)
            except Exception:
                log.exception("reported listener failed")

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.rejected[reason] += 1
        self._reject_log(reason, topic, detail)

    def _handle(self, s: Session, item: _Msg, tally: _Tally) -> None:
        r = route(self.cfg.prefix, item.topic)
        if r is None:
            self._reject("topic", item.topic, "not a device topic")
            return
        if r.kind == "status" and not item.payload:
            return  # a cleared retained status
        try:
            self._store(s, r, item.payload, tally)
        except PayloadRejectedError as exc:
            self._reject(exc.code.value, item.topic, exc.detail)
        except store.StoreError as exc:
            self._reject(exc.code, item.topic, str(exc))

    def _store(self, s: Session, r: Route, data: bytes, tally: _Tally) -> None:
        """Validate and apply one message in the batch's session.

        Every rejection (StoreError, PayloadRejectedError) is raised before the
        message writes anything, so the rest of the batch is unaffected.
        """
        now = self.clock()
        max_b = self.cfg.max_payload_bytes
        if r.kind == "snapshot":
            if len(data) > self.cfg.max_snapshot_bytes:
                raise store.StoreError("too_large", f"snapshot of {len(data)} bytes")
            store.record_snapshot(s, r.device_id, r.event_id or "", data, self.snapshots_dir)
            tally.stored["snapshot"] += 1
            return
        model: type[_Payload] = _MODELS[r.kind]
        payload: _Payload = parse_payload(model, data, max_b)
        if getattr(payload, "device_id", None) != r.device_id:
            raise store.StoreError("device_mismatch", "payload device_id differs from topic")
        self._apply(s, payload, now, tally)
        tally.stored[r.kind] += 1

    def _apply(self, s: Session, payload: _Payload, now: float, tally: _Tally) -> None:
        if isinstance(payload, StatusPayload):
            store.apply_status(s, payload, now)
        elif isinstance(payload, HealthPayload):
            store.record_health(s, payload, now)
            if self.history.record(s, payload, now, tally.history):
                tally.stored["history"] += 1
        elif isinstance(payload, EventPayload):
            if not store.record_event(s, payload, now, self.snapshots_dir):
                tally.duplicates += 1
        elif isinstance(payload, ReportedState):
            tally.reported[payload.device_id] = store.record_reported(s, payload, now)

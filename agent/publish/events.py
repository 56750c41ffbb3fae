"""From an EventRecord to durable outbox rows (called on the pipeline's threads).

Never raises into the pipeline: an event that does not fit the published schema,
or that the disk refuses, is counted and logged (rate-limited), and evictions made
to keep the outbox within bounds are logged too.
"""

from __future__ import annotations

import logging
import time

from pydantic import ValidationError

from agent.metrics import RateLimitedLog
from agent.protocol import InvalidIdError, Topics
from agent.publish.outbox import Outbox, OutboxError
from agent.publish.payloads import event_messages, event_without_snapshot
from agent.types import EventRecord

log = logging.getLogger(__name__)


class EventQueue:
    def __init__(self, outbox: Outbox, topics: Topics, qos: int) -> None:
        self._outbox = outbox
        self._topics = topics
        self._qos = qos
        self._ratelog = RateLimitedLog(10.0)
        self.invalid_events = 0
        self.emit_errors = 0
        self.dropped_after_stop = 0

    def put(self, record: EventRecord) -> None:
        event_id = record.event.event_id
        try:
            try:
                messages = event_messages(self._topics, record, self._qos)
            except InvalidIdError:
                self._warn("bad_id", "event id not topic-safe, snapshot not sent id=%r", event_id)
                messages = event_without_snapshot(self._topics, record, self._qos)
            evicted = self._outbox.put(messages)
        except ValidationError as exc:
            self.invalid_events += 1
            first = exc.errors()[0]
            self._warn("invalid", "event does not fit the schema id=%s error=%s", event_id, first)
            return
        except OutboxError as exc:
            self.emit_errors += 1
            self._warn("outbox", "event not queued id=%s error=%s", event_id, exc)
            return
        if evicted:
            self._warn("evicted", "outbox full: evicted oldest messages count=%d", evicted)

    def drop_after_stop(self, record: EventRecord) -> None:
        self.dropped_after_stop += 1
        self._warn("stopped", "event dropped, publisher stopped id=%s", record.event.event_id)

    def _warn(self, key: str, msg: str, *args: object) -> None:
        suppressed = self._ratelog.allow(key, time.monotonic())
        if suppressed is not None:
            log.warning("%s suppressed=%d", msg % args, suppressed)

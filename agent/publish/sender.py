"""Sending outbox rows in order with a bounded in-flight window (publisher thread only).

A row is deleted when paho reports its PUBACK (QoS 1) or PUBCOMP (QoS 2) through
`on_publish(mid)`. A broker that refuses a message (an MQTT 5 reason code >= 0x80,
e.g. "Not authorized" under the ACL) will refuse it again on every retry, so it is
deleted too but counted as `broker_rejected` and logged, never silently. After a
reconnect `reset()` starts again from the oldest row still in the outbox.
"""

from __future__ import annotations

import logging
import time

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.metrics import RateLimitedLog
from agent.publish.outbox import Outbox

log = logging.getLogger(__name__)


class OutboxSender:
    def __init__(self, outbox: Outbox, max_inflight: int) -> None:
        self._outbox = outbox
        self._max_inflight = max_inflight
        self._inflight: dict[int, int] = {}
        self._sent_upto = 0
        self._ratelog = RateLimitedLog(10.0)
        self.published = 0
        self.broker_rejected = 0

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def reset(self) -> None:
        """A new connection: forget what was in flight, resend from the oldest row."""
        self._inflight.clear()
        self._sent_upto = 0

    def pump(self, client: mqtt.Client) -> None:
        room = self._max_inflight - len(self._inflight)
        if room <= 0 or self._outbox.counts().last_id <= self._sent_upto:
            return
        for row in self._outbox.after(self._sent_upto, room):
            m = row.message
            info = client.publish(m.topic, m.payload, qos=m.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            self._inflight[info.mid] = row.id
            self._sent_upto = row.id

    def acked(self, mid: int, reason: ReasonCode) -> bool:
        """Handle paho's on_publish; False if `mid` was not an outbox row."""
        row_id = self._inflight.pop(mid, None)
        if row_id is None:
            return False
        if reason.is_failure:
            self.broker_rejected += 1
            suppressed = self._ratelog.allow("rejected", time.monotonic())
            if suppressed is not None:
                log.warning(
                    "broker refused message, dropped row=%d reason=%s suppressed=%d",
                    row_id,
                    reason,
                    suppressed,
                )
        else:
            self.published += 1
        self._outbox.delete(row_id)
        return True

    def unsent(self) -> bool:
        """Rows in flight, or rows not yet sent on this connection."""
        if self._inflight:
            return True
        counts = self._outbox.counts()
        return counts.depth > 0 and counts.last_id > self._sent_upto

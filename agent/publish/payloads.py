"""Turning the pipeline's values into wire messages (pure functions, no I/O).

An event becomes two outbox messages when it has a snapshot: the JSON event on
`events` (with a `snapshot` reference: topic, size, sha256) and then the raw JPEG
bytes on `events/<event_id>/snapshot`. Both take the outbox's at-least-once path.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from agent.protocol import (
    DeviceState,
    EventPayload,
    InvalidIdError,
    SnapshotRef,
    StatusPayload,
    Topics,
)
from agent.publish.outbox import OutboxMessage
from agent.types import EventRecord


def event_messages(topics: Topics, record: EventRecord, qos: int) -> list[OutboxMessage]:
    """The outbox messages for one event (raises pydantic's ValidationError if the event
    does not fit the published schema, InvalidIdError if its id is not topic-safe)."""
    data: dict[str, Any] = record.event.to_dict()
    jpeg = record.snapshot_jpeg
    snapshot_topic = topics.snapshot(record.event.event_id) if jpeg else None
    if jpeg and snapshot_topic:
        data["snapshot"] = SnapshotRef(
            topic=snapshot_topic,
            content_type="image/jpeg",
            size=len(jpeg),
            sha256=hashlib.sha256(jpeg).hexdigest(),
        )
    payload = EventPayload.model_validate(data)
    messages = [OutboxMessage(topics.events, payload.to_json(), qos, "event")]
    if jpeg and snapshot_topic:
        messages.append(OutboxMessage(snapshot_topic, jpeg, qos, "snapshot"))
    return messages


def event_without_snapshot(topics: Topics, record: EventRecord, qos: int) -> list[OutboxMessage]:
    """Fallback when the event id is not usable as a topic level: the event alone."""
    return event_messages(topics, EventRecord(record.event), qos)


def status_payload(
    state: DeviceState,
    *,
    device_id: str,
    session: int,
    versions: dict[str, str],
    protocol: str | None,
    reason: str | None = None,
) -> bytes:
    payload = StatusPayload(
        state=state,
        device_id=device_id,
        session=session,
        timestamp=round(time.time(), 3),
        versions=versions,
        protocol=protocol,  # type: ignore[arg-type]
        reason=reason,
    )
    return payload.to_json()


__all__ = ["InvalidIdError", "event_messages", "event_without_snapshot", "status_payload"]

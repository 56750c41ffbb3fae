"""Registry writes: what each validated device message does to the database.

No MQTT here: `fleet.ingest` parses and validates, then calls these with an open
session. The session-counter rule (docs/protocol.md) lives in `apply_status`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from agent.protocol import (
    DeviceState,
    EventPayload,
    HealthPayload,
    ReportedState,
    StatusPayload,
    validate_id,
)
from fleet.models import Device, Event, Reported

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
PRELOAD_CHUNK = 500


class StoreError(Exception):
    """A device message that is valid JSON but cannot be stored (reason in `code`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class StatusOutcome(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    STALE = "stale"


def ensure_device(s: Session, device_id: str, now: float) -> Device:
    """The device row, created (offline) if this is the first message from it."""
    dev = s.get(Device, device_id)
    if dev is None:
        dev = Device(
            id=device_id, tags=[], online=False, session=-1, first_seen=now, last_seen=now,
            versions={},
        )  # fmt: skip
        s.add(dev)
        s.flush()
        log.info("device registered device=%s", device_id)
    return dev


def preload(s: Session, device_ids: set[str], reported_ids: set[str]) -> list[object]:
    """Load these devices' rows (and `reported` rows) in a few queries, so the batch's
    per-message `s.get` calls hit the identity map instead of a SELECT plus autoflush
    each. Hold the returned list for the session's life (the identity map is weak)."""
    out: list[object] = []
    for model, key, ids in ((Device, Device.id, device_ids),
                            (Reported, Reported.device_id, reported_ids)):  # fmt: skip
        wanted = sorted(ids)
        for i in range(0, len(wanted), PRELOAD_CHUNK):
            out.extend(s.scalars(select(model).where(key.in_(wanted[i : i + PRELOAD_CHUNK]))))
    return out


def apply_status(s: Session, status: StatusPayload, now: float) -> StatusOutcome:
    """Birth / Will / clean stop. An older session than the newest seen is stale."""
    dev = ensure_device(s, status.device_id, now)
    if status.session < dev.session:
        log.info(
            "stale status ignored device=%s state=%s session=%d current=%d",
            dev.id, status.state.value, status.session, dev.session,
        )  # fmt: skip
        return StatusOutcome.STALE
    dev.session = status.session
    dev.last_seen = now
    if status.state is DeviceState.ONLINE:
        dev.online = True
        dev.offline_reason = None
        dev.versions = dict(status.versions)
        dev.protocol = status.protocol
        return StatusOutcome.ONLINE
    dev.online = False
    dev.offline_reason = status.reason or "unknown"
    return StatusOutcome.OFFLINE


def record_health(s: Session, health: HealthPayload, now: float) -> None:
    dev = ensure_device(s, health.device_id, now)
    dev.last_health = health.model_dump(mode="json", by_alias=True)
    dev.last_health_at = health.timestamp
    dev.health_seq = health.seq
    dev.last_seen = now


def record_reported(s: Session, rep: ReportedState, now: float) -> str | None:
    """Upsert the device's reported state; returns its OTA update position."""
    ensure_device(s, rep.device_id, now).last_seen = now
    payload = rep.model_dump(mode="json", by_alias=True)
    row = s.get(Reported, rep.device_id)
    state = update_state_of(payload)
    if row is None:
        s.add(
            Reported(
                device_id=rep.device_id, payload=payload, update_state=state,
                timestamp=rep.timestamp, received_at=now,
            )
        )  # fmt: skip
    else:
        row.payload, row.update_state = payload, state
        row.timestamp, row.received_at = rep.timestamp, now
    return state


def update_state_of(payload: dict[str, Any]) -> str | None:
    """The OTA state machine position: `update.state`, else a top-level `update_state`."""
    upd = payload.get("update")
    value = upd.get("state") if isinstance(upd, dict) else payload.get("update_state")
    return str(value)[:32] if value is not None else None


def snapshot_path(snapshots_dir: Path, device_id: str, event_id: str) -> Path:
    """Where a snapshot lives; both ids are validated topic levels, so no traversal."""
    return snapshots_dir / validate_id(device_id) / f"{validate_id(event_id, 'event id')}.jpg"


def record_event(s: Session, ev: EventPayload, now: float, snapshots_dir: Path) -> bool:
    """Insert the event once; False if (event_id, phase) was already stored."""
    ensure_device(s, ev.device_id, now).last_seen = now
    dup = s.scalar(
        select(Event.id).where(Event.event_id == ev.event_id, Event.phase == ev.phase.value)
    )
    if dup is not None:
        return False
    row = Event(
        event_id=ev.event_id, phase=ev.phase.value, device_id=ev.device_id,
        camera_id=ev.camera_id, rule_id=ev.rule_id, rule_type=ev.rule_type, label=ev.label,
        score=ev.score, wall_time=ev.wall_time, received_at=now,
        payload=ev.model_dump(mode="json", by_alias=True),
        snapshot_sha256=ev.snapshot.sha256 if ev.snapshot else None,
    )  # fmt: skip
    if ev.snapshot is not None:
        path = snapshot_path(snapshots_dir, ev.device_id, ev.event_id)
        if path.is_file() and _sha256(path.read_bytes()) == ev.snapshot.sha256:
            row.snapshot_path = str(path.relative_to(snapshots_dir))
    try:
        with s.begin_nested():
            s.add(row)
    except IntegrityError:
        return False  # another replica stored it between our check and insert
    return True


def record_snapshot(
    s: Session, device_id: str, event_id: str, data: bytes, snapshots_dir: Path
) -> int:
    """Store the JPEG and link it to its event rows; return how many rows were linked."""
    if not data.startswith(JPEG_MAGIC):
        raise StoreError("not_jpeg", f"{len(data)} bytes without a JPEG header")
    digest = _sha256(data)
    expected = s.scalars(
        select(Event.snapshot_sha256).where(
            Event.event_id == event_id, Event.device_id == device_id
        )
    ).all()
    announced = {e for e in expected if e is not None}
    if announced and digest not in announced:
        raise StoreError("sha256_mismatch", f"snapshot sha256 {digest} not announced")
    path = snapshot_path(snapshots_dir, device_id, event_id)
    _write_atomic(path, data)
    rel = str(path.relative_to(snapshots_dir))
    result = s.execute(
        update(Event)
        .where(
            Event.event_id == event_id,
            Event.device_id == device_id,
            Event.snapshot_sha256 == digest,
        )
        .values(snapshot_path=rel)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

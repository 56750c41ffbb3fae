"""Health history: a compact row per device per interval, bounded retention, derived points.

Write side (the `fleet-ingest` thread): `HealthHistory.record` adds one `HealthSample`
to the batch's session when the device's last stored row is at least
`health_history.interval_s` old (controller clock). The last-stored times live in
memory (no SELECT per report) and are taken over only after the batch commits, so a
rolled-back batch stores its rows again when redone. `maybe_prune` deletes rows
older than `health_history.hours` at most every `prune_interval_s`, in chunks, each
in its own short transaction.

Row layout: device-level numbers are columns; cameras (a varying number per
device) are one JSON map per row with short keys (`CAMERA_KEYS`), so a report is
one INSERT, not one per camera. Cumulative counters (frames, detections,
confidence sum, drops) are stored as reported; rates are derived on read from
consecutive rows of the same agent run (`derive`), so ingest keeps no counter state.

Read side: `query_points` (API and dashboard) returns `HealthPoint`s oldest first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from agent.protocol import HealthPayload
from fleet.config import HealthHistoryConfig
from fleet.db import Database
from fleet.models import HealthSample

log = logging.getLogger(__name__)

CAMERA_KEYS = {
    "st": "state (text)",
    "fps": "fps_processed",
    "p50": "latency_ms.p50",
    "p99": "latency_ms.p99",
    "dpf": "detections_per_frame (a gauge, when the device reports one)",
    "conf": "confidence.mean (a gauge, when the device reports one)",
    "drift": "max of drift.scores",
    "fr": "frames_processed (cumulative)",
    "dec": "frames_decoded (cumulative)",
    "det": "detections (cumulative)",
    "cs": "confidence_sum (cumulative)",
    "drop": "drops (cumulative)",
}
COUNTERS = (("fr", "frames_processed"), ("dec", "frames_decoded"), ("det", "detections"),
            ("cs", "confidence_sum"), ("drop", "drops"))  # fmt: skip
MAX_CAMERAS = 32
"""Cameras beyond this many (by id order) are left out of a history row."""
MAX_ID_CHARS = 64
DEFAULT_LIMIT = 1440
MAX_LIMIT = 10_000
PRUNE_CHUNK = 5000


# --------------------------------------------------------------------------- extraction
def _num(value: Any) -> float | None:
    """A finite number, else None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _put(out: dict[str, Any], key: str, value: Any, digits: int = 3) -> None:
    num = _num(value)
    if num is not None:
        out[key] = round(num, digits)


def camera_sample(cam: Mapping[str, Any]) -> dict[str, Any]:
    """The compact per-camera map of one health report (absent numbers are left out)."""
    out: dict[str, Any] = {}
    state = cam.get("state")
    if isinstance(state, str):
        out["st"] = state[:16]
    _put(out, "fps", cam.get("fps_processed"), 2)
    latency = cam.get("latency_ms")
    if isinstance(latency, dict):
        _put(out, "p50", latency.get("p50"), 1)
        _put(out, "p99", latency.get("p99"), 1)
    _put(out, "dpf", cam.get("detections_per_frame"), 4)
    confidence = cam.get("confidence")
    if isinstance(confidence, dict):
        _put(out, "conf", confidence.get("mean"), 4)
    drift = cam.get("drift")
    scores = drift.get("scores") if isinstance(drift, dict) else None
    if isinstance(scores, dict):
        values = [v for v in map(_num, scores.values()) if v is not None]
        if values:
            out["drift"] = round(max(values), 4)
    for key, name in COUNTERS:
        _put(out, key, cam.get(name), 3)
    return out


def sample_row(health: HealthPayload, now: float) -> HealthSample | None:
    """The history row of one validated report; None if its times are not finite."""
    if _num(health.timestamp) is None or _num(health.started_at) is None:
        return None
    inference = health.inference or {}
    system = health.system or {}
    degraded = inference.get("degraded")
    backend = inference.get("backend")
    cams = sorted((k, v) for k, v in (health.cameras or {}).items() if isinstance(v, dict))
    return HealthSample(
        device_id=health.device_id, time=health.timestamp, received_at=now, seq=health.seq,
        started_at=health.started_at,
        degraded=degraded if isinstance(degraded, bool) else None,
        backend=backend[:64] if isinstance(backend, str) else None,
        outbox_depth=health.publisher.outbox.depth,
        cpu_percent=_num(system.get("cpu_percent")), hottest_c=_num(system.get("hottest_c")),
        mem_available_fraction=_num(system.get("mem_available_fraction")),
        cameras={cid[:MAX_ID_CHARS]: camera_sample(c) for cid, c in cams[:MAX_CAMERAS]},
    )  # fmt: skip


# --------------------------------------------------------------------------- write side
class HealthHistory:
    """Interval gating and retention for the ingest worker (one per FleetMqtt)."""

    def __init__(self, cfg: HealthHistoryConfig) -> None:
        self.cfg = cfg
        self.pruned = 0
        self._last: dict[str, float] = {}
        self._last_prune: float | None = None

    def record(self, s: Session, health: HealthPayload, now: float,
               pending: dict[str, float]) -> bool:  # fmt: skip
        """Add a history row if the device's interval elapsed; `pending` is the batch's
        own last-stored times, handed to `committed` once the batch commits."""
        last = pending.get(health.device_id, self._last.get(health.device_id))
        if last is not None and 0 <= now - last < self.cfg.interval_s:
            return False
        row = sample_row(health, now)
        if row is None:
            return False
        s.add(row)
        pending[health.device_id] = now
        return True

    def committed(self, pending: Mapping[str, float]) -> None:
        self._last.update(pending)

    def maybe_prune(self, db: Database, now: float) -> int:
        """Delete rows older than the retention if `prune_interval_s` passed since the
        last prune; returns how many were deleted (errors are logged, not raised)."""
        if self._last_prune is not None and 0 <= now - self._last_prune < self.cfg.prune_interval_s:
            return 0
        self._last_prune = now
        try:
            deleted = prune(db, now - self.cfg.hours * 3600.0)
        except SQLAlchemyError:
            log.exception("health history prune failed")
            return 0
        self.pruned += deleted
        if deleted:
            log.info("health history pruned rows=%d", deleted)
        return deleted


def prune(db: Database, cutoff: float, chunk: int = PRUNE_CHUNK) -> int:
    """Delete rows stored before `cutoff`, `chunk` rows per transaction."""
    total = 0
    while True:
        with db.session() as s:
            ids = select(HealthSample.id).where(HealthSample.received_at < cutoff).limit(chunk)
            result = s.execute(delete(HealthSample).where(HealthSample.id.in_(ids)))
        n = int(getattr(result, "rowcount", 0) or 0)
        total += n
        if n < chunk:
            return total


# --------------------------------------------------------------------------- read side
class CameraPoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    state: str | None = Field(default=None, description="Camera state (streaming, ...).")
    fps: float | None = Field(default=None, description="Frames/s processed.")
    latency_p50_ms: float | None = Field(default=None, description="Frame latency p50.")
    latency_p99_ms: float | None = Field(default=None, description="Frame latency p99.")
    detections_per_frame: float | None = Field(
        default=None, description="The reported gauge, else from counters since the previous row."
    )
    confidence_mean: float | None = Field(
        default=None, description="The reported gauge, else from counters since the previous row."
    )
    drift_max: float | None = Field(default=None, description="Highest drift score.")
    drop_pct: float | None = Field(
        default=None, description="Dropped / decoded frames since the previous row, in %."
    )


class HealthPoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    time: float = Field(description="Unix time of the report (device clock).")
    received_at: float = Field(description="Unix time the controller stored it.")
    seq: int = Field(description="The report's seq.")
    degraded: bool | None = Field(description="inference.degraded.")
    backend: str | None = Field(description="inference.backend.")
    outbox_depth: int | None = Field(description="Messages waiting in the device's outbox.")
    cpu_percent: float | None = Field(description="system.cpu_percent, if reported.")
    hottest_c: float | None = Field(description="system.hottest_c, if reported.")
    mem_available_fraction: float | None = Field(description="system.mem_available_fraction.")
    cameras: dict[str, CameraPoint] = Field(description="Per camera id.")


def _delta(cur: Mapping[str, Any], prev: Mapping[str, Any] | None, key: str) -> float | None:
    """Counter increase since `prev`; since the agent started when there is no usable prev."""
    now = _num(cur.get(key))
    if now is None:
        return None
    before = _num(prev.get(key)) if prev is not None else None
    return now if before is None or before > now else now - before


def _ratio(num: float | None, den: float | None, scale: float = 1.0) -> float | None:
    return None if num is None or not den else round(scale * num / den, 4)


def camera_point(cur: Mapping[str, Any], prev: Mapping[str, Any] | None) -> CameraPoint:
    frames, dets = _delta(cur, prev, "fr"), _delta(cur, prev, "det")
    dpf, conf = _num(cur.get("dpf")), _num(cur.get("conf"))
    st = cur.get("st")
    return CameraPoint(
        state=st if isinstance(st, str) else None, fps=_num(cur.get("fps")),
        latency_p50_ms=_num(cur.get("p50")), latency_p99_ms=_num(cur.get("p99")),
        detections_per_frame=dpf if dpf is not None else _ratio(dets, frames),
        confidence_mean=conf if conf is not None else _ratio(_delta(cur, prev, "cs"), dets),
        drift_max=_num(cur.get("drift")),
        drop_pct=_ratio(_delta(cur, prev, "drop"), _delta(cur, prev, "dec"), 100.0),
    )  # fmt: skip


def derive(rows: Sequence[HealthSample]) -> list[HealthPoint]:
    """Points from rows in time order; counters diff against the previous row of the
    same agent run (same `started_at`), else count since the agent started."""
    out: list[HealthPoint] = []
    prev: HealthSample | None = None
    for row in rows:
        before = prev.cameras if prev is not None and prev.started_at == row.started_at else {}
        cams = {
            cid: camera_point(c, before.get(cid) if isinstance(before.get(cid), dict) else None)
            for cid, c in row.cameras.items()
            if isinstance(c, dict)
        }
        out.append(HealthPoint(
            time=row.time, received_at=row.received_at, seq=row.seq, degraded=row.degraded,
            backend=row.backend, outbox_depth=row.outbox_depth, cpu_percent=row.cpu_percent,
            hottest_c=row.hottest_c, mem_available_fraction=row.mem_available_fraction,
            cameras=cams,
        ))  # fmt: skip
        prev = row
    return out


class HistoryQueryError(ValueError):
    """A history query's parameters are inconsistent."""


def check_window(since: float | None, until: float | None, limit: int) -> None:
    """Raise HistoryQueryError naming the parameter that is out of range."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and not math.isfinite(value):
            raise HistoryQueryError(f"{name} must be a finite Unix time")
    if since is not None and until is not None and since >= until:
        raise HistoryQueryError(f"since ({since:g}) must be before until ({until:g})")
    if not 1 <= limit <= MAX_LIMIT:
        raise HistoryQueryError(f"limit must be 1..{MAX_LIMIT}")


def query_points(
    s: Session,
    device_id: str,
    since: float | None = None,
    until: float | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[HealthPoint]:
    """The newest `limit` rows with since <= time < until, oldest first, as points."""
    check_window(since, until, limit)
    col = HealthSample.time
    q = select(HealthSample).where(HealthSample.device_id == device_id)
    if since is not None:
        q = q.where(col >= since)
    if until is not None:
        q = q.where(col < until)
    rows = list(s.scalars(q.order_by(col.desc(), HealthSample.id.desc()).limit(limit)))
    rows.reverse()
    if not rows:
        return []
    prev = s.scalar(
        select(HealthSample)
        .where(HealthSample.device_id == device_id, col < rows[0].time)
        .order_by(col.desc(), HealthSample.id.desc())
        .limit(1)
    )
    if prev is None:
        return derive(rows)
    return derive([prev, *rows])[1:]

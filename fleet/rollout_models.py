"""Rollout tables: rollouts, their waves, per-device rollout state and the history log.

They share `fleet.models.Base`, so `Database.create_all` makes them once this
module is imported (`ensure_tables` does it explicitly for an existing database).
`rollout_history` is append-only: the engine and the operator commands only ever
insert into it. Times are Unix seconds as floats, like the rest of the schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, Session, mapped_column

from fleet.db import Database
from fleet.models import Base

ENGINE = "engine"
"""The actor of history entries written by the engine itself."""


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column()
    """The validated `RolloutSpec` (JSON)."""
    desired: Mapped[dict[str, Any]] = mapped_column()
    """Resolved artifact refs `{"model": ref|null, "config": ref|null}` laid over each
    device's previous desired state."""
    current_wave: Mapped[int] = mapped_column(Integer, default=-1)
    total_devices: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str | None] = mapped_column(String(64), default=None)
    """Why it halted or was aborted (a code: failure_threshold, quality_gate, ...)."""


class RolloutWave(Base):
    __tablename__ = "rollout_waves"
    __table_args__ = (UniqueConstraint("rollout_id", "index", name="uq_rollout_wave"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(16))
    """The spec's size, e.g. `10%`."""
    size: Mapped[int] = mapped_column(Integer)
    probation_s: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    probation_until: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    gate: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    """The last quality-gate result (JSON) evaluated for this wave."""


class RolloutDevice(Base):
    """One targeted device: its wave, its position, and a pending `desired` to publish."""

    __tablename__ = "rollout_devices"
    __table_args__ = (Index("ix_rollout_devices_device", "device_id"),)

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    wave: Mapped[int | None] = mapped_column(Integer, default=None)
    """Index of its wave; None: beyond the last wave (stays on the old version)."""
    rank: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    state_since: Mapped[float] = mapped_column(Float)
    launched_at: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(String(256), default=None)
    previous_desired: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    target_desired: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    reverted: Mapped[bool] = mapped_column(Boolean, default=False)
    publish_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    """A desired state (or a clear, when `publish_desired` is null) still to be published."""
    publish_desired: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    published_at: Mapped[float | None] = mapped_column(Float, default=None)
    start_counters: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    """Quality-gate counters at rollout creation, refreshed at launch (control windows
    start here; a canary whose counters fall below them restarted into the update)."""
    commit_counters: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    """Quality-gate counters when it committed (the canary window starts here)."""


class RolloutHistory(Base):
    """Append-only log of everything that happened to a rollout."""

    __tablename__ = "rollout_history"
    __table_args__ = (Index("ix_rollout_history_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"))
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    wave: Mapped[int | None] = mapped_column(Integer, default=None)
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)
    actor: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


ROLLOUT_TABLES = [m.__table__ for m in (Rollout, RolloutWave, RolloutDevice, RolloutHistory)]


def ensure_tables(db: Database) -> None:
    """Create the rollout tables in an existing database (idempotent)."""
    Base.metadata.create_all(db.engine, tables=ROLLOUT_TABLES)  # type: ignore[arg-type]


def record(
    s: Session,
    rollout_id: int,
    now: float,
    kind: str,
    *,
    actor: str = ENGINE,
    wave: int | None = None,
    device_id: str | None = None,
    **detail: Any,
) -> None:
    """Append one history entry (the only way anything is written to the log)."""
    s.add(
        RolloutHistory(
            rollout_id=rollout_id, at=now, kind=kind, wave=wave, device_id=device_id,
            actor=actor, detail=detail,
        )
    )  # fmt: skip


def revert(
    s: Session,
    rollout_id: int,
    rows: Sequence[RolloutDevice],
    now: float,
    *,
    actor: str,
    wave: int | None,
) -> None:
    """Queue each device's previous desired state (a clear when it had none) for publishing."""
    for row in rows:
        row.reverted, row.publish_pending = True, True
        row.publish_desired = row.previous_desired
    record(s, rollout_id, now, "rollback", actor=actor, wave=wave,
           devices=[row.device_id for row in rows])  # fmt: skip

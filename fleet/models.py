"""The controller's tables (SQLAlchemy 2 typed declarative).

Times are Unix seconds as floats (the protocol's own unit), so SQLite and
PostgreSQL compare them the same way. JSON columns hold payload sections the
controller stores but does not query by.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[str]: JSON}


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tags: Mapped[list[str]] = mapped_column(default=list)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    session: Mapped[int] = mapped_column(Integer, default=-1)
    offline_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    protocol: Mapped[str | None] = mapped_column(String(8), default=None)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_health: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    last_health_at: Mapped[float | None] = mapped_column(Float, default=None)
    health_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    desired: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class Event(Base):
    """One episode boundary; (event_id, phase) is the deduplication key."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("event_id", "phase", name="uq_events_event_phase"),
        Index("ix_events_device_time", "device_id", "wall_time"),
        Index("ix_events_time", "wall_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256))
    phase: Mapped[str] = mapped_column(String(8))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    camera_id: Mapped[str] = mapped_column(String(64), index=True)
    rule_id: Mapped[str] = mapped_column(String(64), index=True)
    rule_type: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    wall_time: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column()
    snapshot_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    snapshot_path: Mapped[str | None] = mapped_column(String(512), default=None)


class Reported(Base):
    """The last retained `reported` payload of a device and its update position."""

    __tablename__ = "reported"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    payload: Mapped[dict[str, Any]] = mapped_column()
    update_state: Mapped[str | None] = mapped_column(String(32), default=None)
    timestamp: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)


class HealthSample(Base):
    """One compact health row per device per `health_history.interval_s`
    (fleet/health_history.py): device-level numbers as columns, per camera one JSON map."""

    __tablename__ = "health_samples"
    __table_args__ = (
        Index("ix_health_samples_device_time", "device_id", "time"),
        Index("ix_health_samples_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    time: Mapped[float] = mapped_column(Float)
    """The report's own `timestamp` (what charts and the API filter by)."""
    received_at: Mapped[float] = mapped_column(Float)
    """Controller time of storage (what retention prunes by)."""
    seq: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    """The agent's start: cumulative camera counters restart when it changes."""
    degraded: Mapped[bool | None] = mapped_column(Boolean, default=None)
    backend: Mapped[str | None] = mapped_column(String(64), default=None)
    outbox_depth: Mapped[int | None] = mapped_column(Integer, default=None)
    cpu_percent: Mapped[float | None] = mapped_column(Float, default=None)
    hottest_c: Mapped[float | None] = mapped_column(Float, default=None)
    mem_available_fraction: Mapped[float | None] = mapped_column(Float, default=None)
    cameras: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """{camera id: {short key: number}}; keys in fleet/health_history.py CAMERA_KEYS."""


class Artifact(Base):
    """A published model or config: content-addressed blob plus its signed manifest."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("kind", "name", "version", name="uq_artifact_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(String(256))
    sequence: Mapped[int] = mapped_column(Integer, unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    manifest: Mapped[str] = mapped_column(Text)
    """The signed envelope exactly as served (JSON text)."""


class ApiToken(Base):
    """An operator token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class MqttCredential(Base):
    """A broker login (see fleet/mqtt_auth.py): only Mosquitto's password hash is stored.

    Not tied to `devices`: a device's credential is issued at flashing time, before the
    device has ever connected."""

    __tablename__ = "mqtt_credentials"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The MQTT user name: the device id for role `device`."""
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    """`$7$<iterations>$<salt>$<hash>`, a line of Mosquitto's password_file."""
    created_at: Mapped[float] = mapped_column(Float)
    rotated_at: Mapped[float | None] = mapped_column(Float, default=None)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[float | None] = mapped_column(Float, default=None)

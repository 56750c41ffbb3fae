"""Response and request bodies of the HTTP API (they make up the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.models import Artifact, Device, Event, Reported


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class DeviceOut(_Out):
    id: str = Field(description="Device id.")
    tags: list[str] = Field(description="Targeting tags.")
    online: bool = Field(description="Online per the newest status session.")
    session: int = Field(description="Newest MQTT session counter seen.")
    offline_reason: str | None = Field(description="will, shutdown, ... when offline.")
    first_seen: float = Field(description="Unix time of the first message.")
    last_seen: float = Field(description="Unix time of the latest message.")
    versions: dict[str, Any] = Field(description="Versions from the latest birth.")
    health_seq: int | None = Field(description="seq of the latest health report.")
    last_health_at: float | None = Field(description="timestamp of the latest health report.")

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        return cls(
            id=d.id, tags=list(d.tags), online=d.online, session=d.session,
            offline_reason=d.offline_reason, first_seen=d.first_seen, last_seen=d.last_seen,
            versions=dict(d.versions), health_seq=d.health_seq, last_health_at=d.last_health_at,
        )  # fmt: skip


class DeviceDetailOut(DeviceOut):
    last_health: dict[str, Any] | None = Field(description="The latest health payload.")
    desired: dict[str, Any] | None = Field(description="The desired state last published.")
    reported: dict[str, Any] | None = Field(description="The latest reported payload.")
    update_state: str | None = Field(description="OTA state machine position, if reported.")

    @classmethod
    def detail(cls, d: Device, rep: Reported | None) -> DeviceDetailOut:
        base = DeviceOut.of(d).model_dump()
        return cls(
            **base, last_health=d.last_health, desired=d.desired,
            reported=rep.payload if rep else None, update_state=rep.update_state if rep else None,
        )  # fmt: skip


class EventOut(_Out):
    event_id: str = Field(description="Stable episode id.")
    phase: str = Field(description="start or end.")
    device_id: str = Field(description="Device id.")
    camera_id: str = Field(description="Camera id.")
    rule_id: str = Field(description="Rule id.")
    rule_type: str = Field(description="zone, line, count, ...")
    label: str = Field(description="Object class label.")
    score: float = Field(description="Detector score.")
    wall_time: float = Field(description="Unix time of the frame.")
    has_snapshot: bool = Field(description="A snapshot is stored for this event.")
    payload: dict[str, Any] = Field(description="The event payload as received.")

    @classmethod
    def of(cls, e: Event) -> EventOut:
        return cls(
            event_id=e.event_id, phase=e.phase, device_id=e.device_id, camera_id=e.camera_id,
            rule_id=e.rule_id, rule_type=e.rule_type, label=e.label, score=e.score,
            wall_time=e.wall_time, has_snapshot=e.snapshot_path is not None, payload=e.payload,
        )  # fmt: skip


class ArtifactOut(_Out):
    kind: str = Field(description="model or config.")
    name: str = Field(description="Artifact name.")
    version: str = Field(description="Artifact version.")
    sha256: str = Field(description="SHA-256 of the served bytes.")
    size: int = Field(description="Size in bytes.")
    sequence: int = Field(description="Manifest sequence number (monotonic per fleet).")
    created_at: float = Field(description="Unix time of publication.")
    manifest_url: str = Field(description="Where devices fetch the signed manifest.")


class ArtifactPick(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Published artifact name.")
    version: str = Field(description="Published artifact version.")


class DesiredIn(BaseModel):
    """What a device should run; null leaves that part unmanaged."""

    model_config = ConfigDict(extra="forbid")
    model: ArtifactPick | None = Field(default=None, description="Model artifact.")
    config: ArtifactPick | None = Field(default=None, description="Config artifact.")


def artifact_out(a: Artifact, manifest_url: str) -> ArtifactOut:
    return ArtifactOut(
        kind=a.kind, name=a.name, version=a.version, sha256=a.sha256, size=a.size,
        sequence=a.sequence, created_at=a.created_at, manifest_url=manifest_url,
    )  # fmt: skip

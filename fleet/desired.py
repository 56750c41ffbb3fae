"""Desired state: resolve artifact picks to signed-manifest refs, store and publish.

The payload is agent.protocol's `DesiredState`, published retained (QoS 1) on the
device's `desired` topic by whatever implements `DesiredSink` (the controller's
MQTT connection, or a one-shot client from the CLI). `publish_all` publishes many
at once (the rollout engine's waves), batched when the sink can.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import ArtifactRef, DesiredState
from fleet.artifacts import manifest_url
from fleet.db import Database
from fleet.models import Artifact, Device
from fleet.mqtt_client import FleetMqttError
from fleet.schemas import ArtifactPick, DesiredIn

log = logging.getLogger(__name__)


class DesiredError(Exception):
    """Unknown device or artifact."""


class DesiredSink(Protocol):
    def publish_desired(self, device_id: str, desired: DesiredState | None) -> None: ...


def publish_all(
    sink: DesiredSink, items: Sequence[tuple[str, DesiredState | None]], timeout: float
) -> tuple[set[str], FleetMqttError | None]:
    """Publish many desired states: (device ids acknowledged, first error or None).

    A sink with `publish_desired_many` (the controller's connection) gets them all
    at once and is waited for once, up to `timeout`; any other sink is called one
    by one, stopping at the first failure (the broker is down).
    """
    many = getattr(sink, "publish_desired_many", None)
    if many is not None:
        try:
            acked = set(many(items, timeout))
        except FleetMqttError as exc:
            return set(), exc
        missing = len(items) - len(acked)
        err = FleetMqttError(f"{missing} not acknowledged within {timeout}s") if missing else None
        return acked, err
    done: set[str] = set()
    for device_id, desired in items:
        try:
            sink.publish_desired(device_id, desired)
        except FleetMqttError as exc:
            return done, exc
        done.add(device_id)
    return done, None


def _ref(s: Session, kind: str, pick: ArtifactPick | None, public_url: str) -> ArtifactRef | None:
    if pick is None:
        return None
    row = s.scalar(
        select(Artifact).where(
            Artifact.kind == kind, Artifact.name == pick.name, Artifact.version == pick.version
        )
    )
    if row is None:
        raise DesiredError(f"no published {kind} {pick.name}@{pick.version}")
    return ArtifactRef(
        version=row.version,
        manifest_url=manifest_url(public_url, row.sha256),
        sequence=row.sequence,
    )


def set_desired(
    db: Database, sink: DesiredSink, device_id: str, body: DesiredIn, public_url: str
) -> DesiredState:
    """Resolve, publish (retained) and record the desired state of one device."""
    with db.session() as s:
        if s.get(Device, device_id) is None:
            raise DesiredError(f"unknown device {device_id!r}")
        desired = DesiredState.model_validate(
            {
                "schema": 1,
                "model": _ref(s, "model", body.model, public_url),
                "config": _ref(s, "config", body.config, public_url),
            }
        )
    sink.publish_desired(device_id, desired)
    with db.session() as s:
        dev = s.get(Device, device_id)
        if dev is not None:
            dev.desired = desired.model_dump(mode="json", by_alias=True)
    log.info("desired published device=%s", device_id)
    return desired

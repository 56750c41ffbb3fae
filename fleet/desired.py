"""Desired state: resolve artifact picks to signed-manifest refs, store and publish.

The payload is agent.protocol's `DesiredState`, published retained (QoS 1) on the
device's `desired` topic by whatever implements `DesiredSink` (the controller's
MQTT connection, or a one-shot client from the CLI).
"""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import ArtifactRef, DesiredState
from fleet.artifacts import manifest_url
from fleet.db import Database
from fleet.models import Artifact, Device
from fleet.schemas import ArtifactPick, DesiredIn

log = logging.getLogger(__name__)


class DesiredError(Exception):
    """Unknown device or artifact."""


class DesiredSink(Protocol):
    def publish_desired(self, device_id: str, desired: DesiredState | None) -> None: ...


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

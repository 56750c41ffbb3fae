"""Operator commands on rollouts: create, pause, resume, abort.

They only write the database (the rollout rows and the history log), so the CLI
can run them against the controller's database without its MQTT connection; the
engine (`fleet.rollouts.RolloutEngine`, running in the controller) launches waves
and publishes whatever they leave pending (the first wave, rollbacks).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.artifacts import manifest_url
from fleet.db import Database
from fleet.models import Artifact, Device
from fleet.rollout_gate import counters_from_health
from fleet.rollout_models import (
    Rollout,
    RolloutDevice,
    RolloutWave,
    ensure_tables,
    record,
    revert,
)
from fleet.rollout_spec import (
    ACTIVE_ROLLOUT_STATES,
    DeviceRolloutState,
    RolloutSpec,
    RolloutState,
    WaveState,
    plan_waves,
)
from fleet.schemas import ArtifactPick

log = logging.getLogger(__name__)


class RolloutError(Exception):
    """An operator request that cannot be done; `code`: not_found, invalid_state,
    conflict, no_devices, unknown_artifact."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def _resolve(s: Session, kind: str, pick: ArtifactPick | None, public_url: str) -> Any:
    if pick is None:
        return None
    row = s.scalar(
        select(Artifact).where(
            Artifact.kind == kind, Artifact.name == pick.name, Artifact.version == pick.version
        )
    )
    if row is None:
        raise RolloutError("unknown_artifact", f"no published {kind} {pick.name}@{pick.version}")
    return {
        "version": row.version,
        "manifest_url": manifest_url(public_url, row.sha256),
        "sequence": row.sequence,
    }


def _rank_key(rollout_id: int, dev: Device) -> tuple[bool, str]:
    """Online devices first, then a per-rollout shuffle, so canaries vary between rollouts."""
    digest = hashlib.sha256(f"{rollout_id}/{dev.id}".encode()).hexdigest()
    return (not dev.online, digest)


def _check_free(s: Session, ids: Sequence[str]) -> None:
    busy = s.scalars(
        select(RolloutDevice.device_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(Rollout.state.in_(ACTIVE_ROLLOUT_STATES), RolloutDevice.device_id.in_(ids))
    ).all()
    if busy:
        raise RolloutError("conflict", f"already in an active rollout: {sorted(busy)[:10]}")


def create_rollout(
    db: Database, spec: RolloutSpec, public_url: str, actor: str, now: float | None = None
) -> int:
    """Store a new running rollout (its first wave launches on the next tick); its id."""
    now = time.time() if now is None else now
    ensure_tables(db)
    with db.session() as s:
        refs = {
            "model": _resolve(s, "model", spec.model, public_url),
            "config": _resolve(s, "config", spec.config, public_url),
        }
        devices = [
            d
            for d in s.scalars(select(Device).order_by(Device.id))
            if spec.target.matches(d.id, d.tags)
        ]
        if not devices:
            raise RolloutError("no_devices", "no registered device matches the target")
        _check_free(s, [d.id for d in devices])
        plan = plan_waves(len(devices), spec.waves)
        r = Rollout(
            name=spec.name,
            state=RolloutState.RUNNING.value,
            spec=spec.model_dump(mode="json"),
            desired=refs,
            current_wave=-1,
            total_devices=len(devices),
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        s.add(r)
        s.flush()
        wave_of: list[int] = []
        for pos, (i, size) in enumerate(plan):
            s.add(
                RolloutWave(
                    rollout_id=r.id,
                    index=pos,
                    label=spec.waves[i].size,
                    size=size,
                    probation_s=spec.probation_of(i),
                    state=WaveState.WAITING.value,
                )
            )
            wave_of += [pos] * size
        for rank, dev in enumerate(sorted(devices, key=lambda d: _rank_key(r.id, d))):
            counters = counters_from_health(dev.last_health)
            s.add(
                RolloutDevice(
                    rollout_id=r.id,
                    device_id=dev.id,
                    rank=rank,
                    state=DeviceRolloutState.WAITING.value,
                    wave=wave_of[rank] if rank < len(wave_of) else None,
                    state_since=now,
                    start_counters=counters.to_json() if counters else None,
                )
            )
        record(
            s,
            r.id,
            now,
            "created",
            actor=actor,
            spec=spec.model_dump(mode="json"),
            desired=refs,
            devices=len(devices),
            waves=[size for _, size in plan],
        )
        log.info(
            "rollout created rollout=%d name=%s devices=%d waves=%s",
            r.id,
            spec.name,
            len(devices),
            [size for _, size in plan],
        )
        return r.id


def _locked(s: Session, rollout_id: int) -> Rollout:
    r = s.get(Rollout, rollout_id, with_for_update=True)
    if r is None:
        raise RolloutError("not_found", f"no rollout {rollout_id}")
    return r


def _transition(
    db: Database, rollout_id: int, actor: str, now: float | None, *, allowed: str, to: RolloutState
) -> str:
    now = time.time() if now is None else now
    with db.session() as s:
        r = _locked(s, rollout_id)
        if r.state != allowed:
            raise RolloutError("invalid_state", f"rollout {rollout_id} is {r.state}")
        r.state, r.updated_at = to.value, now
        record(s, r.id, now, "paused" if to is RolloutState.PAUSED else "resumed", actor=actor)
        return r.state


def pause_rollout(db: Database, rollout_id: int, actor: str, now: float | None = None) -> str:
    """Stop launching and completing waves; failures still halt and roll back."""
    return _transition(
        db, rollout_id, actor, now, allowed=RolloutState.RUNNING.value, to=RolloutState.PAUSED
    )


def resume_rollout(db: Database, rollout_id: int, actor: str, now: float | None = None) -> str:
    return _transition(
        db, rollout_id, actor, now, allowed=RolloutState.PAUSED.value, to=RolloutState.RUNNING
    )


def abort_rollout(
    db: Database, rollout_id: int, actor: str, *, rollback: bool = False, now: float | None = None
) -> str:
    """End the rollout; with `rollback`, every launched device gets its previous desired back."""
    now = time.time() if now is None else now
    with db.session() as s:
        r = _locked(s, rollout_id)
        if r.state not in ACTIVE_ROLLOUT_STATES:
            raise RolloutError("invalid_state", f"rollout {rollout_id} is {r.state}")
        r.state, r.reason = RolloutState.ABORTED.value, "aborted"
        r.finished_at = r.updated_at = now
        for wave in s.scalars(select(RolloutWave).where(RolloutWave.rollout_id == r.id)):
            if wave.state not in (WaveState.SUCCEEDED.value, WaveState.FAILED.value):
                wave.state, wave.finished_at = WaveState.ABORTED.value, now
        record(s, r.id, now, "aborted", actor=actor, rollback=rollback)
        if rollback:
            rows = s.scalars(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == r.id,
                    RolloutDevice.launched_at.is_not(None),
                    RolloutDevice.reverted.is_(False),
                )
            )
            revert(s, r.id, list(rows), now, actor=actor, wave=None)
        return r.state

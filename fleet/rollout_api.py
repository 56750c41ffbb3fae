"""Rollout routes under /api/rollouts (Bearer token) and the engine's background task.

`router` is included by `fleet.app`; its lifespan runs inside the app's (after the
database and the MQTT connection exist) and drives `RolloutEngine.tick` in a
worker thread every `rollouts.tick_s` seconds (fleet.yaml), or sooner when the
engine is woken (a device's end state, a probation end, an operator command). Tests may set
`app.state.rollout_tick_s` and `app.state.rollout_clock` before start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet.api import FleetState, StateDep, require_token
from fleet.db import Database
from fleet.rollout_commands import (
    RolloutError,
    abort_rollout,
    create_rollout,
    pause_rollout,
    resume_rollout,
)
from fleet.rollout_models import Rollout, RolloutDevice, RolloutHistory, RolloutWave
from fleet.rollout_spec import RolloutSpec
from fleet.rollouts import RolloutEngine

log = logging.getLogger(__name__)

COALESCE_S = 0.05
_STATUS = {"not_found": 404, "invalid_state": 409, "conflict": 409}


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class WaveOut(_Out):
    index: int = Field(description="Wave number, from 0.")
    label: str = Field(description="Cumulative size asked for (count or percentage).")
    size: int = Field(description="Devices in this wave.")
    state: str = Field(description="waiting, updating, probation, succeeded, failed, aborted.")
    probation_s: float = Field(description="Probation window.")
    started_at: float | None = Field(description="Unix time the wave was launched.")
    probation_until: float | None = Field(description="End of its probation window.")
    finished_at: float | None = Field(description="Unix time it succeeded, failed or stopped.")
    devices: dict[str, int] = Field(description="Devices per rollout state.")
    gate: dict[str, Any] | None = Field(description="Last quality-gate result.")


class RolloutOut(_Out):
    id: int = Field(description="Rollout id.")
    name: str = Field(description="Operator's label.")
    state: str = Field(description="running, paused, halted, completed, aborted.")
    reason: str | None = Field(description="Why it halted or stopped.")
    current_wave: int = Field(description="Index of the current wave (-1: not launched).")
    total_devices: int = Field(description="Devices targeted.")
    updated: int = Field(description="Devices that committed (passed probation).")
    failed: int = Field(description="Devices failed, rolled back or timed out.")
    desired: dict[str, Any] = Field(description="Artifact refs being rolled out.")
    created_by: str = Field(description="Token name or CLI user that started it.")
    created_at: float = Field(description="Unix time.")
    finished_at: float | None = Field(description="Unix time it ended.")


class RolloutDetailOut(RolloutOut):
    spec: dict[str, Any] = Field(description="The spec it was started with.")
    waves: list[WaveOut] = Field(description="Waves in order.")


class RolloutDeviceOut(_Out):
    device_id: str = Field(description="Device id.")
    wave: int | None = Field(description="Its wave (null: beyond the last wave).")
    state: str = Field(description="waiting, an OTA state, or timed_out.")
    state_since: float = Field(description="Unix time it entered that state.")
    launched_at: float | None = Field(description="Unix time its desired state was set.")
    error: str | None = Field(description="Last error reported or the timeout.")
    reverted: bool = Field(description="Rolled back to its previous desired state.")
    publish_pending: bool = Field(description="A desired state still waits to be published.")


class HistoryOut(_Out):
    id: int = Field(description="Monotonic entry id (use as `after`).")
    at: float = Field(description="Unix time.")
    kind: str = Field(description="created, wave_started, device_state, gate, halted, ...")
    wave: int | None = Field(description="Wave concerned.")
    device_id: str | None = Field(description="Device concerned.")
    actor: str = Field(description="engine, or the operator.")
    detail: dict[str, Any] = Field(description="Entry details.")


class AbortIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rollback: bool = Field(default=False, description="Give launched devices their old desired.")


# --------------------------------------------------------------------------- views
def _counts(s: Session, rollout_id: int) -> dict[int | None, dict[str, int]]:
    q = (
        select(RolloutDevice.wave, RolloutDevice.state, func.count())
        .where(RolloutDevice.rollout_id == rollout_id)
        .group_by(RolloutDevice.wave, RolloutDevice.state)
    )
    out: dict[int | None, dict[str, int]] = {}
    for wave, state, n in s.execute(q):
        out.setdefault(wave, {})[state] = int(n)
    return out


def rollout_out(s: Session, r: Rollout) -> RolloutOut:
    totals: dict[str, int] = {}
    for per_wave in _counts(s, r.id).values():
        for state, n in per_wave.items():
            totals[state] = totals.get(state, 0) + n
    failed = sum(totals.get(k, 0) for k in ("failed", "rolled_back", "timed_out"))
    return RolloutOut(
        id=r.id, name=r.name, state=r.state, reason=r.reason, current_wave=r.current_wave,
        total_devices=r.total_devices, updated=totals.get("committed", 0), failed=failed,
        desired=r.desired, created_by=r.created_by, created_at=r.created_at,
        finished_at=r.finished_at,
    )  # fmt: skip


def rollout_detail(db: Database, rollout_id: int) -> RolloutDetailOut:
    with db.session() as s:
        r = s.get(Rollout, rollout_id)
        if r is None:
            raise RolloutError("not_found", f"no rollout {rollout_id}")
        counts = _counts(s, r.id)
        waves = s.scalars(
            select(RolloutWave).where(RolloutWave.rollout_id == r.id).order_by(RolloutWave.index)
        )
        wave_out = [
            WaveOut(
                index=w.index, label=w.label, size=w.size, state=w.state,
                probation_s=w.probation_s, started_at=w.started_at,
                probation_until=w.probation_until, finished_at=w.finished_at,
                devices=counts.get(w.index, {}), gate=w.gate,
            )
            for w in waves
        ]  # fmt: skip
        return RolloutDetailOut(**rollout_out(s, r).model_dump(), spec=r.spec, waves=wave_out)


def list_rollouts(db: Database) -> list[RolloutOut]:
    with db.session() as s:
        return [rollout_out(s, r) for r in s.scalars(select(Rollout).order_by(Rollout.id.desc()))]


def rollout_devices(db: Database, rollout_id: int) -> list[RolloutDeviceOut]:
    with db.session() as s:
        rows = s.scalars(
            select(RolloutDevice)
            .where(RolloutDevice.rollout_id == rollout_id)
            .order_by(RolloutDevice.rank)
        )
        return [
            RolloutDeviceOut(
                device_id=d.device_id, wave=d.wave, state=d.state, state_since=d.state_since,
                launched_at=d.launched_at, error=d.error, reverted=d.reverted,
                publish_pending=d.publish_pending,
            )
            for d in rows
        ]  # fmt: skip


def rollout_history(
    db: Database, rollout_id: int, after: int = 0, limit: int = 1000
) -> list[HistoryOut]:
    """History entries with id > `after`, oldest first."""
    with db.session() as s:
        rows = s.scalars(
            select(RolloutHistory)
            .where(RolloutHistory.rollout_id == rollout_id, RolloutHistory.id > after)
            .order_by(RolloutHistory.id)
            .limit(limit)
        )
        return [
            HistoryOut(id=h.id, at=h.at, kind=h.kind, wave=h.wave, device_id=h.device_id,
                       actor=h.actor, detail=h.detail)
            for h in rows
        ]  # fmt: skip


# --------------------------------------------------------------------------- engine task
async def _run(engine: RolloutEngine, interval: float, stop: asyncio.Event) -> None:
    """Tick, then sleep until woken (end state, operator), the next probation end or
    `interval`. A wake waits `COALESCE_S` more so a burst of commits costs one tick."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(engine.tick)
        except Exception:
            log.exception("rollout tick failed")
        if stop.is_set():
            return
        if await asyncio.to_thread(engine.wait, interval):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), min(COALESCE_S, interval))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    st: FleetState = app.state.fleet
    clock: Callable[[], float] = getattr(app.state, "rollout_clock", time.time)
    interval = float(getattr(app.state, "rollout_tick_s", st.cfg.rollouts.tick_s))
    engine = RolloutEngine(st.db, st.sink, clock=clock)
    app.state.rollouts = engine
    mqtt_conn = getattr(app.state, "mqtt", None)
    if mqtt_conn is not None and hasattr(mqtt_conn, "add_reported_listener"):
        mqtt_conn.add_reported_listener(engine.notify_reported)
    stop = asyncio.Event()
    task = asyncio.create_task(_run(engine, interval, stop), name="rollout-engine")
    log.info("rollout engine started tick_s=%.1f", interval)
    try:
        yield
    finally:
        stop.set()
        engine.wake()
        await task


router = APIRouter(
    prefix="/api/rollouts",
    tags=["rollouts"],
    dependencies=[Depends(require_token)],
    lifespan=_lifespan,
)


ActorDep = Annotated[str, Depends(require_token)]


def _wake(request: Request) -> None:
    """Have the engine act on an operator command now rather than at its next tick."""
    engine = getattr(request.app.state, "rollouts", None)
    if isinstance(engine, RolloutEngine):
        engine.wake()


def _http(exc: RolloutError) -> HTTPException:
    return HTTPException(status_code=_STATUS.get(exc.code, 422), detail=str(exc))


@router.post("", response_model=RolloutDetailOut, status_code=201)
def start(spec: RolloutSpec, st: StateDep, actor: ActorDep, request: Request) -> RolloutDetailOut:
    """Start a rollout; the engine, woken at once, launches its first wave."""
    try:
        rid = create_rollout(st.db, spec, st.cfg.http.public_url, actor)
        _wake(request)
        return rollout_detail(st.db, rid)
    except RolloutError as exc:
        raise _http(exc) from exc


@router.get("", response_model=list[RolloutOut])
def index(st: StateDep) -> list[RolloutOut]:
    """Newest first."""
    return list_rollouts(st.db)


@router.get("/{rollout_id}", response_model=RolloutDetailOut)
def detail(rollout_id: int, st: StateDep) -> RolloutDetailOut:
    try:
        return rollout_detail(st.db, rollout_id)
    except RolloutError as exc:
        raise _http(exc) from exc


@router.get("/{rollout_id}/devices", response_model=list[RolloutDeviceOut])
def devices(rollout_id: int, st: StateDep) -> list[RolloutDeviceOut]:
    return rollout_devices(st.db, rollout_id)


@router.get("/{rollout_id}/history", response_model=list[HistoryOut])
def history(
    rollout_id: int,
    st: StateDep,
    after: Annotated[int, Query(ge=0, description="Only entries with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[HistoryOut]:
    """The append-only log, oldest first."""
    return rollout_history(st.db, rollout_id, after, limit)


@router.post("/{rollout_id}/pause", response_model=RolloutDetailOut)
def pause(rollout_id: int, st: StateDep, actor: ActorDep) -> RolloutDetailOut:
    """No new wave starts or completes; failures still halt and roll back."""
    try:
        pause_rollout(st.db, rollout_id, actor)
        return rollout_detail(st.db, rollout_id)
    except RolloutError as exc:
        raise _http(exc) from exc


@router.post("/{rollout_id}/resume", response_model=RolloutDetailOut)
def resume(rollout_id: int, st: StateDep, actor: ActorDep, request: Request) -> RolloutDetailOut:
    try:
        resume_rollout(st.db, rollout_id, actor)
        _wake(request)
        return rollout_detail(st.db, rollout_id)
    except RolloutError as exc:
        raise _http(exc) from exc


@router.post("/{rollout_id}/abort", response_model=RolloutDetailOut)
def abort(
    rollout_id: int,
    st: StateDep,
    actor: ActorDep,
    request: Request,
    body: AbortIn | None = None,
) -> RolloutDetailOut:
    """Stop for good; with `rollback`, launched devices get their previous desired state."""
    try:
        abort_rollout(st.db, rollout_id, actor, rollback=body.rollback if body else False)
        _wake(request)
        return rollout_detail(st.db, rollout_id)
    except RolloutError as exc:
        raise _http(exc) from exc

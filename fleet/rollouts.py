"""The rollout engine: a state machine over the database, advanced by `tick(now)`.

`fleet.rollout_commands.create_rollout` resolves the target and the artifacts, plans
the waves and stores everything; nothing is published then. Each
`RolloutEngine.tick(now)` (the app runs one every few seconds; tests call it with
their own clock):

1. per active rollout, in one transaction: launch the first wave; mirror each
   launched device's retained `reported` update position (only reports about this
   rollout's artifact count, see `fleet.rollout_state.TargetKeys`); turn a device
   that stays in an in-flight state past its deadline into `timed_out`; judge the
   current wave: halt and roll it back when failures exceed the threshold, start its
   probation window once every device is terminal and enough committed, run the
   quality gate during probation, and at its end launch the next wave or complete;
2. publish every pending `desired` (new or rolled back) through the `DesiredSink`,
   outside any transaction, and mark it done. A publish that fails stays pending
   and is retried next tick (an outbox), so a crash never loses a rollback.

How one device's report becomes its next state, and the desired state a launched
device is sent, are pure functions in `fleet.rollout_state`; this module is their
database and MQTT side. A device counts as updated only in `committed`. Every
change is appended to `rollout_history`. Operator commands (`fleet.rollout_commands`)
only write the database; the engine publishes what they leave pending.

A wave's desired states are published together and their PUBACKs awaited once
(`fleet.desired.publish_all`). Between ticks, `wait` returns early when ingest's
reports (`notify_reported`) show a failure in a wave or every device of an
updating wave ended, at the next probation end, or on `wake`, so waves advance
without waiting out a full tick.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.protocol import DesiredState
from fleet.db import Database
from fleet.desired import DesiredSink, publish_all
from fleet.models import Device, Reported
from fleet.rollout_gate import GateResult, Verdict, counters_from_health, evaluate_gate
from fleet.rollout_models import (
    ENGINE,
    Rollout,
    RolloutDevice,
    RolloutWave,
    ensure_tables,
    record,
    revert,
)
from fleet.rollout_spec import (
    ACTIVE_ROLLOUT_STATES,
    FAILURE_STATES,
    IN_FLIGHT,
    OTA_STATES,
    RolloutSpec,
    RolloutState,
    WaveState,
)
from fleet.rollout_spec import DeviceRolloutState as D
from fleet.rollout_state import (
    TargetKeys,
    canary_start,
    gate_windows,
    next_state,
    overlay_desired,
)

log = logging.getLogger(__name__)


@dataclass
class _Ctx:
    s: Session
    r: Rollout
    spec: RolloutSpec
    waves: list[RolloutWave]
    rows: list[RolloutDevice]
    now: float

    def members(self, wave: int) -> list[RolloutDevice]:
        return [row for row in self.rows if row.wave == wave]

    def devices(self, ids: Sequence[str]) -> dict[str, Device]:
        return {d.id: d for d in self.s.scalars(select(Device).where(Device.id.in_(ids)))}


class RolloutEngine:
    """Advances every active rollout on `tick` and publishes what is pending."""

    def __init__(
        self,
        db: Database,
        sink: DesiredSink | None,
        clock: Callable[[], float] = time.time,
        publish_timeout_s: float = 10.0,
    ) -> None:
        self.db, self.sink, self.clock = db, sink, clock
        self.publish_timeout_s = publish_timeout_s
        self.publish_failures = 0
        self._wake = threading.Event()
        self._inflight: dict[int, set[str]] = {}
        self._ended: set[str] = set()
        self._due: float | None = None
        ensure_tables(db)

    def tick(self, now: float | None = None) -> int:
        """One step of every active rollout; returns how many desired states were published."""
        now = self.clock() if now is None else now
        with self.db.session() as s:
            ids = s.scalars(select(Rollout.id).where(Rollout.state.in_(ACTIVE_ROLLOUT_STATES)))
            active = list(ids)
        self._ended = set()
        inflight: dict[int, set[str]] = {}
        due: list[float] = []
        for rollout_id in active:
            with self.db.session() as s:
                self._advance(s, rollout_id, now, inflight, due)
        for members in inflight.values():
            members.difference_update(self._ended)  # ended while this tick ran
        self._inflight, self._due = inflight, min(due, default=None)
        if any(not members for members in inflight.values()):
            self._wake.set()
        return self.flush(now)

    # ------------------------------------------------------------------ waking early
    def notify_reported(self, reported: Mapping[str, str | None]) -> None:
        """Ingest's hook: wake on a failure of a device in flight in a rollout (it may
        halt the wave), or once every in-flight device of a wave has ended."""
        ended = {d for d, st in reported.items() if st in OTA_STATES and st not in IN_FLIGHT}
        if not ended:
            return
        self._ended |= ended
        for ids in list(self._inflight.values()):
            hit = ids & ended
            if not hit:
                continue
            if any(reported[d] in FAILURE_STATES for d in hit):
                self._wake.set()
            ids.difference_update(hit)
            if not ids:
                self._wake.set()

    def wake(self) -> None:
        """Have the next `wait` return at once (an operator command, a stop)."""
        self._wake.set()

    def next_due(self) -> float | None:
        """The earliest probation end seen by the last tick (engine clock), if any."""
        return self._due

    def wait(self, interval: float) -> bool:
        """Block until woken, the next probation end, or `interval`; True if woken."""
        due = self._due
        timeout = interval if due is None else min(interval, max(0.0, due - self.clock()))
        woken = self._wake.wait(timeout)
        self._wake.clear()
        return woken

    def _advance(
        self,
        s: Session,
        rollout_id: int,
        now: float,
        inflight: dict[int, set[str]],
        due: list[float],
    ) -> None:
        r = s.get(Rollout, rollout_id, with_for_update=True)
        if r is None or r.state not in ACTIVE_ROLLOUT_STATES:
            return
        waves = list(
            s.scalars(
                select(RolloutWave)
                .where(RolloutWave.rollout_id == r.id)
                .order_by(RolloutWave.index)
            )
        )
        rows = list(
            s.scalars(
                select(RolloutDevice)
                .where(RolloutDevice.rollout_id == r.id)
                .order_by(RolloutDevice.rank)
            )
        )
        ctx = _Ctx(s, r, RolloutSpec.model_validate(r.spec), waves, rows, now)
        if r.current_wave < 0:
            if r.state == RolloutState.RUNNING.value:
                self._launch(ctx, waves[0])
        else:
            self._observe(ctx)
            self._judge(ctx, waves[r.current_wave])
        if r.state in ACTIVE_ROLLOUT_STATES and r.current_wave >= 0:
            wave = waves[r.current_wave]
            if wave.state == WaveState.UPDATING.value:
                inflight[r.id] = {
                    row.device_id
                    for row in rows
                    if row.wave == wave.index and row.state in IN_FLIGHT and not row.reverted
                }
            if wave.state == WaveState.PROBATION.value and wave.probation_until is not None:
                due.append(wave.probation_until)

    def _launch(self, ctx: _Ctx, wave: RolloutWave) -> None:
        members = ctx.members(wave.index)
        devs = ctx.devices([row.device_id for row in members])
        for row in members:
            dev = devs.get(row.device_id)
            prev = dict(dev.desired) if dev is not None and dev.desired else None
            row.previous_desired, row.target_desired = prev, overlay_desired(prev, ctx.r.desired)
            row.publish_pending, row.publish_desired = True, row.target_desired
            row.state, row.state_since, row.launched_at = D.PENDING.value, ctx.now, ctx.now
            counters = counters_from_health(dev.last_health if dev is not None else None)
            row.start_counters = counters.to_json() if counters else None
        wave.state, wave.started_at = WaveState.UPDATING.value, ctx.now
        ctx.r.current_wave, ctx.r.updated_at = wave.index, ctx.now
        record(
            ctx.s,
            ctx.r.id,
            ctx.now,
            "wave_started",
            wave=wave.index,
            devices=[row.device_id for row in members],
        )
        log.info(
            "rollout wave started rollout=%d wave=%d devices=%d", ctx.r.id, wave.index, len(members)
        )

    def _observe(self, ctx: _Ctx) -> None:
        launched = [row for row in ctx.rows if row.launched_at is not None and not row.reverted]
        keys = TargetKeys.of(ctx.r.desired)
        ids = [row.device_id for row in launched]
        reps = {
            rep.device_id: rep
            for rep in ctx.s.scalars(select(Reported).where(Reported.device_id.in_(ids)))
        }
        for row in launched:
            new, error = next_state(row, reps.get(row.device_id), keys, ctx.spec, ctx.now)
            if new is None:
                continue
            record(
                ctx.s,
                ctx.r.id,
                ctx.now,
                "device_state",
                wave=row.wave,
                device_id=row.device_id,
                error=error,
                **{"from": row.state, "to": new},
            )
            row.state, row.state_since, row.error = new, ctx.now, error or row.error
            if new == D.COMMITTED.value:
                dev = ctx.s.get(Device, row.device_id)
                counters = counters_from_health(dev.last_health if dev else None)
                row.commit_counters = counters.to_json() if counters else None

    def _judge(self, ctx: _Ctx, wave: RolloutWave) -> None:
        members = ctx.members(wave.index)
        failures = sum(row.state in FAILURE_STATES for row in members)
        committed = sum(row.state == D.COMMITTED.value for row in members)
        if failures > ctx.spec.failure_threshold * wave.size:
            self._halt(ctx, wave, "failure_threshold", failures=failures, size=wave.size)
            return
        if wave.state == WaveState.UPDATING.value:
            if any(row.state in IN_FLIGHT for row in members):
                return
            needed = math.ceil(ctx.spec.success_threshold * wave.size - 1e-9)
            if committed < needed:
                self._halt(ctx, wave, "success_threshold", committed=committed, needed=needed)
                return
            wave.state, wave.probation_until = WaveState.PROBATION.value, ctx.now + wave.probation_s
            record(
                ctx.s,
                ctx.r.id,
                ctx.now,
                "wave_probation",
                wave=wave.index,
                committed=committed,
                failures=failures,
                until=wave.probation_until,
            )
        if wave.state == WaveState.PROBATION.value:
            self._probation(ctx, wave, committed, failures)

    def _probation(self, ctx: _Ctx, wave: RolloutWave, committed: int, failures: int) -> None:
        gate = self._gate(ctx) if ctx.spec.quality_gate.enabled else None
        if gate is not None and gate.verdict is Verdict.FAIL:
            wave.gate = gate.to_json()
            record(ctx.s, ctx.r.id, ctx.now, "gate", wave=wave.index, **wave.gate)
            self._halt(ctx, wave, "quality_gate", failed_checks=gate.failed())
            return
        until = wave.probation_until if wave.probation_until is not None else ctx.now
        if ctx.now < until or ctx.r.state != RolloutState.RUNNING.value:
            return
        if gate is not None:
            wave.gate = gate.to_json()
            record(ctx.s, ctx.r.id, ctx.now, "gate", wave=wave.index, **wave.gate)
            if gate.verdict is Verdict.INCONCLUSIVE and ctx.spec.quality_gate.require_conclusive:
                self._halt(ctx, wave, "quality_gate_inconclusive")
                return
        wave.state, wave.finished_at = WaveState.SUCCEEDED.value, ctx.now
        record(
            ctx.s,
            ctx.r.id,
            ctx.now,
            "wave_succeeded",
            wave=wave.index,
            committed=committed,
            failures=failures,
        )
        if wave.index + 1 < len(ctx.waves):
            self._launch(ctx, ctx.waves[wave.index + 1])
            return
        ctx.r.state = RolloutState.COMPLETED.value
        ctx.r.finished_at = ctx.r.updated_at = ctx.now
        record(
            ctx.s,
            ctx.r.id,
            ctx.now,
            "completed",
            updated=sum(row.state == D.COMMITTED.value for row in ctx.rows),
        )
        log.info("rollout completed rollout=%d", ctx.r.id)

    def _gate(self, ctx: _Ctx) -> GateResult:
        canary = [row for row in ctx.rows if row.state == D.COMMITTED.value and not row.reverted]
        control = [row for row in ctx.rows if row.launched_at is None]
        devs = ctx.devices([row.device_id for row in (*canary, *control)])
        return evaluate_gate(
            gate_windows(canary, devs, canary_start),
            gate_windows(control, devs, lambda row: row.start_counters),
            ctx.spec.quality_gate,
        )

    def _halt(self, ctx: _Ctx, wave: RolloutWave, reason: str, **detail: Any) -> None:
        wave.state, wave.finished_at = WaveState.FAILED.value, ctx.now
        ctx.r.state, ctx.r.reason = RolloutState.HALTED.value, reason
        ctx.r.finished_at = ctx.r.updated_at = ctx.now
        record(ctx.s, ctx.r.id, ctx.now, "halted", wave=wave.index, reason=reason, **detail)
        launched = [row for row in ctx.members(wave.index) if row.launched_at is not None]
        revert(ctx.s, ctx.r.id, launched, ctx.now, actor=ENGINE, wave=wave.index)
        log.warning("rollout halted rollout=%d wave=%d reason=%s", ctx.r.id, wave.index, reason)

    # ------------------------------------------------------------------ publishing
    def flush(self, now: float | None = None) -> int:
        """Publish every pending desired state; what is not acknowledged stays pending."""
        if self.sink is None:
            return 0
        now = self.clock() if now is None else now
        with self.db.session() as s:
            todo = [
                (row.rollout_id, row.device_id, row.publish_desired)
                for row in s.scalars(
                    select(RolloutDevice).where(RolloutDevice.publish_pending.is_(True))
                )
            ]
        done = self._publish(self.sink, todo)
        if done:
            self._mark_published(done, now)
        return len(done)

    def _publish(
        self, sink: DesiredSink, todo: list[tuple[int, str, Any]]
    ) -> list[tuple[int, str, Any]]:
        """Publish `todo` (see `publish_all`); the entries acknowledged."""
        items = [
            (device_id, DesiredState.model_validate(p) if p is not None else None)
            for _, device_id, p in todo
        ]
        acked, error = publish_all(sink, items, self.publish_timeout_s)
        done = [entry for entry in todo if entry[1] in acked]
        if error is not None:
            missing = next(entry for entry in todo if entry[1] not in acked)
            self._publish_failed(missing[0], missing[1], len(todo) - len(done), error)
        return done

    def _publish_failed(self, rollout_id: int, device_id: str, pending: int, exc: object) -> None:
        self.publish_failures += 1
        log.warning(
            "rollout publish failed rollout=%d device=%s pending=%d error=%s",
            rollout_id, device_id, pending, exc,
        )  # fmt: skip

    def _mark_published(self, done: list[tuple[int, str, Any]], now: float) -> None:
        with self.db.session() as s:
            for rollout_id, device_id, payload in done:
                row = s.get(RolloutDevice, (rollout_id, device_id))
                if row is not None and row.publish_pending and row.publish_desired == payload:
                    row.publish_pending, row.published_at = False, now
                dev = s.get(Device, device_id)
                if dev is not None:
                    dev.desired = payload

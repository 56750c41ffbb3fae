"""The engine wakes early: on a device's end state, at a probation end, on command."""

from __future__ import annotations

from pathlib import Path

from fleet.config import FleetConfig
from tests.fleet.rollout_world import World

NO_GATE = {"enabled": False}


def test_the_engine_wakes_when_a_wave_has_ended_or_a_device_failed(tmp_path: Path) -> None:
    # given a rollout whose first wave (one canary) is launched
    w = World(tmp_path, 5)
    rid = w.start(waves=["1", "100%"], probation_s=30, quality_gate=NO_GATE)
    w.tick()
    (canary,) = w.members(rid, 0)
    other = next(d for d in w.ids if d != canary)
    # when ingest reports an in-flight state of the canary, or an end state of another
    w.engine.notify_reported({canary: "downloading", other: "committed"})
    # then the engine is not woken
    assert w.engine.wait(0) is False
    # when the canary reports committed (its wave has no device in flight left)
    w.engine.notify_reported({canary: "committed"})
    # then it is (once)
    assert w.engine.wait(5) is True
    assert w.engine.wait(0) is False
    # given the second wave of four launched
    w.commit(canary)
    w.tick(1)
    w.tick(30)
    wave1 = sorted(w.members(rid, 1))
    assert len(wave1) == 4
    # when three of them commit, one still in flight, nothing wakes the engine
    w.engine.notify_reported(dict.fromkeys(wave1[:3], "committed"))
    assert w.engine.wait(0) is False
    # but when one fails it is woken at once (the failure threshold may halt the wave)
    w.engine.notify_reported({wave1[3]: "failed"})
    assert w.engine.wait(0) is True


def test_the_engine_is_due_at_the_probation_end(tmp_path: Path) -> None:
    # given a canary that committed, so its wave is in a 30 s probation
    w = World(tmp_path, 5)
    rid = w.start(waves=["1", "100%"], probation_s=30, quality_gate=NO_GATE)
    w.tick()
    (canary,) = w.members(rid, 0)
    w.commit(canary)
    w.tick(1)
    until = w.waves(rid)[0].probation_until
    # then the engine knows when it is next due, and a wait past it returns at once
    assert until is not None and w.engine.next_due() == until
    w.engine.clock = lambda: until + 1
    assert w.engine.wait(60) is False
    # when that time comes the next wave is launched; nothing is due while it updates
    w.tick(30)
    assert w.rollout(rid).current_wave == 1 and w.engine.next_due() is None


def test_an_operator_wake_returns_the_wait_early(tmp_path: Path) -> None:
    w = World(tmp_path, 2)
    w.engine.wake()
    assert w.engine.wait(60) is True


def test_the_engine_tick_is_a_fleet_setting() -> None:
    cfg = FleetConfig.model_validate({"rollouts": {"tick_s": 0.5}})
    assert cfg.rollouts.tick_s == 0.5
    assert FleetConfig().rollouts.tick_s == 2.0

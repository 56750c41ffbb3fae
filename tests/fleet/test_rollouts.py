"""The rollout engine over a real SQLite database with a hand-moved clock (no sleeps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.rollout_commands import RolloutError, abort_rollout, pause_rollout, resume_rollout
from fleet.rollout_spec import WaveSpec, plan_waves
from tests.fleet.rollout_world import World

NO_GATE = {"enabled": False}


def _wave0_canary(w: World, rid: int) -> str:
    (canary,) = w.members(rid, 0)
    return canary


def test_wave_plan_is_cumulative_and_skips_empty_waves() -> None:
    sizes = [WaveSpec(size=s) for s in ("1", "10%", "50%", "100%")]
    assert plan_waves(40, sizes) == [(0, 1), (1, 3), (2, 16), (3, 20)]
    assert plan_waves(5, sizes) == [(0, 1), (2, 2), (3, 2)]
    assert plan_waves(3, [WaveSpec(size="10")]) == [(0, 3)]


def test_waves_advance_only_when_devices_commit(tmp_path: Path) -> None:
    # given 10 devices and a rollout in waves 1, 50 %, 100 % with 60 s probation
    w = World(tmp_path, 10)
    rid = w.start(waves=["1", "50%", "100%"], probation_s=60, quality_gate=NO_GATE)
    w.tick()
    canary = _wave0_canary(w, rid)
    assert [d for d, _ in w.sink.published] == [canary]
    assert w.sink.to(canary)[0]["config"]["sequence"] == w.v2.sequence  # type: ignore[index]
    # when the canary downloads, installs and sits in its own probation for a long time
    w.walk(canary, "downloading", "verifying", "staging", "validating", "activating", "probation")
    w.tick(1000)
    # then it is not counted as updated and no other device is touched
    assert w.states(rid, 0) == {canary: "probation"}
    assert len(w.sink.published) == 1 and w.rollout(rid).current_wave == 0
    # when it commits, the wave's probation window starts; the next wave waits for its end
    w.report(canary, "committed")
    w.tick(1)
    assert w.waves(rid)[0].state == "probation"
    w.tick(59)
    assert w.rollout(rid).current_wave == 0 and len(w.sink.published) == 1
    w.tick(2)
    wave1 = list(w.members(rid, 1))
    assert len(wave1) == 4 and {d for d, _ in w.sink.published[1:]} == set(wave1)
    # and so on to completion, every device committed
    w.commit(*wave1)
    w.tick(1)
    w.tick(61)
    wave2 = list(w.members(rid, 2))
    assert len(wave2) == 5
    w.commit(*wave2)
    w.tick(1)
    w.tick(61)
    r = w.rollout(rid)
    assert (r.state, r.reason) == ("completed", None)
    assert set(w.states(rid).values()) == {"committed"}
    assert [x.state for x in w.waves(rid)] == ["succeeded"] * 3


def test_a_failing_wave_halts_and_rolls_back_only_that_wave(tmp_path: Path) -> None:
    # given devices running config demo@1 and a rollout of demo@2 tolerating 20 % failures
    w = World(tmp_path, 10)
    old = w.desired_v1(*w.ids)
    rid = w.start(waves=["1", "50%", "100%"], probation_s=0, failure_threshold=0.2,
                  quality_gate=NO_GATE)  # fmt: skip
    w.tick()
    canary = _wave0_canary(w, rid)
    w.commit(canary)
    w.tick(1)
    w.tick(1)
    wave1 = list(w.members(rid, 1))
    # when one of the four devices of wave 1 fails: 25 % > 20 %
    w.walk(wave1[0], "downloading", "failed")
    w.report(wave1[1], "downloading")
    w.tick(1)
    # then the rollout halts and wave 1 gets its previous desired state back
    r = w.rollout(rid)
    assert (r.state, r.reason) == ("halted", "failure_threshold")
    assert [x.state for x in w.waves(rid)] == ["succeeded", "failed", "waiting"]
    for dev in wave1:
        assert w.sink.to(dev)[-1] == old and w.device_desired(dev) == old
    # the canary of the succeeded wave keeps the new version; wave 2 was never touched
    assert w.sink.to(canary)[-1]["config"]["version"] == "2"  # type: ignore[index]
    assert all(not w.sink.to(d) for d in w.members(rid, 2))
    kinds = [h.kind for h in w.history(rid)]
    assert kinds[-2:] == ["halted", "rollback"]
    # and a halted rollout stays halted
    w.commit(*wave1)
    w.tick(100)
    assert w.rollout(rid).state == "halted"


def test_a_device_without_previous_desired_is_cleared_on_rollback(tmp_path: Path) -> None:
    w = World(tmp_path, 1)
    rid = w.start(waves=["1"], quality_gate=NO_GATE)
    w.tick()
    w.walk("dev-00", "downloading", "rolled_back")
    w.tick(1)
    assert w.rollout(rid).reason == "failure_threshold"
    assert w.sink.to("dev-00") == [w.members(rid)["dev-00"].target_desired, None]


def test_a_stuck_device_times_out_and_halts_the_wave(tmp_path: Path) -> None:
    # given a canary whose download never finishes
    w = World(tmp_path, 4)
    rid = w.start(waves=["1", "100%"], deadlines_s={"downloading": 300}, quality_gate=NO_GATE)
    w.tick()
    canary = _wave0_canary(w, rid)
    w.report(canary, "downloading")
    w.tick(1)
    # when it stays there up to its deadline nothing happens; past it, it is timed_out
    w.tick(300)
    assert w.states(rid, 0) == {canary: "downloading"}
    w.tick(1)
    assert w.states(rid, 0) == {canary: "timed_out"}
    r = w.rollout(rid)
    assert (r.state, r.reason) == ("halted", "failure_threshold")
    entry = next(h for h in w.history(rid) if h.detail.get("to") == "timed_out")
    assert entry.device_id == canary and "downloading for more than 300s" in entry.detail["error"]


def test_a_device_that_never_reports_times_out_in_pending(tmp_path: Path) -> None:
    w = World(tmp_path, 2)
    rid = w.start(waves=["1", "100%"], deadlines_s={"pending": 60}, quality_gate=NO_GATE)
    w.tick()
    w.tick(61)
    assert list(w.states(rid, 0).values()) == ["timed_out"]


def test_reports_about_other_updates_or_from_before_launch_do_not_count(tmp_path: Path) -> None:
    # given a canary whose retained reported says `failed` for demo@2 from an earlier attempt
    w = World(tmp_path, 2)
    w.report("dev-00", "failed")
    w.report("dev-01", "failed")
    w.tick(5)
    rid = w.start(waves=["1", "100%"], quality_gate=NO_GATE)
    w.tick(1)
    canary = _wave0_canary(w, rid)
    w.tick(1)
    assert w.states(rid, 0) == {canary: "pending"}
    # when it reports `committed` for another artifact (demo@1's sequence)
    w.report(canary, "committed", sequence=w.v1.sequence)
    w.tick(1)
    # then it is still pending; only demo@2's commit counts
    assert w.states(rid, 0) == {canary: "pending"}
    w.report(canary, "committed")
    w.tick(1)
    assert w.states(rid, 0) == {canary: "committed"}


def test_pause_holds_the_next_wave_and_resume_releases_it(tmp_path: Path) -> None:
    w = World(tmp_path, 4)
    rid = w.start(waves=["1", "100%"], probation_s=10, quality_gate=NO_GATE)
    w.tick()
    w.commit(_wave0_canary(w, rid))
    w.tick(1)
    # when the operator pauses during the probation window
    assert pause_rollout(w.db, rid, "ops", now=w.t) == "paused"
    w.tick(100)
    # then the window passes without the next wave
    assert w.rollout(rid).current_wave == 0 and len(w.sink.published) == 1
    with pytest.raises(RolloutError) as err:
        pause_rollout(w.db, rid, "ops")
    assert err.value.code == "invalid_state"
    # when resumed, the next tick launches wave 1
    assert resume_rollout(w.db, rid, "ops", now=w.t) == "running"
    w.tick(1)
    assert w.rollout(rid).current_wave == 1 and len(w.sink.published) == 4
    kinds = [(h.kind, h.actor) for h in w.history(rid) if h.kind in ("paused", "resumed")]
    assert kinds == [("paused", "ops"), ("resumed", "ops")]


def test_abort_with_rollback_reverts_every_launched_device(tmp_path: Path) -> None:
    w = World(tmp_path, 4)
    old = w.desired_v1(*w.ids)
    rid = w.start(waves=["1", "50%", "100%"], probation_s=0, quality_gate=NO_GATE)
    w.tick()
    w.commit(_wave0_canary(w, rid))
    w.tick(1)
    w.tick(1)
    launched = [d for d, r in w.members(rid).items() if r.launched_at is not None]
    assert len(launched) == 2
    # when aborted with rollback
    assert abort_rollout(w.db, rid, "ops", rollback=True, now=w.t) == "aborted"
    w.tick(1)
    # then both launched devices get demo@1 back, the others nothing, and no wave starts again
    assert {d: w.sink.to(d)[-1] for d in launched} == dict.fromkeys(launched, old)
    assert sum(len(w.sink.to(d)) for d in w.ids if d not in launched) == 0
    assert [x.state for x in w.waves(rid)] == ["succeeded", "aborted", "aborted"]
    w.tick(100)
    assert w.rollout(rid).state == "aborted"
    with pytest.raises(RolloutError):
        resume_rollout(w.db, rid, "ops")


def test_abort_without_rollback_leaves_desired_states_alone(tmp_path: Path) -> None:
    w = World(tmp_path, 2)
    rid = w.start(waves=["1", "100%"], quality_gate=NO_GATE)
    w.tick()
    abort_rollout(w.db, rid, "ops", now=w.t)
    w.tick(1)
    assert len(w.sink.published) == 1
    assert w.history(rid)[-1].detail == {"rollback": False}


def _health_all(w: World, rate: float, devices: list[str], frames: float = 2000) -> None:
    for dev in devices:
        w.health(dev, frames=frames, detections=rate * frames, conf_sum=0.7 * rate * frames)


def test_quality_gate_halts_when_canary_detection_rate_collapses(tmp_path: Path) -> None:
    # given 10 devices detecting 2 objects per frame before the rollout
    w = World(tmp_path, 10)
    _health_all(w, 2.0, w.ids)
    rid = w.start(waves=["2", "100%"], probation_s=300)
    w.tick()
    canaries = list(w.members(rid, 0))
    w.commit(*canaries)
    w.tick(1)
    # when, after the update, the canaries detect 0.2 per frame while control keeps 2.0
    for dev in canaries:  # counters restarted with the agent
        w.health(dev, frames=1000, detections=200, conf_sum=140)
    control = [d for d in w.ids if d not in canaries]
    _health_all(w, 2.0, control, frames=3000)
    w.tick(10)
    # then the gate fails during probation, the rollout halts and the canaries roll back
    r = w.rollout(rid)
    assert (r.state, r.reason) == ("halted", "quality_gate")
    gate = w.waves(rid)[0].gate
    assert gate is not None and gate["verdict"] == "fail"
    rate = next(c for c in gate["checks"] if c["name"] == "detection_rate")
    assert (rate["verdict"], rate["canary"], rate["control"]) == ("fail", 0.2, 2.0)
    for dev in canaries:
        assert w.sink.to(dev)[-1] is None
    assert any(h.kind == "gate" for h in w.history(rid))


def test_quality_gate_passes_when_canaries_match_control(tmp_path: Path) -> None:
    w = World(tmp_path, 10)
    _health_all(w, 2.0, w.ids)
    rid = w.start(waves=["2", "100%"], probation_s=300)
    w.tick()
    canaries = list(w.members(rid, 0))
    w.commit(*canaries)
    w.tick(1)
    _health_all(w, 2.0, canaries, frames=1000)
    _health_all(w, 2.0, [d for d in w.ids if d not in canaries], frames=3000)
    w.tick(100)
    assert w.rollout(rid).state == "running" and w.waves(rid)[0].state == "probation"
    w.tick(200)
    waves = w.waves(rid)
    assert waves[0].state == "succeeded" and waves[0].gate is not None
    assert waves[0].gate["verdict"] == "pass" and w.rollout(rid).current_wave == 1


def test_history_keeps_the_whole_story_in_order(tmp_path: Path) -> None:
    w = World(tmp_path, 2)
    rid = w.start(waves=["1", "100%"], probation_s=0, quality_gate=NO_GATE)
    w.tick()
    first = _wave0_canary(w, rid)
    second = next(d for d in w.ids if d != first)
    w.walk(first, "downloading", "committed")
    w.tick(1)
    w.tick(1)
    w.commit(second)
    w.tick(1)
    w.tick(1)
    story = [(h.kind, h.wave, h.device_id, h.detail.get("to")) for h in w.history(rid)]
    assert story == [
        ("created", None, None, None),
        ("wave_started", 0, None, None),
        ("device_state", 0, first, "committed"),
        ("wave_probation", 0, None, None),
        ("wave_succeeded", 0, None, None),
        ("wave_started", 1, None, None),
        ("device_state", 1, second, "committed"),
        ("wave_probation", 1, None, None),
        ("wave_succeeded", 1, None, None),
        ("completed", None, None, None),
    ]
    assert w.history(rid)[0].detail["waves"] == [1, 1]


def test_target_selects_by_tags_and_ids_and_refuses_overlaps(tmp_path: Path) -> None:
    w = World(tmp_path, 6)
    # site-a devices are dev-00, dev-02, dev-04; dev-05 is named explicitly
    rid = w.start(target={"tags": ["site-a"], "device_ids": ["dev-05"]}, waves=["100%"])
    assert set(w.members(rid)) == {"dev-00", "dev-02", "dev-04", "dev-05"}
    with pytest.raises(RolloutError) as err:
        w.start(target={"device_ids": ["dev-04", "dev-01"]})
    assert err.value.code == "conflict"
    with pytest.raises(RolloutError) as err:
        w.start(target={"tags": ["nowhere"]})
    assert err.value.code == "no_devices"
    with pytest.raises(RolloutError) as err:
        w.start(target={"device_ids": ["dev-01"]}, config={"name": "demo", "version": "9"})
    assert err.value.code == "unknown_artifact"


def test_a_failed_publish_stays_pending_and_is_retried(tmp_path: Path) -> None:
    w = World(tmp_path, 1)
    rid = w.start(waves=["1"], quality_gate=NO_GATE)
    w.sink.down = True
    assert w.tick() == 0
    assert w.members(rid)["dev-00"].publish_pending
    assert w.engine.publish_failures == 1
    w.sink.down = False
    assert w.tick(1) == 1
    row = w.members(rid)["dev-00"]
    assert not row.publish_pending and w.device_desired("dev-00") == row.target_desired

"""FairRateController against a small simulation of cameras, the hub and inference.

The simulation: each camera decodes at its native fps and puts min(native, target) fps
into its mailbox; inference serves `capacity` frames/s round-robin across cameras, which is
a max-min fair split of the capacity; the rest of what was put is dropped. The controller
sees only the counters, as in the agent. The last test drives the real CameraWorker's
runtime target on the real video.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from agent.config.ladder import OverloadConfig
from agent.config.sources import CameraConfig
from agent.control.overload import (
    CameraSample,
    FairRateController,
    OverloadDecision,
    samples_from,
    water_fill,
)
from agent.ingest.camera import CameraWorker
from agent.ingest.mailbox import FrameHub

DT = 2.0
CFG = OverloadConfig()


@dataclass
class Sim:
    native: dict[str, float]
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # decoded, put, taken, dropped

    def __post_init__(self) -> None:
        self.counts = {cid: np.zeros(4) for cid in self.native}

    def step(self, targets: dict[str, float | None], capacity: float) -> None:
        ids = list(self.native)
        put = np.array([min(self.native[c], targets.get(c) or self.native[c]) for c in ids])
        served = water_fill(capacity, put)
        for cid, p, s in zip(ids, put, served, strict=True):
            self.counts[cid] += DT * np.array([self.native[cid], p, s, p - s])

    def samples(self) -> dict[str, CameraSample]:
        return {cid: CameraSample(*(int(v) for v in c)) for cid, c in self.counts.items()}


@dataclass
class Run:
    ctrl: FairRateController
    sim: Sim
    t: float = 0.0
    decisions: list[OverloadDecision] = field(default_factory=list)

    def ticks(
        self,
        n: int,
        capacity: Callable[[], float],
        measured: Callable[[float], float] = lambda c: c,
        scale: float = 1.0,
        fps_cap: float | None = None,
    ) -> OverloadDecision:
        for _ in range(n):
            targets = dict(self.decisions[-1].targets) if self.decisions else {}
            real = capacity()
            self.sim.step(targets, real)
            self.t += DT
            self.decisions.append(
                self.ctrl.update(self.t, self.sim.samples(), measured(real), scale, fps_cap)
            )
        return self.decisions[-1]


def start(native: dict[str, float], capacity: float = 20.0, cfg: OverloadConfig = CFG) -> Run:
    run = Run(FairRateController(cfg), Sim(native))
    run.decisions.append(run.ctrl.update(0.0, run.sim.samples(), capacity))
    return run


UNEQUAL = {"a": 25.0, "b": 10.0, "c": 5.0}


def test_water_fill_is_max_min_fair() -> None:
    # given demands 25, 10, 5 fps
    demands = np.array([25.0, 10.0, 5.0])
    # then 18 fps are split 6.5 / 6.5 / 5 (the small camera keeps all it needs)
    np.testing.assert_allclose(water_fill(18.0, demands), [6.5, 6.5, 5.0])
    np.testing.assert_allclose(water_fill(9.0, demands), [3.0, 3.0, 3.0])
    np.testing.assert_allclose(water_fill(100.0, demands), demands)
    # and a floor lifts everyone who wants at least that much
    np.testing.assert_allclose(water_fill(1.5, demands, floor=1.0), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(water_fill(5.0, np.array([0.0, 25.0]), floor=1.0), [0.0, 5.0])


def test_overload_gives_each_camera_a_fair_share() -> None:
    # given three cameras of 25, 10 and 5 fps (40 fps) and inference at 20 fps
    run = start(UNEQUAL)
    # when the controller runs for a while
    decision = run.ticks(15, capacity=lambda: 20.0)
    # then the 18 fps budget (90 % headroom) is water-filled: 6.5 / 6.5 / unthrottled
    assert decision.overloaded and decision.budget_fps == pytest.approx(18.0)
    assert dict(decision.targets) == {"a": 6.5, "b": 6.5, "c": None}
    # and every camera gets through at that rate with the drops gone
    assert decision.effective_fps["a"] == pytest.approx(6.5, abs=0.5)
    assert decision.effective_fps["c"] == pytest.approx(5.0, abs=0.5)
    assert decision.drop_fraction <= CFG.drop_low
    health = decision.to_health()
    assert health["cameras"]["a"]["target_fps"] == 6.5 and health["overloaded"] is True


def test_recovers_step_by_step_when_capacity_returns() -> None:
    # given a run throttled by a 20 fps capacity
    run = start(UNEQUAL)
    run.ticks(15, capacity=lambda: 20.0)
    first = len(run.decisions)
    # when capacity returns to 60 fps
    final = run.ticks(40, capacity=lambda: 60.0)
    # then the budget rises in several steps, never falling, until nobody is throttled
    budgets = [d.budget_fps for d in run.decisions[first:] if d.budget_fps is not None]
    assert len(set(budgets)) >= 4
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(budgets))
    assert budgets[1] <= budgets[0] * (1 + CFG.recover_step) + 1e-9
    assert not final.overloaded and set(final.targets.values()) == {None}


def test_floor_is_respected_when_capacity_is_tiny() -> None:
    # given ten 10 fps cameras and inference at only 5 fps
    run = start({f"cam{i}": 10.0 for i in range(10)})
    # when the controller settles
    decision = run.ticks(10, capacity=lambda: 5.0)
    # then nobody is starved: every camera keeps min_fps
    assert set(decision.targets.values()) == {CFG.min_fps}


def test_noisy_measurements_do_not_make_targets_oscillate() -> None:
    # given 40 fps of demand and a capacity around 20 fps measured with +/-10 % noise
    rng = random.Random(7)
    run = start(UNEQUAL)

    def noisy() -> float:
        return 20.0 * rng.uniform(0.9, 1.1)

    run.ticks(10, capacity=noisy)
    settled = len(run.decisions)
    # when it runs for 5 more minutes
    run.ticks(150, capacity=noisy)
    # then targets barely move: at most two changes, always near the fair share
    history = [dict(d.targets) for d in run.decisions[settled - 1 :]]
    changes = sum(1 for a, b in itertools.pairwise(history) if a != b)
    assert changes <= 2
    assert all(h["a"] is not None and 5.0 <= h["a"] <= 8.0 for h in history)
    assert all(d.overloaded for d in run.decisions[settled:])


def test_overestimated_capacity_is_corrected_by_drops_without_fast_sawtooth() -> None:
    # given a measured capacity of 40 fps while inference really serves 20
    run = start(UNEQUAL)
    # when the controller runs for 200 s
    run.ticks(100, capacity=lambda: 20.0, measured=lambda _c: 40.0)
    # then sustained drops cut the budget to what really got through (90 % of 20 fps)
    budgets = [d.budget_fps for d in run.decisions if d.budget_fps is not None]
    assert budgets[0] == pytest.approx(18.0)
    # and it probes upward at most once per hold_s, never by more than one step
    changes = sum(1 for b1, b2 in itertools.pairwise(budgets) if b1 != b2)
    assert changes <= 100 * DT / CFG.hold_s + 1
    assert max(budgets) <= 20.0 * (1 + CFG.recover_step)
    late = run.decisions[-30:]
    assert np.mean([d.drop_fraction for d in late]) < CFG.drop_high


def test_resource_scale_and_fps_cap_lower_targets_at_once() -> None:
    # given a settled, throttled run
    run = start(UNEQUAL)
    run.ticks(15, capacity=lambda: 20.0)
    # when the resource guard halves the load
    halved = run.ticks(1, capacity=lambda: 20.0, scale=0.5)
    # then the budget follows within one tick: 9 fps water-filled is 3 fps each
    assert halved.budget_fps == pytest.approx(9.0)
    assert dict(halved.targets) == {"a": 3.0, "b": 3.0, "c": 3.0}
    # and a CPU-fallback cap bounds every camera, throttled or not
    capped = run.ticks(1, capacity=lambda: 20.0, scale=0.5, fps_cap=2.5)
    assert dict(capped.targets) == {"a": 2.5, "b": 2.5, "c": 2.5}
    free = start(UNEQUAL, capacity=100.0).ticks(3, capacity=lambda: 100.0, fps_cap=8.0)
    assert not free.overloaded and dict(free.targets) == {"a": 8.0, "b": 8.0, "c": 8.0}


def test_engages_only_after_sustained_overload_and_releases_with_hysteresis() -> None:
    # given demand just under the usable capacity (40 fps vs 0.9 * 46)
    run = start(UNEQUAL, capacity=46.0)
    # then nothing is throttled
    assert not run.ticks(10, capacity=lambda: 46.0).overloaded
    # when capacity dips once, briefly, below demand
    assert not run.ticks(1, capacity=lambda: 30.0).overloaded
    # then one tick is not sustained overload
    assert all(t is None for t in run.decisions[-1].targets.values())
    # when the dip lasts, it engages; when capacity is back, it releases and stays released
    assert run.ticks(3, capacity=lambda: 30.0).overloaded
    run.ticks(30, capacity=lambda: 46.0)
    assert not run.decisions[-1].overloaded
    assert not any(d.overloaded for d in run.decisions[-10:])


def test_cameras_appearing_restarting_and_leaving_are_handled() -> None:
    ctrl = FairRateController(CFG)
    ctrl.update(0.0, {"a": CameraSample(100, 100, 100, 0)}, 20.0)
    # a camera whose counters restarted and a new one: no negative rates, no crash
    d = ctrl.update(2.0, {"a": CameraSample(10, 10, 10, 0), "b": CameraSample(5, 5, 5, 0)}, 20.0)
    assert d.demand_fps == {"a": 5.0}
    # a camera that left is forgotten
    d = ctrl.update(4.0, {"b": CameraSample(25, 25, 25, 0)}, 20.0)
    assert set(d.targets) == {"b"} and d.demand_fps == {"b": 10.0}


def test_samples_from_hub_and_camera_stats() -> None:
    hub = {"a": {"put": 9, "taken": 8, "dropped": 1, "pending": 0}}
    cams = {"a": {"frames_decoded": 20, "state": "streaming"}}
    assert samples_from(hub, cams, {"a": 5.0}) == {"a": CameraSample(20, 9, 8, 1, 5.0)}


# ---------------------------------------------------------------- the real camera setter


def test_camera_worker_target_fps_changes_rate_at_runtime(assets: Path) -> None:
    # given vtest.avi (10 fps) as an unpaced file camera on a "block" mailbox
    cfg = CameraConfig.model_validate(
        {"id": "cam1", "source": {"type": "file", "path": str(assets / "vtest.avi")}}
    )
    hub = FrameHub()
    hub.register("cam1", "block")
    worker = CameraWorker(cfg, hub)
    stop = threading.Event()

    def take(n: int) -> list[float]:
        times: list[float] = []
        while len(times) < n:
            taken = hub.take(timeout=5.0)
            assert taken is not None, "camera stopped delivering"
            times.append(taken.packet.stream_time)
        return times

    worker.start()
    try:
        # when the first frames flow unthrottled, then a 2 fps target is set
        full = take(10)
        worker.set_target_fps(2.0)
        throttled = take(12)[2:]  # a frame or two were already past the skipper
        worker.set_target_fps(None)
        released = take(12)[4:]
    finally:
        stop.set()
        worker.stop()
        hub.close()
    # then frames come every 0.1 s, then every 0.5 s, then every 0.1 s again
    assert np.allclose(np.diff(full), 0.1, atol=1e-3)
    assert np.allclose(np.diff(throttled), 0.5, atol=1e-3)
    assert np.allclose(np.diff(released), 0.1, atol=1e-3)
    assert worker.target_fps is None and worker.stats()["skipped"] > 0
    with pytest.raises(ValueError, match="positive"):
        worker.set_target_fps(0.0)

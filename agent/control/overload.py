"""Fair overload control: per-camera target fps when inference cannot keep up.

Pure logic, no threads and no clocks of its own: the agent feeds `FairRateController.update`
every `interval_s` with each camera's cumulative counters (frames decoded by the camera,
put into / taken from / dropped at its mailbox), the inference capacity it measured and the
resource guard's fps scale; it returns a target fps per camera (None: unthrottled), which
the agent applies with `CameraWorker.set_target_fps`.

The fps budget (headroom x capacity x scale) is split by max-min fairness (water-filling
over each camera's native rate): cameras that need less than an equal share keep all they
need, the rest share what is left equally, and nobody goes below `min_fps`. Decreases are
immediate (capacity fell, or drops persist), increases come in steps after calm ticks;
a hysteresis band and EWMA smoothing keep noisy measurements from moving anything.
See docs/degradation.md for the policy and a worked example.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config.ladder import OverloadConfig

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class CameraSample:
    """One camera's cumulative counters at one instant."""

    decoded: int
    """Frames decoded by the camera (CameraWorker.stats()['frames_decoded']): its native rate."""
    put: int
    taken: int
    dropped: int
    max_fps: float | None = None
    """The camera's configured max_fps: its demand never exceeds it."""


def samples_from(
    hub_stats: Mapping[str, Mapping[str, int]],
    camera_stats: Mapping[str, Mapping[str, Any]],
    max_fps: Mapping[str, float | None] | None = None,
) -> dict[str, CameraSample]:
    """CameraSamples from FrameHub.stats() and each CameraWorker.stats(), by camera id."""
    caps = max_fps or {}
    return {
        cid: CameraSample(
            decoded=int(camera_stats.get(cid, {}).get("frames_decoded", hub["put"])),
            put=hub["put"],
            taken=hub["taken"],
            dropped=hub["dropped"],
            max_fps=caps.get(cid),
        )
        for cid, hub in hub_stats.items()
    }


def water_fill(budget: float, demands: Floats, floor: float = 0.0) -> Floats:
    """Max-min fair split of `budget` over `demands`; each gets at least min(floor, demand).

    Cameras asking for less than the water level get their demand; the others get the level
    L that makes sum(min(demand, L)) == budget. Floors may push the total above the budget.
    """
    d = np.maximum(np.asarray(demands, dtype=np.float64), 0.0)
    if d.size == 0 or budget >= float(d.sum()):
        alloc = d.copy()
    else:
        s = np.sort(d, kind="stable")
        prefix = np.concatenate(([0.0], np.cumsum(s)[:-1]))
        levels = (budget - prefix) / (d.size - np.arange(d.size))
        level = max(float(levels[int(np.argmax(s >= levels))]), 0.0)
        alloc = np.minimum(d, level)
    out: Floats = np.maximum(alloc, np.minimum(d, floor))
    return out


@dataclass(frozen=True)
class OverloadDecision:
    """One tick's outcome: targets to apply and the numbers behind them (for health)."""

    targets: Mapping[str, float | None]
    """Target fps per camera; None: no runtime limit (only the camera's own max_fps)."""
    overloaded: bool
    budget_fps: float | None
    capacity_fps: float
    """Smoothed capacity times the resource scale (before headroom)."""
    demand_fps: Mapping[str, float] = field(default_factory=dict)
    effective_fps: Mapping[str, float] = field(default_factory=dict)
    """Frames per second each camera actually got through inference (taken)."""
    drop_fraction: float = 0.0

    def to_health(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 2)

        return {
            "overloaded": self.overloaded,
            "budget_fps": r(self.budget_fps),
            "capacity_fps": r(self.capacity_fps),
            "drop_fraction": round(self.drop_fraction, 4),
            "cameras": {
                cid: {
                    "target_fps": r(t),
                    "demand_fps": r(self.demand_fps.get(cid)),
                    "effective_fps": r(self.effective_fps.get(cid)),
                }
                for cid, t in self.targets.items()
            },
        }


@dataclass
class _Camera:
    last: CameraSample
    at: float
    demand: float | None = None
    target: float | None = None


@dataclass(frozen=True)
class _Tick:
    demands: dict[str, float]
    taken: dict[str, float]
    drop_fraction: float


class FairRateController:
    """Per-camera target fps under overload; see the module docstring. Not thread-safe."""

    def __init__(self, cfg: OverloadConfig) -> None:
        self._cfg = cfg
        self._cams: dict[str, _Camera] = {}
        self._capacity: float | None = None
        self._budget: float | None = None
        self._hold_until = float("-inf")
        self._over = self._high = self._low = 0

    @property
    def budget_fps(self) -> float | None:
        return self._budget

    def update(
        self,
        now: float,
        cameras: Mapping[str, CameraSample],
        capacity_fps: float,
        scale: float = 1.0,
        fps_cap: float | None = None,
    ) -> OverloadDecision:
        """Feed one tick; `now` in seconds (monotonic), `capacity_fps` the frames/s inference
        can process in total, `scale` (0..1) the resource guard's factor, `fps_cap` a
        per-camera ceiling (e.g. the ladder's CPU-fallback cap)."""
        alpha = self._cfg.smoothing
        prev = self._capacity
        self._capacity = capacity_fps if prev is None else prev + alpha * (capacity_fps - prev)
        capacity = self._capacity * min(max(scale, 0.0), 1.0)
        tick = self._measure(now, cameras)
        if tick is not None:
            self._budget = self._next_budget(now, capacity * self._cfg.headroom, tick)
            self._retarget(tick.demands, fps_cap)
        return OverloadDecision(
            targets={cid: cam.target for cid, cam in self._cams.items()},
            overloaded=self._budget is not None,
            budget_fps=self._budget,
            capacity_fps=capacity,
            demand_fps={} if tick is None else tick.demands,
            effective_fps={} if tick is None else tick.taken,
            drop_fraction=0.0 if tick is None else tick.drop_fraction,
        )

    def _measure(self, now: float, cameras: Mapping[str, CameraSample]) -> _Tick | None:
        """Rates since the last tick per camera; None while no camera has a previous sample."""
        for gone in self._cams.keys() - cameras.keys():
            del self._cams[gone]
        demands: dict[str, float] = {}
        taken: dict[str, float] = {}
        put = dropped = 0
        for cid, sample in cameras.items():
            cam = self._cams.get(cid)
            if cam is None or now <= cam.at:
                self._cams.setdefault(cid, _Camera(sample, now))
                continue
            last, dt = cam.last, now - cam.at
            if sample.decoded < last.decoded or sample.put < last.put:  # counters restarted
                last = CameraSample(0, 0, 0, 0)
            rate = (sample.decoded - last.decoded) / dt
            cam.demand = (
                rate
                if cam.demand is None
                else cam.demand + self._cfg.smoothing * (rate - cam.demand)
            )
            demands[cid] = min(cam.demand, sample.max_fps or float("inf"))
            taken[cid] = (sample.taken - last.taken) / dt
            put += sample.put - last.put
            dropped += sample.dropped - last.dropped
            cam.last, cam.at = sample, now
        if not demands:
            return None
        return _Tick(demands, taken, dropped / put if put > 0 else 0.0)

    def _next_budget(self, now: float, usable: float, tick: _Tick) -> float | None:
        """The total fps to hand out (None: no throttling), with hysteresis."""
        cfg = self._cfg
        demand = sum(tick.demands.values())
        throughput = sum(tick.taken.values())
        self._high = self._high + 1 if tick.drop_fraction >= cfg.drop_high else 0
        self._low = self._low + 1 if tick.drop_fraction <= cfg.drop_low else 0
        self._over = self._over + 1 if demand > usable * (1 + cfg.band) else 0
        floor_total = cfg.min_fps * len(tick.demands)
        budget = self._budget
        if self._high >= cfg.engage_ticks:  # drops persist: what got through is the truth
            self._high = 0
            self._hold_until = now + cfg.hold_s
            measured = throughput * cfg.headroom
            cut = measured if budget is None else min(budget, throughput) * cfg.headroom
            return max(min(cut, usable), floor_total)
        if budget is None:
            return usable if self._over >= cfg.engage_ticks else None
        if usable < budget * (1 - cfg.band):  # capacity fell (scale, ladder): follow at once
            budget = max(usable, floor_total)
        elif self._calm(now) and (usable > budget * (1 + cfg.band) or usable >= demand):
            self._low = 0  # room to grow after calm ticks: one step up
            budget = min(budget * (1 + cfg.recover_step), max(usable, budget))
        # release below the engage threshold (demand > usable * (1 + band)): no flapping
        return None if demand <= min(budget, usable) else budget

    def _calm(self, now: float) -> bool:
        return self._low >= self._cfg.recover_ticks and now >= self._hold_until

    def _retarget(self, demands: Mapping[str, float], fps_cap: float | None) -> None:
        ids = list(demands)
        want = np.array([demands[c] for c in ids], dtype=np.float64)
        budget = self._budget
        alloc = want if budget is None else water_fill(budget, want, self._cfg.min_fps)
        capped = alloc < want - 1e-6
        for cid, a, is_capped in zip(ids, alloc.tolist(), capped.tolist(), strict=True):
            target = round(a, 1) if is_capped else None
            if fps_cap is not None:
                target = fps_cap if target is None else min(target, fps_cap)
            self._cams[cid].target = self._settle(self._cams[cid].target, target)

    def _settle(self, old: float | None, new: float | None) -> float | None:
        """Keep the old target when the new one is within fps_step of it."""
        if old is not None and new is not None and abs(new - old) < self._cfg.fps_step:
            return old
        return new


__all__ = [
    "CameraSample",
    "FairRateController",
    "OverloadDecision",
    "samples_from",
    "water_fill",
]

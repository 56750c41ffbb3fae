"""The agent's periodic side-channel work, run by the supervisor thread.

- drift: each camera's drift monitor is checked; crossings become `drift-<code>` events;
- resources: the resource guard reads temperatures, memory and disk;
- overload: the fair rate controller sets live cameras' target fps from hub drops,
  the measured inference capacity, the guard's fps scale and the ladder's CPU cap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.config import AgentConfig
from agent.control.overload import FairRateController, OverloadDecision, samples_from
from agent.health.heap_trim import HeapTrimmer
from agent.health.resources import ResourceGuard, ResourceState
from agent.health.supervisor import PeriodicJob
from agent.health.system_events import SystemEvents
from agent.inference.ladder import DegradingBackend
from agent.ingest.camera import CameraWorker
from agent.ingest.mailbox import FrameHub
from agent.lane import CameraLane
from agent.workers import InferenceWorker

log = logging.getLogger(__name__)


class PeriodicWork:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        hub: FrameHub,
        lanes: Mapping[str, CameraLane],
        cameras: Sequence[CameraWorker],
        workers: Sequence[InferenceWorker],
        ladders: Callable[[], Mapping[str, DegradingBackend]],
        system_events: SystemEvents,
    ) -> None:
        """`cameras` are the live ones (rate control never touches unpaced files)."""
        self._cfg = cfg
        self._hub = hub
        self._lanes = lanes
        self._live = {c.camera_id: c for c in cameras}
        self._workers = workers
        self._ladders = ladders
        self._events = system_events
        self.resources = ResourceGuard(cfg.resources, disk_path=cfg.device.state_dir)
        self.resource_state: ResourceState | None = None
        self.rates = FairRateController(cfg.overload)
        self.overload: OverloadDecision | None = None
        self.heap = HeapTrimmer()

    def jobs(self) -> list[PeriodicJob]:
        jobs = [PeriodicJob("drift", 1.0, self.check_drift)]
        if self._cfg.overload.enabled and self._live:
            jobs.append(PeriodicJob("overload", self._cfg.overload.interval_s, self.control_rates))
        if self._cfg.resources.enabled:
            jobs.append(PeriodicJob("resources", self._cfg.resources.poll_interval_s, self.guard))
        trim_s = self._cfg.resources.malloc_trim_interval_s
        if trim_s > 0 and self.heap.available:
            jobs.append(PeriodicJob("heap-trim", trim_s, self.trim_heap))
        return jobs

    def health(self) -> dict[str, Any]:
        state, overload = self.resource_state, self.overload
        system = None if state is None else state.to_health()
        if system is not None and self.heap.runs:
            system["heap_trimmed_mib"] = round(self.heap.released_bytes / 2**20, 1)
        return {
            "system": system,
            "overload": None if overload is None else overload.to_health(),
        }

    def trim_heap(self) -> None:
        self.heap.trim()

    def check_drift(self) -> None:
        for cid, lane in self._lanes.items():
            if lane.drift is None:
                continue
            for change in lane.drift.check(time.monotonic()):
                attrs = {"score": round(change.score, 4), "threshold": change.threshold}
                rule = f"drift-{change.code.value}"
                if change.raised:
                    log.warning(
                        "drift raised camera=%s code=%s score=%.3f", cid, rule, change.score
                    )
                    self._events.raise_(cid, rule, "drift", attrs)
                else:
                    log.info("drift cleared camera=%s code=%s score=%.3f", cid, rule, change.score)
                    self._events.clear(cid, rule, "drift", attrs)

    def guard(self) -> None:
        state = self.resources.evaluate()
        previous = self.resource_state
        self.resource_state = state
        if previous is None or previous.action is not state.action:
            level = logging.INFO if state.action.value == "normal" else logging.WARNING
            log.log(
                level,
                "resource guard action=%s fps_scale=%.2f codes=%s",
                state.action.value,
                state.fps_scale,
                ",".join(c.value for c in state.codes) or "-",
            )

    def control_rates(self) -> None:
        """Fair per-camera target fps for live cameras from drops and inference capacity."""
        live = self._live
        hub = {cid: st for cid, st in self._hub.stats().items() if cid in live}
        stats = {cid: cam.stats() for cid, cam in live.items()}
        caps = {c.id: c.max_fps for c in self._cfg.cameras if c.id in live}
        mean_s = [w.inference_latency.mean_s() for w in self._workers]
        capacity = sum(1.0 / m for m in mean_s if m)
        fps_caps = [lad.mode.max_fps for lad in self._ladders().values() if lad.mode.max_fps]
        state = self.resource_state
        decision = self.rates.update(
            time.monotonic(),
            samples_from(hub, stats, caps),
            capacity_fps=capacity,
            scale=state.fps_scale if state is not None else 1.0,
            fps_cap=min(fps_caps) if fps_caps else None,
        )
        self.overload = decision
        for cid, cam in live.items():
            cam.set_target_fps(decision.targets.get(cid))

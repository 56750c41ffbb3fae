"""Composition root: builds the pipeline from a config, starts and stops it in order.

    cameras (ingest threads) -> FrameHub (one-slot mailboxes) -> inference workers
        -> CameraLane per camera (reorder, track, rules) -> EventDispatcher -> sinks

Start order: sinks, lanes, inference workers (after a warm-up inference), cameras.
Stop order: cameras, hub, workers, lanes (open episodes end), sinks.
Nothing else in the agent constructs these objects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import AgentConfig, CameraConfig
from agent.dispatch import EventDispatcher, build_sinks
from agent.inference.backend import Backend
from agent.inference.detector import Detector
from agent.inference.model import ModelFolder, load_model_folder
from agent.inference.onnxrt import create_backend
from agent.ingest.camera import CameraState, CameraWorker
from agent.ingest.mailbox import FrameHub
from agent.lane import CameraLane, SnapshotPolicy
from agent.outputs.base import EventSink
from agent.outputs.snapshot import SnapshotStore
from agent.rules.engine import RuleEngine
from agent.state import next_boot_id
from agent.tracking.bytetrack import ByteTracker
from agent.workers import InferenceWorker

log = logging.getLogger(__name__)

_TERMINAL = {CameraState.FINISHED, CameraState.FAILED}


@dataclass
class RunSummary:
    boot_id: int
    duration_s: float
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    sink_failures: int = 0

    @property
    def ok(self) -> bool:
        """False when every camera failed (nothing could be read)."""
        return not self.cameras or any(
            c["state"] != CameraState.FAILED.value for c in self.cameras.values()
        )


class Agent:
    """The running agent. `start()`, then `wait()` until done or `stop()`; then `close()`."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        max_frames: int | None = None,
        extra_sinks: list[EventSink] | None = None,
        backend_factory: Callable[[ModelFolder], Backend] | None = None,
    ) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self._started = 0.0
        self.boot_id = next_boot_id(cfg.device.state_dir)
        self.model = load_model_folder(cfg.model.path, verify_sha256=cfg.model.verify_sha256)
        make_backend = backend_factory or (lambda m: create_backend(cfg.backend, m))
        self.detectors = [
            Detector(
                self.model,
                make_backend(self.model),
                score_threshold=cfg.model.score_threshold,
                nms_threshold=cfg.model.nms_threshold,
            )
            for _ in range(cfg.backend.workers)
        ]
        self.dispatcher = EventDispatcher(build_sinks(cfg) + list(extra_sinks or []))
        self.hub = FrameHub()
        cameras = [c for c in cfg.cameras if c.enabled]
        self.lanes = {c.id: self._make_lane(c, max_frames) for c in cameras}
        self.camera_states: dict[str, CameraState] = {c.id: CameraState.CONNECTING for c in cameras}
        self.cameras = [self._make_camera(c) for c in cameras]
        self.workers = [
            InferenceWorker(i, hub=self.hub, detector=det, lanes=self.lanes, stop=self.stop_event)
            for i, det in enumerate(self.detectors)
        ]

    def _make_lane(self, cam: CameraConfig, max_frames: int | None) -> CameraLane:
        snaps = self.cfg.outputs.snapshots
        policy = None
        if snaps is not None:
            policy = SnapshotPolicy(SnapshotStore(snaps.dir), snaps.max_width, snaps.jpeg_quality)
        return CameraLane(
            cam.id,
            ByteTracker(self.cfg.tracker),
            RuleEngine(
                self.cfg.device.id, self.boot_id, cam.id, cam.rules, self.model.manifest.labels
            ),
            self.dispatcher.emit,
            snapshots=policy,
            max_frames=max_frames,
        )

    def _make_camera(self, cam: CameraConfig) -> CameraWorker:
        live = not (cam.source.type == "file" and not cam.source.pace)
        self.hub.register(cam.id, "latest" if live else "block")
        return CameraWorker(cam, self.hub, self.stop_event, on_state=self._on_camera_state)

    def _on_camera_state(self, camera_id: str, state: CameraState, reason: str) -> None:
        self.camera_states[camera_id] = state
        level = (
            logging.WARNING
            if state in {CameraState.FAILED, CameraState.RECONNECTING}
            else logging.INFO
        )
        log.log(level, "camera state camera=%s state=%s reason=%s", camera_id, state.value, reason)

    def start(self) -> None:
        self._started = time.monotonic()
        # READY semantics: the first inference must succeed before any camera opens.
        self.detectors[0].warm_up()
        for worker in self.workers:
            worker.start()
        for camera in self.cameras:
            camera.start()
        log.info(
            "agent started device=%s boot=%d cameras=%d workers=%d model=%s@%s",
            self.cfg.device.id,
            self.boot_id,
            len(self.cameras),
            len(self.workers),
            self.model.manifest.name,
            self.model.manifest.version,
        )

    def _lane_done(self, camera_id: str) -> bool:
        lane = self.lanes[camera_id]
        if lane.reached_max_frames:
            return True
        if self.camera_states.get(camera_id) not in _TERMINAL:
            return False
        stats = self.hub.stats()[camera_id]
        return stats["pending"] == 0 and lane.tickets_done >= stats["taken"]

    def finished(self) -> bool:
        return all(self._lane_done(cid) for cid in self.lanes)

    def wait(self, poll_s: float = 0.1) -> None:
        """Block until every camera is done (file ended, max frames, failed) or stop()."""
        while not self.stop_event.wait(poll_s):
            if self.finished():
                break

    def stop(self) -> None:
        self.stop_event.set()

    def close(self, join_timeout_s: float = 5.0) -> RunSummary:
        """Stop everything in order, end open episodes, close sinks; bounded in time."""
        self.stop_event.set()
        deadline = time.monotonic() + join_timeout_s
        for camera in self.cameras:
            camera.stop(timeout_s=max(0.1, deadline - time.monotonic()))
        self.hub.close()
        for worker in self.workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))
        for lane in self.lanes.values():
            lane.close()
        self.dispatcher.close()
        for det in self.detectors:
            det.close()
        return self.summary()

    def summary(self) -> RunSummary:
        hub_stats = self.hub.stats()
        out = RunSummary(
            boot_id=self.boot_id,
            duration_s=round(time.monotonic() - self._started, 3) if self._started else 0.0,
            events=self.dispatcher.emitted,
            sink_failures=self.dispatcher.failures,
        )
        for camera in self.cameras:
            cid = camera.camera_id
            lane = self.lanes[cid]
            cam_stats = camera.stats()
            out.cameras[cid] = {
                "state": self.camera_states[cid].value,
                "frames_decoded": cam_stats.get("frames_decoded", 0),
                "frames_processed": lane.frames_processed,
                "frames_dropped": hub_stats.get(cid, {}).get("dropped", 0),
                "frames_skipped": cam_stats.get("skipped", 0),
                "inference_failures": lane.frames_failed,
                "reconnects": cam_stats.get("reconnects", 0),
                "detections": lane.detections,
                "events": lane.events,
                "frame_latency_ms": lane.frame_latency.percentiles_ms(),
                "event_latency_ms": lane.event_latency.percentiles_ms(),
            }
        return out

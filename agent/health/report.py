"""Per-camera rows of the health report and of the run summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.ingest.camera import CameraState, CameraWorker
from agent.lane import CameraLane


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


def _camera_counts(
    camera: CameraWorker,
    lane: CameraLane,
    state: CameraState,
    hub: Mapping[str, Mapping[str, int]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rows both reports share, and the camera thread's own stats."""
    stats = camera.stats()
    return {
        "state": state.value,
        "frames_decoded": stats.get("frames_decoded", 0),
        "frames_processed": lane.frames_processed,
        "detections": lane.detections,
        "reconnects": stats.get("reconnects", 0),
    }, {**stats, "dropped": hub.get(camera.camera_id, {}).get("dropped", 0)}


def camera_health(
    camera: CameraWorker,
    lane: CameraLane,
    state: CameraState,
    hub: Mapping[str, Mapping[str, int]],
) -> dict[str, Any]:
    """One camera's section of the periodic health report."""
    row, stats = _camera_counts(camera, lane, state, hub)
    return {
        **row,
        "confidence_sum": round(lane.confidence_sum, 3),
        "drops": stats["dropped"],
        "skipped": stats.get("skipped", 0),
        "target_fps": stats.get("target_fps"),
        "fps_processed": round(lane.fps(), 2),
        "latency_ms": lane.frame_latency.percentiles_ms(),
        "drift": None if lane.drift is None else lane.drift.health(),
    }


def camera_summary(
    camera: CameraWorker,
    lane: CameraLane,
    state: CameraState,
    hub: Mapping[str, Mapping[str, int]],
) -> dict[str, Any]:
    """One camera's row of the end-of-run summary."""
    row, stats = _camera_counts(camera, lane, state, hub)
    return {
        **row,
        "frames_dropped": stats["dropped"],
        "frames_skipped": stats.get("skipped", 0),
        "inference_failures": lane.frames_failed,
        "events": lane.events,
        "frame_latency_ms": lane.frame_latency.percentiles_ms(),
        "event_latency_ms": lane.event_latency.percentiles_ms(),
    }

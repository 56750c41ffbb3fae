"""Value types that flow between the pipeline's stages.

ingest -> FramePacket -> inference -> Detections -> tracking -> Track -> rules -> Event

All frozen: a stage hands references on and never mutates what it was given.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import av

Box = tuple[float, float, float, float]
"""x1, y1, x2, y2 in source-image pixels."""


@dataclass(frozen=True, slots=True)
class FramePacket:
    """One decoded frame of one camera, as handed from ingest to inference.

    `image` is the decoder's own frame (no copy, no colour conversion yet): the
    inference worker converts and letterboxes it with swscale, and a snapshot is
    rendered from it only when an event needs one.
    """

    camera_id: str
    seq: int
    """Per-camera count of frames handed to inference (0, 1, ...), over the camera thread's
    whole life including reconnects; frames skipped for `max_fps` take no number."""
    stream_time: float
    """Seconds on the stream's own clock (pts * time_base), monotonic per connection."""
    wall_time: float
    """time.time() when the frame was decoded."""
    monotonic: float
    """time.monotonic() when the frame was decoded (for latency measurement)."""
    image: av.VideoFrame
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Detections:
    """Detector output for one frame, boxes already mapped back to source pixels."""

    boxes: npt.NDArray[np.float32]
    """(N, 4) x1, y1, x2, y2."""
    scores: npt.NDArray[np.float32]
    """(N,)"""
    class_ids: npt.NDArray[np.int32]
    """(N,)"""

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int32),
        )


@dataclass(frozen=True, slots=True)
class Track:
    """A confirmed track as seen in the current frame."""

    track_id: int
    box: Box
    score: float
    class_id: int
    frames_since_update: int = 0
    """0 when matched to a detection in this frame; >0 while coasting on its prediction."""


class EventPhase(str, enum.Enum):
    START = "start"
    END = "end"


@dataclass(frozen=True, slots=True)
class Event:
    """A rule's episode boundary. Raised once at start, once at end.

    `event_id` is deterministic: a function of (device, boot, camera, rule,
    subject, episode), identical for both phases of an episode, so consumers can
    pair start and end and deduplicate redeliveries.
    """

    event_id: str
    phase: EventPhase
    device_id: str
    camera_id: str
    rule_id: str
    rule_type: str
    label: str
    class_id: int
    track_id: int | None
    episode: int
    score: float
    box: Box | None
    started_at: float
    """Stream time (s) the episode started."""
    stream_time: float
    """Stream time (s) of the frame that raised this phase."""
    wall_time: float
    frame_seq: int
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "phase": self.phase.value,
            "device_id": self.device_id,
            "camera_id": self.camera_id,
            "rule_id": self.rule_id,
            "rule_type": self.rule_type,
            "label": self.label,
            "class_id": self.class_id,
            "track_id": self.track_id,
            "episode": self.episode,
            "score": round(self.score, 4),
            "box": None if self.box is None else [round(v, 1) for v in self.box],
            "started_at": round(self.started_at, 3),
            "stream_time": round(self.stream_time, 3),
            "wall_time": round(self.wall_time, 3),
            "frame_seq": self.frame_seq,
            "attributes": dict(self.attributes),
        }


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as handed to outputs: the event plus its snapshot (start only)."""

    event: Event
    snapshot_jpeg: bytes | None = None
    snapshot_path: str | None = None
    """Where the snapshot was stored on disk, when a snapshot folder is configured."""

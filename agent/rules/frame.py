"""Per-frame inputs of the rules, as arrays: one `TrackFrame` built once per update.

Every rule reads the same vectorised view of the frame's tracks (ids, boxes, scores,
classes, anchors) and applies its own class / score filter with a `TrackFilter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.rules.geometry import BoolArray, FloatArray, box_anchors
from agent.types import Box, Track

IntArray = npt.NDArray[np.int64]


class RuleError(Exception):
    """Base of the rule engine's errors."""


class RuleConfigError(RuleError):
    """A rule cannot be evaluated as configured (unknown class label, duplicate id)."""


@dataclass(frozen=True, slots=True)
class FrameClock:
    """When a frame happened: all rule timing uses `stream_time`."""

    stream_time: float
    wall_time: float
    frame_seq: int


@dataclass(frozen=True, slots=True)
class TrackFrame:
    """The tracks of one frame as parallel arrays (index i is tracks[i])."""

    tracks: tuple[Track, ...]
    ids: IntArray
    boxes: FloatArray
    """(N, 4) x1, y1, x2, y2 pixels."""
    scores: FloatArray
    class_ids: IntArray
    observed: BoolArray
    """Matched to a detection in this frame (frames_since_update == 0)."""
    anchors: FloatArray
    """(N, 2) bottom-centre of each box: the point zone and line tests use."""
    heights: FloatArray
    """Box heights in pixels (at least 1), the yardstick for distances."""
    first_seen: FloatArray
    """Stream time each track was first observed by the engine (-inf: before a reset)."""
    width: int
    height: int
    clock: FrameClock

    @staticmethod
    def build(
        tracks: Sequence[Track],
        width: int,
        height: int,
        clock: FrameClock,
        first_seen: Sequence[float] | None = None,
    ) -> TrackFrame:
        """Arrays over `tracks`; `first_seen` defaults to "now" for every track."""
        n = len(tracks)
        seen = [clock.stream_time] * n if first_seen is None else first_seen
        boxes = np.array([t.box for t in tracks], dtype=np.float64).reshape(n, 4)
        return TrackFrame(
            tracks=tuple(tracks),
            ids=np.fromiter((t.track_id for t in tracks), dtype=np.int64, count=n),
            boxes=boxes,
            scores=np.fromiter((t.score for t in tracks), dtype=np.float64, count=n),
            class_ids=np.fromiter((t.class_id for t in tracks), dtype=np.int64, count=n),
            observed=np.fromiter((t.frames_since_update == 0 for t in tracks), bool, count=n),
            anchors=box_anchors(boxes),
            heights=np.maximum(boxes[:, 3] - boxes[:, 1], 1.0),
            first_seen=np.asarray(seen, dtype=np.float64).reshape(n),
            width=width,
            height=height,
            clock=clock,
        )

    def box(self, i: int) -> Box:
        return self.tracks[i].box


class TrackFilter:
    """A rule's class and score filter, as one vectorised mask per frame."""

    def __init__(
        self, rule_id: str, classes: Sequence[str], min_score: float, labels: Sequence[str]
    ) -> None:
        unknown = sorted(set(classes) - set(labels))
        if unknown:
            raise RuleConfigError(
                f"rule {rule_id!r}: classes {unknown} are not labels of the model"
            )
        self.all_classes = not classes
        self.class_ids = np.array(
            sorted(i for i, name in enumerate(labels) if name in set(classes)), dtype=np.int64
        )
        self._wanted = np.zeros(len(labels) + 1, dtype=np.bool_)
        """Lookup by class id (cheaper than np.isin per frame); the last slot, False, is
        where ids outside the labels land."""
        self._wanted[self.class_ids] = True
        self.min_score = min_score

    def eligible(self, frame: TrackFrame) -> BoolArray:
        """Tracks this rule looks at: observed this frame, wanted class, score high enough."""
        mask = frame.observed & (frame.scores >= self.min_score)
        if not self.all_classes:
            ids, outside = frame.class_ids, self._wanted.size - 1
            mask &= self._wanted[np.where((ids >= 0) & (ids < outside), ids, outside)]
        return np.asarray(mask, dtype=np.bool_)

"""Line rule: a tracked object's anchor crossing the segment A->B in a given direction.

A crossing is instantaneous: it is one episode whose START and END are raised in the
same update, with the same event id, so consumers can always pair START with END.

Jitter along the line must not raise crossings. Each track has a *confirmed side*: the
side its anchor was last seen on by more than `hysteresis` box heights. A crossing is a
change of confirmed side whose path (from the last confirmed position to the new one)
meets the segment itself; positions inside the dead band change nothing. On top of
that, `cooldown_s` suppresses a second crossing by the same track in the same direction
within that time (a crossing back the other way still counts).
"""

from __future__ import annotations

import math

import numpy as np

from agent.config.rules import LineRuleConfig
from agent.rules.events import EpisodeRef, EventFactory, Observation, OpenEpisode, track_subject
from agent.rules.frame import FrameClock, TrackFilter, TrackFrame
from agent.rules.geometry import LEFT, FloatArray, segments_intersect, side_of_line, to_pixels
from agent.types import Event, EventPhase

LEFT_TO_RIGHT = "left_to_right"
RIGHT_TO_LEFT = "right_to_left"


class LineRule:
    """Evaluates one `LineRuleConfig` frame by frame."""

    rule_type = "line"

    def __init__(self, cfg: LineRuleConfig, factory: EventFactory) -> None:
        self.rule_id = cfg.id
        self._cfg = cfg
        self._factory = factory
        self._filter = TrackFilter(cfg.id, cfg.classes, cfg.min_score, factory.labels)
        self._sides: dict[int, tuple[int, float, float]] = {}
        """track id -> (confirmed side, anchor x, anchor y where it was confirmed)."""
        self._last_crossing: dict[tuple[int, str], float] = {}
        self._episode_counts: dict[int, int] = {}

    def _segment(self, frame: TrackFrame) -> FloatArray:
        return to_pixels(self._cfg.points, frame.width, frame.height)

    def update(self, frame: TrackFrame) -> list[Event]:
        idx = np.flatnonzero(self._filter.eligible(frame))
        if idx.size == 0:
            return []
        a, b = self._segment(frame)
        anchors = frame.anchors[idx]
        sides = side_of_line(anchors, a, b, margin=self._cfg.hysteresis * frame.heights[idx])
        prev = [self._sides.get(int(t), (0, math.nan, math.nan)) for t in frame.ids[idx]]
        prev_side = np.array([p[0] for p in prev], dtype=np.int8)
        prev_xy = np.array([(p[1], p[2]) for p in prev], dtype=np.float64).reshape(-1, 2)
        flipped = np.flatnonzero((sides != 0) & (prev_side != 0) & (sides != prev_side))
        crossed = flipped[segments_intersect(prev_xy[flipped], anchors[flipped], a, b)]
        for j in np.flatnonzero(sides):
            self._sides[int(frame.ids[idx[j]])] = (
                int(sides[j]),
                float(anchors[j, 0]),
                float(anchors[j, 1]),
            )
        events: list[Event] = []
        for j in crossed:
            direction = LEFT_TO_RIGHT if prev_side[j] == LEFT else RIGHT_TO_LEFT
            events.extend(self._crossing(frame, int(idx[j]), direction))
        return events

    def _crossing(self, frame: TrackFrame, i: int, direction: str) -> list[Event]:
        if self._cfg.direction not in ("any", direction):
            return []
        now = frame.clock.stream_time
        tid = int(frame.ids[i])
        last = self._last_crossing.get((tid, direction))
        if last is not None and now - last < self._cfg.cooldown_s:
            return []
        self._last_crossing[(tid, direction)] = now
        number = self._episode_counts.get(tid, 0) + 1
        self._episode_counts[tid] = number
        ref = EpisodeRef(self.rule_id, self.rule_type, track_subject(tid), number, now)
        obs = Observation(int(frame.class_ids[i]), float(frame.scores[i]), frame.box(i), tid)
        attrs = {"direction": direction}
        return [
            self._factory.make(EventPhase.START, ref, obs, frame.clock, attributes=attrs),
            self._factory.make(EventPhase.END, ref, obs, frame.clock, attributes=attrs),
        ]

    def close(self, clock: FrameClock) -> list[Event]:
        """Crossings are never open; forget sides (positions after a reset are unrelated)."""
        del clock
        self._sides.clear()
        self._last_crossing.clear()
        return []

    def forget(self, track_ids: set[int]) -> None:
        """Drop bookkeeping of tracks the tracker has long dropped."""
        for tid in track_ids:
            self._sides.pop(tid, None)
            self._episode_counts.pop(tid, None)
        for key in [k for k in self._last_crossing if k[0] in track_ids]:
            del self._last_crossing[key]

    def open_episodes(self) -> list[OpenEpisode]:
        return []

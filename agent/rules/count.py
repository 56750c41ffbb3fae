"""Count rule: at least `threshold` matching objects inside a polygon for a while.

The subject is the rule itself (track_id None). Only tracks observed in the frame are
counted (a coasting prediction is not evidence of presence); a short dip below the
threshold, such as one missed detection, is bridged by `grace_s`:

- the condition starts holding on the first frame with count >= threshold (outside
  the cooldown) and keeps holding through dips no longer than `grace_s`;
- START once it has held for `min_duration_s` and the current frame meets the threshold;
- END once the count has stayed below threshold for longer than `grace_s`, with the
  maximum count and the duration in its attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.config.rules import CountRuleConfig
from agent.rules.events import (
    RULE_SUBJECT,
    EpisodeRef,
    EventFactory,
    Observation,
    OpenEpisode,
    class_label,
)
from agent.rules.frame import FrameClock, TrackFilter, TrackFrame
from agent.rules.geometry import FloatArray, points_in_polygon, to_pixels
from agent.types import Event, EventPhase

EPS = 1e-6


@dataclass(slots=True)
class _Holding:
    """The condition currently holding (pending, or started when number > 0)."""

    since: float
    last_met: float
    max_count: int = 0
    score: float = 0.0
    track_ids: list[int] = field(default_factory=list)
    number: int = 0
    started_at: float = math.nan


class CountRule:
    """Evaluates one `CountRuleConfig` frame by frame."""

    rule_type = "count"

    def __init__(self, cfg: CountRuleConfig, factory: EventFactory) -> None:
        self.rule_id = cfg.id
        self._cfg = cfg
        self._factory = factory
        self._filter = TrackFilter(cfg.id, cfg.classes, cfg.min_score, factory.labels)
        ids = [factory.labels.index(c) for c in cfg.classes]
        self._class_id = ids[0] if len(ids) == 1 else -1
        self._label = class_label(cfg.classes)
        self._polygon_cache: tuple[tuple[int, int], FloatArray] | None = None
        self._holding: _Holding | None = None
        self._episodes = 0
        self._cooldown_until = -math.inf

    def _polygon(self, frame: TrackFrame) -> FloatArray:
        size = (frame.width, frame.height)
        if self._polygon_cache is None or self._polygon_cache[0] != size:
            self._polygon_cache = (size, to_pixels(self._cfg.polygon, *size))
        return self._polygon_cache[1]

    def update(self, frame: TrackFrame) -> list[Event]:
        now = frame.clock.stream_time
        inside = self._filter.eligible(frame) & points_in_polygon(
            frame.anchors, self._polygon(frame)
        )
        count = int(np.count_nonzero(inside))
        met = count >= self._cfg.threshold
        h = self._holding
        if h is None and met and now + EPS >= self._cooldown_until:
            h = self._holding = _Holding(since=now, last_met=now)
        if h is None:
            return []
        if met:
            h.last_met = now
            h.max_count = max(h.max_count, count)
            h.score = float(frame.scores[inside].mean())
            h.track_ids = [int(t) for t in frame.ids[inside]]
            if not h.number and now - h.since + EPS >= self._cfg.min_duration_s:
                return [self._start(h, frame.clock, count)]
        elif now - h.last_met > self._cfg.grace_s + EPS:
            self._holding = None
            if h.number:
                self._cooldown_until = now + self._cfg.cooldown_s
                return [self._end(h, frame.clock, "below_threshold")]
        return []

    def _start(self, h: _Holding, clock: FrameClock, count: int) -> Event:
        self._episodes += 1
        h.number = self._episodes
        h.started_at = clock.stream_time
        attrs = {
            "count": count,
            "threshold": self._cfg.threshold,
            "track_ids": list(h.track_ids),
            "since": h.since,
        }
        return self._event(EventPhase.START, h, clock, attrs)

    def _end(self, h: _Holding, clock: FrameClock, reason: str) -> Event:
        attrs: dict[str, Any] = {
            "max_count": h.max_count,
            "threshold": self._cfg.threshold,
            "duration_s": h.last_met - h.started_at,
            "since": h.since,
            "reason": reason,
        }
        return self._event(EventPhase.END, h, clock, attrs)

    def _event(
        self, phase: EventPhase, h: _Holding, clock: FrameClock, attrs: dict[str, Any]
    ) -> Event:
        ref = EpisodeRef(self.rule_id, self.rule_type, RULE_SUBJECT, h.number, h.started_at)
        obs = Observation(self._class_id, h.score, None, None)
        return self._factory.make(phase, ref, obs, clock, attributes=attrs, label=self._label)

    def close(self, clock: FrameClock) -> list[Event]:
        """END the episode if one is open, and forget time-based state."""
        h, self._holding = self._holding, None
        self._cooldown_until = -math.inf
        return [self._end(h, clock, "closed")] if h is not None and h.number else []

    def forget(self, track_ids: set[int]) -> None:
        """Nothing per track to forget."""
        del track_ids

    def open_episodes(self) -> list[OpenEpisode]:
        h = self._holding
        if h is None:
            return []
        return [OpenEpisode(self.rule_id, RULE_SUBJECT, h.number, None, h.since)]

"""Zone rule: presence of a tracked object inside a polygon, with dwell and grace.

One episode per subject (an object, named by the first track id that carried it):

- pending while inside for less than `min_dwell_s` (no event yet);
- START on the first frame the subject is observed inside with dwell >= `min_dwell_s`;
- END once it has not been observed inside for longer than `reentry_grace_s`
  (it walked out, or its track coasted / vanished). Dwell is in END's attributes.

A lost subject keeps its episode if, within the grace, either its own track is re-found
inside or a *new* track id of the same class first appears inside the zone within
`reassociate_radius` box heights of where the subject was last observed (the new track
inherits the episode, no new START). A track seen in the same frame as the lost one is a
different object and never inherits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.config.rules import ZoneRuleConfig
from agent.rules.events import (
    EpisodeRef,
    EventFactory,
    Observation,
    OpenEpisode,
    track_subject,
)
from agent.rules.frame import FrameClock, TrackFilter, TrackFrame
from agent.rules.geometry import BoolArray, FloatArray, points_in_polygon, to_pixels
from agent.types import Box, Event, EventPhase

EPS = 1e-6
"""Tolerance on stream-time comparisons (frame times are sums of float steps)."""


@dataclass(slots=True)
class _Episode:
    """Mutable state of one subject's episode (internal; snapshots are `OpenEpisode`)."""

    subject_id: int
    track_id: int
    class_id: int
    entered_at: float
    last_inside: float
    last_observed: float
    anchor: tuple[float, float]
    height: float
    box: Box
    score: float
    track_ids: list[int] = field(default_factory=list)
    number: int = 0
    started_at: float = math.nan

    def observe(self, frame: TrackFrame, i: int, inside: bool) -> None:
        now = frame.clock.stream_time
        self.last_observed = now
        if inside:
            self.last_inside = now
        self.anchor = (float(frame.anchors[i, 0]), float(frame.anchors[i, 1]))
        self.height = float(frame.heights[i])
        self.box = frame.box(i)
        self.score = float(frame.scores[i])


class ZoneRule:
    """Evaluates one `ZoneRuleConfig` frame by frame."""

    rule_type = "zone"

    def __init__(self, cfg: ZoneRuleConfig, factory: EventFactory) -> None:
        self.rule_id = cfg.id
        self._cfg = cfg
        self._factory = factory
        self._filter = TrackFilter(cfg.id, cfg.classes, cfg.min_score, factory.labels)
        self._polygon_cache: tuple[tuple[int, int], FloatArray] | None = None
        self._episodes: dict[int, _Episode] = {}
        """Open (pending or started) episodes by the track id currently carrying them."""
        self._absorbed: dict[int, int] = {}
        """Track ids that handed their episode to a newer track -> that episode's subject."""
        self._episode_counts: dict[int, int] = {}
        self._cooldown_until: dict[int, float] = {}

    def _polygon(self, frame: TrackFrame) -> FloatArray:
        size = (frame.width, frame.height)
        if self._polygon_cache is None or self._polygon_cache[0] != size:
            self._polygon_cache = (size, to_pixels(self._cfg.polygon, *size))
        return self._polygon_cache[1]

    def update(self, frame: TrackFrame) -> list[Event]:
        eligible = self._filter.eligible(frame)
        inside = eligible & points_in_polygon(frame.anchors, self._polygon(frame))
        claimed = self._observe_open(frame, eligible, inside)
        self._adopt(frame, inside & ~claimed, claimed)
        self._open_pending(frame, inside & ~claimed)
        return self._end_expired(frame.clock) + self._start_ready(frame)

    def close(self, clock: FrameClock) -> list[Event]:
        """END every started episode (reason "closed") and forget time-based state."""
        events = [
            self._end_event(ep, clock, "closed") for ep in self._episodes.values() if ep.number
        ]
        self._episodes.clear()
        self._absorbed.clear()
        self._cooldown_until.clear()
        return events

    def forget(self, track_ids: set[int]) -> None:
        """Drop bookkeeping of tracks the tracker has long dropped."""
        for tid in track_ids:
            self._episode_counts.pop(tid, None)
            self._cooldown_until.pop(tid, None)

    def open_episodes(self) -> list[OpenEpisode]:
        return [
            OpenEpisode(self.rule_id, track_subject(ep.subject_id), ep.number, tid, ep.entered_at)
            for tid, ep in self._episodes.items()
        ]

    def _observe_open(self, frame: TrackFrame, eligible: BoolArray, inside: BoolArray) -> BoolArray:
        """Refresh episodes whose track is observed; mark tracks that need no new episode."""
        claimed = np.zeros(len(frame.tracks), dtype=np.bool_)
        for i in np.flatnonzero(eligible):
            tid = int(frame.ids[i])
            ep = self._episodes.get(tid)
            if ep is not None:
                ep.observe(frame, int(i), bool(inside[i]))
                claimed[i] = True
            elif tid in self._absorbed:
                claimed[i] = True
        return claimed

    def _adopt(self, frame: TrackFrame, candidates: BoolArray, claimed: BoolArray) -> None:
        """Hand lost subjects' episodes to new tracks that appeared nearby (greedy nearest)."""
        now = frame.clock.stream_time
        radius = self._cfg.reassociate_radius
        grace = self._cfg.reentry_grace_s
        orphans = [
            ep
            for ep in self._episodes.values()
            if ep.last_observed < now and now - ep.last_inside <= grace + EPS
        ]
        cand = np.flatnonzero(candidates)
        if radius <= 0 or not orphans or cand.size == 0:
            return
        last = np.array([ep.anchor for ep in orphans], dtype=np.float64)
        limit = np.array([ep.height * radius for ep in orphans])
        seen = np.array([ep.last_observed for ep in orphans])
        cls = np.array([ep.class_id for ep in orphans])
        dist = np.linalg.norm(frame.anchors[cand][None, :, :] - last[:, None, :], axis=2)
        ok = (
            (dist <= limit[:, None])
            & (frame.first_seen[cand][None, :] > seen[:, None])
            & (frame.class_ids[cand][None, :] == cls[:, None])
        )
        dist = np.where(ok, dist, np.inf)
        while dist.size and np.isfinite(dist.min()):
            k, c = np.unravel_index(int(np.argmin(dist)), dist.shape)
            self._hand_over(orphans[k], frame, int(cand[c]))
            claimed[cand[c]] = True
            dist[k, :] = np.inf
            dist[:, c] = np.inf

    def _hand_over(self, ep: _Episode, frame: TrackFrame, i: int) -> None:
        new_id = int(frame.ids[i])
        del self._episodes[ep.track_id]
        self._absorbed[ep.track_id] = ep.subject_id
        ep.track_id = new_id
        ep.track_ids.append(new_id)
        ep.observe(frame, i, inside=True)
        self._episodes[new_id] = ep

    def _open_pending(self, frame: TrackFrame, unclaimed_inside: BoolArray) -> None:
        now = frame.clock.stream_time
        for i in np.flatnonzero(unclaimed_inside):
            tid = int(frame.ids[i])
            if self._cooldown_until.get(tid, -math.inf) > now + EPS:
                continue
            ep = _Episode(
                subject_id=tid,
                track_id=tid,
                class_id=int(frame.class_ids[i]),
                entered_at=now,
                last_inside=now,
                last_observed=now,
                anchor=(0.0, 0.0),
                height=1.0,
                box=frame.box(int(i)),
                score=0.0,
                track_ids=[tid],
            )
            ep.observe(frame, int(i), inside=True)
            self._episodes[tid] = ep

    def _start_ready(self, frame: TrackFrame) -> list[Event]:
        now = frame.clock.stream_time
        events = []
        for ep in self._episodes.values():
            if ep.number or ep.last_inside != now:
                continue
            if now - ep.entered_at + EPS < self._cfg.min_dwell_s:
                continue
            ep.number = self._episode_counts.get(ep.subject_id, 0) + 1
            self._episode_counts[ep.subject_id] = ep.number
            ep.started_at = now
            attrs = {"entered_at": ep.entered_at, "dwell_s": now - ep.entered_at}
            events.append(self._event(EventPhase.START, ep, frame.clock, attrs))
        return events

    def _end_expired(self, clock: FrameClock) -> list[Event]:
        now = clock.stream_time
        grace = self._cfg.reentry_grace_s
        expired = [ep for ep in self._episodes.values() if now - ep.last_inside > grace + EPS]
        events = []
        for ep in expired:
            del self._episodes[ep.track_id]
            for tid in ep.track_ids[:-1]:
                self._absorbed.pop(tid, None)
            if not ep.number:
                continue
            reason = "left" if ep.last_observed > ep.last_inside else "lost"
            events.append(self._end_event(ep, clock, reason))
            if self._cfg.cooldown_s > 0:
                for tid in ep.track_ids:
                    self._cooldown_until[tid] = now + self._cfg.cooldown_s
        return events

    def _end_event(self, ep: _Episode, clock: FrameClock, reason: str) -> Event:
        attrs: dict[str, Any] = {
            "entered_at": ep.entered_at,
            "left_at": ep.last_inside,
            "dwell_s": ep.last_inside - ep.entered_at,
            "track_ids": list(ep.track_ids),
            "reason": reason,
        }
        return self._event(EventPhase.END, ep, clock, attrs)

    def _event(
        self, phase: EventPhase, ep: _Episode, clock: FrameClock, attrs: dict[str, Any]
    ) -> Event:
        ref = EpisodeRef(
            self.rule_id, self.rule_type, track_subject(ep.subject_id), ep.number, ep.started_at
        )
        obs = Observation(ep.class_id, ep.score, ep.box, ep.subject_id)
        return self._factory.make(phase, ref, obs, clock, attributes=attrs)

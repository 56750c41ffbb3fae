"""The rule engine of one camera: tracks in, episode START/END events out.

Pure and synchronous: no I/O, no logging, no clocks of its own. All timing uses the
frames' `stream_time`, so a replayed video raises the same events with the same ids
whatever the machine's speed. Call `update` for every processed frame (also frames
without tracks: ends are noticed there) and `close` when the stream ends or its clock
restarts (a reconnect): every open episode gets its END. If `stream_time` ever goes
backwards, the engine closes the old timeline itself before evaluating the frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from agent.config.rules import CountRuleConfig, LineRuleConfig, RuleConfig, ZoneRuleConfig
from agent.rules.count import CountRule
from agent.rules.events import EventFactory, OpenEpisode
from agent.rules.frame import FrameClock, RuleConfigError, RuleError, TrackFrame
from agent.rules.line import LineRule
from agent.rules.zone import ZoneRule
from agent.types import Event, Track

PRUNE_EVERY_S = 10.0
"""How often (stream seconds) bookkeeping of long-gone tracks is dropped."""


class Rule(Protocol):
    """One configured rule's evaluator."""

    rule_id: str
    rule_type: str

    def update(self, frame: TrackFrame) -> list[Event]: ...

    def close(self, clock: FrameClock) -> list[Event]: ...

    def forget(self, track_ids: set[int]) -> None: ...

    def open_episodes(self) -> list[OpenEpisode]: ...


def build_rule(cfg: RuleConfig, factory: EventFactory) -> Rule:
    """The evaluator for one rule config."""
    if isinstance(cfg, ZoneRuleConfig):
        return ZoneRule(cfg, factory)
    if isinstance(cfg, LineRuleConfig):
        return LineRule(cfg, factory)
    if isinstance(cfg, CountRuleConfig):
        return CountRule(cfg, factory)
    raise RuleConfigError(f"unknown rule type: {type(cfg).__name__}")


class RuleEngine:
    """Evaluates a camera's rules over its tracks, frame by frame."""

    def __init__(
        self,
        device_id: str,
        boot_id: int,
        camera_id: str,
        rules: Sequence[RuleConfig],
        labels: Sequence[str],
        *,
        forget_after_s: float = 600.0,
    ) -> None:
        """`labels` are the model's class names (index = class id).

        `forget_after_s`: per-track bookkeeping (episode numbers, cooldowns, line sides)
        is dropped once a track id has been absent from `update` for this long; it must
        exceed the tracker's lost-track buffer so a returning id never restarts at
        episode 1 (which would repeat an event id).
        """
        ids = [r.id for r in rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise RuleConfigError(f"camera {camera_id!r}: duplicate rule ids {dupes}")
        self.camera_id = camera_id
        self._factory = EventFactory(device_id, boot_id, camera_id, tuple(labels))
        self._rules = [build_rule(r, self._factory) for r in rules]
        self._forget_after_s = forget_after_s
        self._first_seen: dict[int, float] = {}
        self._last_present: dict[int, float] = {}
        self._last_clock: FrameClock | None = None
        self._next_prune = -math.inf
        self._rebase_presence = False

    @property
    def rule_ids(self) -> list[str]:
        return [r.rule_id for r in self._rules]

    @property
    def known_tracks(self) -> int:
        """Track ids the engine still keeps bookkeeping for (a gauge for metrics)."""
        return len(self._last_present)

    def update(
        self,
        tracks: Sequence[Track],
        *,
        width: int,
        height: int,
        stream_time: float,
        wall_time: float,
        frame_seq: int,
    ) -> list[Event]:
        """Evaluate every rule on one frame's tracks; returns the phases raised by it."""
        if width <= 0 or height <= 0:
            raise RuleError(f"camera {self.camera_id!r}: bad frame size {width}x{height}")
        clock = FrameClock(stream_time, wall_time, frame_seq)
        events: list[Event] = []
        last = self._last_clock
        if last is not None and stream_time < last.stream_time:
            events += self._close(last)
        self._last_clock = clock
        frame = TrackFrame.build(tracks, width, height, clock, self._register(tracks, clock))
        for rule in self._rules:
            events += rule.update(frame)
        if stream_time >= self._next_prune:
            self._prune(stream_time)
        return events

    def close(self, *, stream_time: float, wall_time: float, frame_seq: int) -> list[Event]:
        """End every open episode (stream ended, reconnect, shutdown): one END each."""
        return self._close(FrameClock(stream_time, wall_time, frame_seq))

    def open_episodes(self) -> list[OpenEpisode]:
        """Snapshot of the episodes being followed (pending ones have episode 0)."""
        return [ep for rule in self._rules for ep in rule.open_episodes()]

    def _close(self, clock: FrameClock) -> list[Event]:
        events = [e for rule in self._rules for e in rule.close(clock)]
        # Times of the old timeline mean nothing in the next one: tracks seen so far
        # count as "seen before" (never new), and the clock starts afresh.
        self._first_seen = dict.fromkeys(self._first_seen, -math.inf)
        self._last_clock = None
        self._next_prune = -math.inf
        self._rebase_presence = True
        return events

    def _register(self, tracks: Sequence[Track], clock: FrameClock) -> list[float]:
        """Note when each track was first observed; returns first-seen times per track."""
        now = clock.stream_time
        seen = []
        if self._rebase_presence:
            self._last_present = dict.fromkeys(self._last_present, now)
            self._rebase_presence = False
        for t in tracks:
            self._last_present[t.track_id] = now
            first = self._first_seen.get(t.track_id)
            if first is None:
                first = now
                if t.frames_since_update == 0:
                    self._first_seen[t.track_id] = now
            seen.append(first)
        return seen

    def _prune(self, now: float) -> None:
        self._next_prune = now + PRUNE_EVERY_S
        gone = {tid for tid, t in self._last_present.items() if now - t > self._forget_after_s}
        if not gone:
            return
        for tid in gone:
            del self._last_present[tid]
            self._first_seen.pop(tid, None)
        for rule in self._rules:
            rule.forget(gone)

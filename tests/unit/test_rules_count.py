"""Count rule: threshold held for a while raises one episode for the rule as a whole."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config.rules import CountRuleConfig
from agent.rules import RuleEngine
from agent.types import Event, EventPhase, Track

W, H, FPS = 1000, 1000, 10.0
LABELS = ("person", "bicycle", "car", "dog")
AREA = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]


def people(n: int, *, x: float = 0.25, first_id: int = 1, cls: int = 0) -> list[Track]:
    return [
        Track(first_id + k, (x * W - 10, 100.0 + 50 * k, x * W + 10, 140.0 + 50 * k), 0.8, cls)
        for k in range(n)
    ]


class Scene:
    def __init__(self, **count: Any) -> None:
        cfg = CountRuleConfig.model_validate(
            {"id": "crowd", "type": "count", "polygon": AREA, "threshold": 3, **count}
        )
        self.engine = RuleEngine("dev-1", 7, "cam-1", [cfg], LABELS)
        self.seq = 0
        self.events: list[Event] = []

    def run(self, frames: int, tracks: list[Track]) -> None:
        for _ in range(frames):
            t = self.seq / FPS
            self.events += self.engine.update(
                tracks, width=W, height=H, stream_time=t, wall_time=t, frame_seq=self.seq
            )
            self.seq += 1


def test_threshold_held_for_min_duration_raises_one_episode() -> None:
    scene = Scene(min_duration_s=1.0, grace_s=1.0)
    # Below threshold, or outside the area: nothing
    scene.run(20, people(2) + people(3, x=0.75, first_id=10))
    assert scene.events == []
    # Three inside for 1 s -> START; a fourth joins; then the crowd thins out
    scene.run(20, people(3))
    scene.run(10, people(4))
    scene.run(30, people(1))
    start, end = scene.events
    assert (start.phase, end.phase) == (EventPhase.START, EventPhase.END)
    assert start.event_id == end.event_id
    assert start.stream_time == pytest.approx(3.0)
    assert start.attributes["count"] == 3 and start.attributes["track_ids"] == [1, 2, 3]
    assert start.track_id is None and start.box is None
    assert (start.label, start.class_id) == ("person", 0)
    assert end.attributes["max_count"] == 4
    assert end.attributes["duration_s"] == pytest.approx(4.9 - 3.0)
    assert end.stream_time == pytest.approx(4.9 + 1.1)


def test_short_holding_below_min_duration_raises_nothing() -> None:
    scene = Scene(min_duration_s=2.0, grace_s=0.5)
    scene.run(15, people(3))
    scene.run(10, people(2))
    scene.run(15, people(3))
    scene.run(10, [])
    assert scene.events == []


def test_dips_within_grace_neither_end_nor_restart() -> None:
    scene = Scene(grace_s=1.0)
    for _ in range(5):
        scene.run(10, people(3))
        scene.run(5, people(2))  # a missed detection for half a second
    scene.run(20, [])
    assert [e.phase for e in scene.events] == [EventPhase.START, EventPhase.END]


def test_cooldown_and_episode_numbers() -> None:
    scene = Scene(grace_s=0.0, cooldown_s=2.0)
    scene.run(5, people(3))
    scene.run(5, [])
    scene.run(10, people(3))  # within the cooldown: nothing
    assert [e.episode for e in scene.events] == [1, 1]
    scene.run(15, people(3))
    assert [(e.phase, e.episode) for e in scene.events][2:] == [(EventPhase.START, 2)]
    assert scene.events[2].event_id != scene.events[0].event_id


def test_class_filter_and_rule_label_for_several_classes() -> None:
    scene = Scene(classes=["car", "dog"])
    scene.run(3, people(3))
    assert scene.events == []
    scene.run(1, people(2, cls=2) + people(1, first_id=5, cls=3))
    [start] = scene.events
    assert (start.label, start.class_id) == ("car+dog", -1)

"""Line rule: directional crossings, one START+END pair each, immune to jitter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent.config.rules import LineRuleConfig
from agent.rules import RuleEngine
from agent.types import Event, EventPhase, Track

W, H, FPS = 1000, 1000, 10.0
LABELS = ("person", "bicycle", "car", "dog")
# Drawn bottom to top, so walking across the screen from left to right is left_to_right.
LINE = [(0.5, 0.9), (0.5, 0.1)]


def obj(tid: int, x: float, y: float = 0.5, *, score: float = 0.9, fsu: int = 0) -> Track:
    """A 40x100 px box whose feet stand at normalised (x, y)."""
    px, py = x * W, y * H
    return Track(tid, (px - 20, py - 100, px + 20, py), score, 0, fsu)


class Scene:
    def __init__(self, **line: Any) -> None:
        cfg = LineRuleConfig.model_validate({"id": "gate", "type": "line", "points": LINE, **line})
        self.engine = RuleEngine("dev-1", 7, "cam-1", [cfg], LABELS)
        self.seq = 0
        self.events: list[Event] = []

    def step(self, *tracks: Track) -> list[Event]:
        t = self.seq / FPS
        out = self.engine.update(
            tracks, width=W, height=H, stream_time=t, wall_time=t, frame_seq=self.seq
        )
        self.seq += 1
        self.events += out
        return out

    def walk(self, tid: int, xs: Any, y: float = 0.5) -> None:
        for x in xs:
            self.step(obj(tid, float(x), y))

    def crossings(self) -> list[tuple[int | None, str]]:
        starts = [e for e in self.events if e.phase is EventPhase.START]
        return [(e.track_id, e.attributes["direction"]) for e in starts]


def test_crossing_left_to_right_raises_start_and_end_together() -> None:
    scene = Scene()
    scene.walk(1, np.linspace(0.3, 0.7, 21))
    start, end = scene.events
    assert (start.phase, end.phase) == (EventPhase.START, EventPhase.END)
    assert start.event_id == end.event_id
    assert start.stream_time == end.stream_time == start.started_at == end.started_at
    assert start.attributes == end.attributes == {"direction": "left_to_right"}
    assert start.track_id == 1 and start.episode == 1 and start.rule_type == "line"
    assert start.box is not None and start.box[0] + 20 > W * 0.5


def test_crossing_right_to_left() -> None:
    scene = Scene()
    scene.walk(1, np.linspace(0.7, 0.3, 21))
    assert scene.crossings() == [(1, "right_to_left")]


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("any", [(1, "left_to_right"), (2, "right_to_left")]),
        ("left_to_right", [(1, "left_to_right")]),
        ("right_to_left", [(2, "right_to_left")]),
    ],
)
def test_direction_filter(direction: str, expected: list[tuple[int, str]]) -> None:
    scene = Scene(direction=direction)
    scene.walk(1, np.linspace(0.3, 0.7, 21))
    scene.walk(2, np.linspace(0.7, 0.3, 21))
    assert scene.crossings() == expected


def test_jitter_on_the_line_raises_nothing_and_a_real_crossing_once() -> None:
    # Hysteresis 0.1 of a 100 px box = 10 px dead band either side of the line.
    scene = Scene()
    scene.walk(1, [0.4, 0.45])
    scene.walk(1, [0.5 + 0.008 * (-1) ** k for k in range(40)])  # +-8 px around the line
    assert scene.events == []
    scene.walk(1, [0.52, 0.55, 0.6])
    assert scene.crossings() == [(1, "left_to_right")]


def test_without_hysteresis_the_same_jitter_would_double_count() -> None:
    scene = Scene(hysteresis=0)
    scene.walk(1, [0.4, 0.45])
    scene.walk(1, [0.5 + 0.008 * (-1) ** k for k in range(40)])
    assert len(scene.crossings()) > 10


def test_crossing_back_counts_but_same_direction_again_waits_for_cooldown() -> None:
    scene = Scene(cooldown_s=5.0)
    scene.walk(1, [0.4, 0.6])  # L->R at t=0.1
    scene.walk(1, [0.4])  # R->L: the other direction still counts
    scene.walk(1, [0.6, 0.4, 0.6])  # within 5 s: both suppressed
    assert scene.crossings() == [(1, "left_to_right"), (1, "right_to_left")]
    scene.walk(1, [0.4] * 50 + [0.6])  # after the cooldown
    assert scene.crossings()[-1] == (1, "left_to_right")
    assert [e.episode for e in scene.events[::2]] == [1, 2, 3]
    assert len({e.event_id for e in scene.events}) == 3


def test_passing_beside_the_segment_is_not_a_crossing() -> None:
    scene = Scene()
    scene.walk(1, np.linspace(0.3, 0.7, 21), y=0.95)  # below B... A's end at y=0.9
    assert scene.events == []


def test_coasting_across_the_line_counts_once_when_re_found() -> None:
    scene = Scene()
    scene.walk(1, [0.3, 0.4])
    scene.step(obj(1, 0.5, fsu=1))
    scene.step(obj(1, 0.55, fsu=2))
    scene.walk(1, [0.6, 0.65, 0.7])
    assert scene.crossings() == [(1, "left_to_right")]


def test_new_track_id_on_the_far_side_is_not_a_crossing() -> None:
    scene = Scene()
    scene.walk(1, [0.3, 0.4, 0.45])
    scene.walk(2, [0.6, 0.7])
    assert scene.events == []


def test_low_score_tracks_are_ignored() -> None:
    scene = Scene(min_score=0.5)
    for x in np.linspace(0.3, 0.7, 21):
        scene.step(obj(1, float(x), score=0.4))
    assert scene.events == []

"""Zone rule: one START and one END per visit, dwell, grace, re-association, filters."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config.rules import ZoneRuleConfig
from agent.rules import RuleEngine
from agent.types import Event, EventPhase, Track

W, H, FPS = 1000, 1000, 10.0
LABELS = ("person", "bicycle", "car", "dog")
ZONE = [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)]


def obj(tid: int, x: float, y: float, *, score: float = 0.9, cls: int = 0, fsu: int = 0) -> Track:
    """A 40x100 px box whose feet stand at normalised (x, y)."""
    px, py = x * W, y * H
    return Track(tid, (px - 20, py - 100, px + 20, py), score, cls, fsu)


class Scene:
    """Feeds one camera's engine frame by frame at FPS, collecting its events."""

    def __init__(self, **zone: Any) -> None:
        cfg = ZoneRuleConfig.model_validate({"id": "door", "type": "zone", "polygon": ZONE, **zone})
        self.engine = RuleEngine("dev-1", 7, "cam-1", [cfg], LABELS)
        self.seq = 0
        self.events: list[Event] = []

    @property
    def now(self) -> float:
        return self.seq / FPS

    def run(self, frames: int, *tracks: Track) -> list[Event]:
        out: list[Event] = []
        for _ in range(frames):
            t = self.now
            out += self.engine.update(
                tracks, width=W, height=H, stream_time=t, wall_time=1e9 + t, frame_seq=self.seq
            )
            self.seq += 1
        self.events += out
        return out

    def close(self) -> list[Event]:
        out = self.engine.close(stream_time=self.now, wall_time=1e9, frame_seq=self.seq)
        self.events += out
        return out

    def phases(self) -> list[tuple[EventPhase, int | None, int]]:
        return [(e.phase, e.track_id, e.episode) for e in self.events]


START, END = EventPhase.START, EventPhase.END


def test_subject_standing_in_zone_raises_one_start_and_one_end() -> None:
    # Given a zone with a 1 s grace
    scene = Scene(reentry_grace_s=1.0)
    # When a person stands inside for 5 s and then disappears for 3 s
    first = scene.run(1, obj(1, 0.5, 0.5))
    scene.run(49, obj(1, 0.5, 0.5))
    scene.run(30)
    # Then exactly one START (on the first frame) and one END share an id
    assert [e.phase for e in first] == [START]
    assert scene.phases() == [(START, 1, 1), (END, 1, 1)]
    start, end = scene.events
    assert start.event_id == end.event_id
    assert start.label == "person" and start.rule_type == "zone" and start.rule_id == "door"
    assert start.box == (480.0, 400.0, 520.0, 500.0) and start.score == pytest.approx(0.9)
    assert end.started_at == start.started_at == start.stream_time == 0.0
    # ... the END comes once the grace has passed, carrying the dwell time
    assert end.stream_time == pytest.approx(4.9 + 1.1)
    assert end.attributes["dwell_s"] == pytest.approx(4.9)
    assert end.attributes["reason"] == "lost"


def test_min_dwell_must_pass_before_start() -> None:
    scene = Scene(min_dwell_s=2.0, reentry_grace_s=0.5)
    # A passer-by inside for 1.5 s raises nothing
    scene.run(15, obj(1, 0.5, 0.5))
    scene.run(10)
    assert scene.events == []
    # A loiterer raises START once 2 s inside, dwell counted from entry
    scene.run(30, obj(2, 0.5, 0.5))
    [start] = scene.events
    assert start.track_id == 2
    assert start.stream_time == pytest.approx(2.5 + 2.0)
    assert start.attributes["entered_at"] == pytest.approx(2.5)
    assert start.attributes["dwell_s"] == pytest.approx(2.0)


def test_leaving_and_returning_after_grace_is_a_new_episode() -> None:
    scene = Scene(reentry_grace_s=1.0)
    scene.run(10, obj(1, 0.5, 0.5))
    scene.run(20, obj(1, 0.95, 0.5))  # walks out of the zone for 2 s
    scene.run(10, obj(1, 0.5, 0.5))
    scene.close()
    assert scene.phases() == [(START, 1, 1), (END, 1, 1), (START, 1, 2), (END, 1, 2)]
    ids = [e.event_id for e in scene.events]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert scene.events[1].attributes["reason"] == "left"


def test_stepping_out_within_grace_keeps_the_episode() -> None:
    scene = Scene(reentry_grace_s=1.0)
    scene.run(10, obj(1, 0.5, 0.5))
    scene.run(8, obj(1, 0.95, 0.5))
    scene.run(10, obj(1, 0.5, 0.5))
    scene.close()
    assert scene.phases() == [(START, 1, 1), (END, 1, 1)]
    assert scene.events[1].attributes["reason"] == "closed"


@pytest.mark.parametrize("missing", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("how", ["absent", "coasting"])
def test_briefly_missed_subject_keeps_its_episode(missing: int, how: str) -> None:
    # Given a person in the zone with a 1 s grace (10 frames)
    scene = Scene(reentry_grace_s=1.0)
    scene.run(10, obj(1, 0.5, 0.5))
    # When the detector misses them for a few frames (track gone or coasting)
    gap = () if how == "absent" else (obj(1, 0.52, 0.5, fsu=1),)
    scene.run(missing, *gap)
    scene.run(10, obj(1, 0.53, 0.5))
    scene.run(15)
    # Then it stays one episode
    assert scene.phases() == [(START, 1, 1), (END, 1, 1)]
    assert scene.events[1].attributes["dwell_s"] == pytest.approx((20 + missing - 1) / FPS)


def test_new_track_id_nearby_within_grace_inherits_the_episode() -> None:
    scene = Scene(reentry_grace_s=1.0)
    scene.run(10, obj(1, 0.5, 0.5))
    scene.run(3)  # occluded
    # the tracker re-finds the person under a new id, 50 px away (half a box height)
    scene.run(20, obj(2, 0.55, 0.5))
    scene.run(15)
    assert scene.phases() == [(START, 1, 1), (END, 1, 1)]
    end = scene.events[1]
    assert end.attributes["track_ids"] == [1, 2]
    assert end.attributes["dwell_s"] == pytest.approx(3.2)
    assert end.box == obj(2, 0.55, 0.5).box
    assert [(e.rule_id, e.track_id) for e in scene.engine.open_episodes()] == []


def test_new_track_while_old_one_still_coasts_inherits_and_old_id_stays_quiet() -> None:
    scene = Scene(reentry_grace_s=1.0)
    scene.run(10, obj(1, 0.5, 0.5))
    scene.run(5, obj(1, 0.5, 0.5, fsu=1), obj(2, 0.52, 0.52))  # id switch while 1 coasts
    scene.run(5, obj(1, 0.5, 0.5), obj(2, 0.52, 0.52))  # stale track 1 is re-found too
    scene.close()
    assert scene.phases() == [(START, 1, 1), (END, 1, 1)]
    assert scene.events[1].attributes["track_ids"] == [1, 2]


def test_new_track_far_away_is_a_new_subject() -> None:
    scene = Scene(reentry_grace_s=1.0)
    scene.run(10, obj(1, 0.3, 0.3))
    scene.run(2)
    scene.run(20, obj(2, 0.7, 0.7))  # 400 px away: 4 box heights > radius 1
    scene.close()
    assert sorted(scene.phases(), key=lambda p: (p[1] or 0, p[0].value)) == [
        (END, 1, 1),
        (START, 1, 1),
        (END, 2, 1),
        (START, 2, 1),
    ]
    assert len({e.event_id for e in scene.events}) == 2


def test_track_seen_alongside_the_lost_one_never_inherits() -> None:
    # Given person 1 inside by the zone's edge and person 2 just outside, side by side
    scene = Scene(reentry_grace_s=1.0)
    scene.run(10, obj(1, 0.25, 0.5), obj(2, 0.15, 0.5))
    # When 1 vanishes and 2 steps in where 1 was
    scene.run(1, obj(2, 0.18, 0.5))
    scene.run(20, obj(2, 0.24, 0.5))
    scene.close()
    # Then 2 is a different object: its own episode, 1's episode ends on its own
    assert scene.phases() == [(START, 1, 1), (START, 2, 1), (END, 1, 1), (END, 2, 1)]
    assert scene.events[2].attributes["track_ids"] == [1]


def test_reassociation_can_be_disabled() -> None:
    scene = Scene(reentry_grace_s=1.0, reassociate_radius=0)
    scene.run(10, obj(1, 0.5, 0.5))
    scene.run(2)
    scene.run(10, obj(2, 0.5, 0.5))
    scene.close()
    assert len([e for e in scene.events if e.phase is START]) == 2


def test_new_track_of_another_class_does_not_inherit() -> None:
    scene = Scene(reentry_grace_s=1.0, classes=[])
    scene.run(10, obj(1, 0.5, 0.5))
    scene.run(2)
    scene.run(10, obj(2, 0.5, 0.5, cls=3))
    scene.close()
    assert [(e.phase, e.label) for e in scene.events if e.phase is START] == [
        (START, "person"),
        (START, "dog"),
    ]


def test_class_filter_and_min_score() -> None:
    scene = Scene(classes=["person"], min_score=0.5)
    scene.run(10, obj(1, 0.5, 0.5, cls=3), obj(2, 0.5, 0.5, score=0.4))
    assert scene.events == []
    scene.run(1, obj(3, 0.5, 0.5, score=0.6))
    assert scene.phases() == [(START, 3, 1)]


def test_class_filter_ignores_class_ids_outside_the_labels() -> None:
    """A backend reporting an id the model has no label for (nms family) is never wanted."""
    scene = Scene(classes=["person", "dog"])
    scene.run(10, obj(1, 0.5, 0.5, cls=len(LABELS)), obj(2, 0.5, 0.5, cls=-1))
    assert scene.events == []
    scene.run(1, obj(3, 0.5, 0.5, cls=3))
    assert scene.phases() == [(START, 3, 1)]


def test_empty_class_list_means_every_class() -> None:
    scene = Scene(classes=[])
    scene.run(1, obj(1, 0.5, 0.5, cls=2))
    assert [e.label for e in scene.events] == ["car"]


def test_cooldown_blocks_a_new_episode_for_the_same_subject() -> None:
    scene = Scene(reentry_grace_s=0.5, cooldown_s=5.0)
    scene.run(10, obj(1, 0.5, 0.5))
    scene.run(10, obj(1, 0.95, 0.5))  # out: episode ends at t=1.5
    scene.run(20, obj(1, 0.5, 0.5))  # back at t=2.0, within cooldown: nothing new
    assert scene.phases() == [(START, 1, 1), (END, 1, 1)]
    end_time = scene.events[1].stream_time
    scene.run(40, obj(1, 0.5, 0.5))  # still inside when the cooldown expires
    assert scene.phases()[2] == (START, 1, 2)
    assert scene.events[2].stream_time == pytest.approx(end_time + 5.0)
    # ... while another person is not affected by the first one's cooldown
    other = Scene(reentry_grace_s=0.5, cooldown_s=5.0)
    other.run(10, obj(1, 0.5, 0.5))
    other.run(10)
    other.run(1, obj(9, 0.3, 0.3))
    assert other.phases() == [(START, 1, 1), (END, 1, 1), (START, 9, 1)]


def test_close_ends_started_episodes_only() -> None:
    scene = Scene(min_dwell_s=3.0)
    scene.run(40, obj(1, 0.5, 0.5))
    scene.run(1, obj(1, 0.5, 0.5), obj(2, 0.4, 0.4))  # 2 is still pending
    assert len(scene.engine.open_episodes()) == 2
    ends = scene.close()
    assert [(e.phase, e.track_id, e.attributes["reason"]) for e in ends] == [(END, 1, "closed")]
    assert scene.engine.open_episodes() == []
    assert scene.close() == []

"""ByteTracker on synthetic boxes: id stability, two-stage association, time-based loss."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from agent.config.inference import TrackerConfig
from agent.tracking.bytetrack import ByteTracker
from agent.tracking.geometry import iou_matrix, xyah_to_xyxy, xyxy_to_xyah
from agent.types import Detections, Track

PERSON, CAR = 0, 2
Row = tuple[float, float, float, float, float, int]
"""x1, y1, x2, y2, score, class id"""


def dets(*rows: Row) -> Detections:
    if not rows:
        return Detections.empty()
    arr = np.array(rows, dtype=np.float64)
    return Detections(
        boxes=arr[:, :4].astype(np.float32),
        scores=arr[:, 4].astype(np.float32),
        class_ids=arr[:, 5].astype(np.int32),
    )


def box_at(cx: float, cy: float, w: float = 40.0, h: float = 100.0) -> tuple[float, ...]:
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def person(cx: float, cy: float, score: float = 0.9, w: float = 40.0) -> Row:
    x1, y1, x2, y2 = box_at(cx, cy, w=w)
    return (x1, y1, x2, y2, score, PERSON)


def by_id(tracks: list[Track]) -> dict[int, Track]:
    return {t.track_id: t for t in tracks}


def centre_x(t: Track) -> float:
    return (t.box[0] + t.box[2]) / 2


# --- geometry ---------------------------------------------------------------------------


def test_iou_matrix_known_values() -> None:
    a = [[0, 0, 10, 10], [0, 0, 0, 0]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]
    expected = np.array([[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(iou_matrix(a, b), expected)
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_box_conversions_round_trip() -> None:
    boxes = np.array([[10.0, 20.0, 50.0, 120.0], [0.0, 0.0, 3.0, 1.5]])
    np.testing.assert_allclose(xyxy_to_xyah(boxes)[0], [30, 70, 0.4, 100])
    np.testing.assert_allclose(xyah_to_xyxy(xyxy_to_xyah(boxes)), boxes)


# --- lifecycle ---------------------------------------------------------------------------


def test_track_is_reported_after_min_hits_with_ids_from_one() -> None:
    # given a tracker that needs two matches
    tracker = ByteTracker(TrackerConfig(min_hits=2))
    # when two people are seen in two frames
    first = tracker.update(dets(person(100, 200), person(400, 200)), 0.0)
    second = tracker.update(dets(person(102, 200), person(398, 200)), 0.1)
    # then nothing is reported until confirmed, then ids 1 and 2 in detection order
    assert first == []
    assert [t.track_id for t in second] == [1, 2]
    assert centre_x(second[0]) == pytest.approx(102, abs=2)
    assert all(t.frames_since_update == 0 and t.class_id == PERSON for t in second)
    assert second[0].score == pytest.approx(0.9)


def test_min_hits_one_reports_immediately() -> None:
    tracker = ByteTracker(TrackerConfig(min_hits=1))
    assert [t.track_id for t in tracker.update(dets(person(100, 200)), 0.0)] == [1]


def test_unconfirmed_track_that_misses_a_frame_is_dropped() -> None:
    # given a single detection, then a gap
    tracker = ByteTracker(TrackerConfig(min_hits=2))
    tracker.update(dets(person(100, 200)), 0.0)
    tracker.update(dets(), 0.1)
    # when the object is seen again
    tracker.update(dets(person(100, 200)), 0.2)
    out = tracker.update(dets(person(100, 200)), 0.3)
    # then the first, never-confirmed track is gone: the object gets the next id
    assert [t.track_id for t in out] == [2]


def test_empty_detections_on_an_empty_tracker() -> None:
    tracker = ByteTracker(TrackerConfig())
    assert tracker.update(Detections.empty(), 0.0) == []
    assert tracker.update(Detections.empty(), 0.1) == []
    assert tracker.live_tracks == 0


# --- association -------------------------------------------------------------------------


def _walk(tracker: ByteTracker, frames: int, occlude: range = range(0)) -> list[list[Track]]:
    """A walks right, B walks left along nearly the same line; B hidden in `occlude`."""
    out = []
    for i in range(frames):
        a = person(100 + 15 * i, 200)
        b = person(400 - 15 * i, 206, score=0.8)
        out.append(tracker.update(dets(a) if i in occlude else dets(a, b), i / 10))
    return out


def test_crossing_objects_keep_their_ids() -> None:
    # given two people walking towards each other, overlapping in the middle frames
    frames = _walk(ByteTracker(TrackerConfig()), 21)
    # when they have passed each other
    first, last = by_id(frames[1]), by_id(frames[-1])
    # then the one that started on the left is still id 1 and is now on the right
    assert set(first) == set(last) == {1, 2}
    assert centre_x(first[1]) < centre_x(first[2])
    assert centre_x(last[1]) > centre_x(last[2])
    assert centre_x(last[1]) == pytest.approx(100 + 15 * 20, abs=3)
    assert all(set(by_id(f)) == {1, 2} for f in frames[1:])


def test_crossing_with_occlusion_keeps_ids() -> None:
    # given the walkers, with B hidden behind A for three frames around the crossing
    frames = _walk(ByteTracker(TrackerConfig()), 21, occlude=range(9, 12))
    # when B reappears on the other side
    last = by_id(frames[-1])
    # then B kept id 2 and was reported coasting while hidden
    assert set(last) == {1, 2}
    assert last[2].frames_since_update == 0
    assert centre_x(last[2]) == pytest.approx(400 - 15 * 20, abs=3)
    assert by_id(frames[10])[2].frames_since_update == 2


def test_detections_of_another_class_do_not_steal_a_track() -> None:
    # given a confirmed person track
    tracker = ByteTracker(TrackerConfig())
    tracker.update(dets(person(100, 200)), 0.0)
    tracker.update(dets(person(100, 200)), 0.1)
    # when a car is detected in exactly the same place instead
    x1, y1, x2, y2 = box_at(100, 200)
    tracker.update(dets((x1, y1, x2, y2, 0.9, CAR)), 0.2)
    out = by_id(tracker.update(dets((x1, y1, x2, y2, 0.9, CAR)), 0.3))
    # then the car has its own id and the person track is coasting, not relabelled
    assert out[1].class_id == PERSON
    assert out[1].frames_since_update == 2
    assert out[2].class_id == CAR
    assert out[2].frames_since_update == 0


def test_low_score_detections_keep_a_track_alive() -> None:
    # given a confirmed track, coast_s 0.3 s and max_lost_s 0.5 s
    cfg = TrackerConfig(coast_s=0.3, max_lost_s=0.5)
    tracker = ByteTracker(cfg)
    tracker.update(dets(person(100, 200)), 0.0)
    tracker.update(dets(person(104, 200)), 0.1)
    # when the object is only weakly detected (0.3, between low and high) for 1.5 s
    out = []
    for i in range(2, 17):
        out = tracker.update(dets(person(100 + 4 * i, 200, score=0.3)), i / 10)
        assert [(t.track_id, t.frames_since_update) for t in out] == [(1, 0)]
    # then it is still the same, freshly matched track carrying the weak score
    assert out[0].score == pytest.approx(0.3)
    assert centre_x(out[0]) == pytest.approx(164, abs=3)


def test_low_score_detections_never_start_tracks() -> None:
    tracker = ByteTracker(TrackerConfig())
    for i in range(10):
        out = tracker.update(dets(person(100, 200, score=0.45), person(300, 200, score=0.3)), i)
        assert out == []
    assert tracker.live_tracks == 0


def test_scores_between_high_and_new_track_match_but_do_not_start() -> None:
    # given a confirmed track
    tracker = ByteTracker(TrackerConfig(high_score=0.5, new_track_score=0.6))
    tracker.update(dets(person(100, 200)), 0.0)
    tracker.update(dets(person(100, 200)), 0.1)
    # when a 0.55 detection continues it and another 0.55 appears elsewhere
    tracker.update(dets(person(100, 200, 0.55), person(400, 200, 0.55)), 0.2)
    out = tracker.update(dets(person(100, 200, 0.55), person(400, 200, 0.55)), 0.3)
    # then only the existing track is reported
    assert [(t.track_id, t.frames_since_update) for t in out] == [(1, 0)]


def test_detections_below_low_score_are_ignored() -> None:
    tracker = ByteTracker(TrackerConfig(low_score=0.1, coast_s=0.0))
    tracker.update(dets(person(100, 200)), 0.0)
    tracker.update(dets(person(100, 200)), 0.1)
    assert tracker.update(dets(person(100, 200, score=0.05)), 0.2) == []


# --- time --------------------------------------------------------------------------------


def test_missed_object_within_max_lost_keeps_its_id_and_coasts_briefly() -> None:
    # given a confirmed track, coast_s 0.55 s, max_lost_s 3 s
    tracker = ByteTracker(TrackerConfig(coast_s=0.55, max_lost_s=3.0))
    tracker.update(dets(person(100, 200)), 0.0)
    tracker.update(dets(person(100, 200)), 0.1)
    # when the object is missed for 2 s (20 frames)
    during = [tracker.update(dets(), 0.1 + i / 10) for i in range(1, 21)]
    back = tracker.update(dets(person(101, 200)), 2.2)
    # then it coasted for 0.55 s, went quiet, and came back under the same id
    assert [[t.frames_since_update for t in f] for f in during[:5]] == [[1], [2], [3], [4], [5]]
    assert all(f == [] for f in during[5:])
    assert [(t.track_id, t.frames_since_update) for t in back] == [(1, 0)]


def test_object_gone_longer_than_max_lost_gets_a_new_id() -> None:
    # given a confirmed track and max_lost_s 1 s
    tracker = ByteTracker(TrackerConfig(max_lost_s=1.0, coast_s=0.5))
    tracker.update(dets(person(100, 200)), 0.0)
    tracker.update(dets(person(100, 200)), 0.1)
    # when the object is missed for 1.5 s, in a single frame gap
    assert tracker.update(dets(), 1.6) == []
    tracker.update(dets(person(100, 200)), 1.7)
    out = tracker.update(dets(person(100, 200)), 1.8)
    # then the old track was dropped by time and the object is a new track
    assert [t.track_id for t in out] == [2]
    assert tracker.live_tracks == 1


def test_loss_is_time_based_not_frame_based() -> None:
    # given a confirmed track and max_lost_s 1 s
    tracker = ByteTracker(TrackerConfig(max_lost_s=1.0))
    tracker.update(dets(person(100, 200)), 0.0)
    tracker.update(dets(person(100, 200)), 0.01)
    # when 50 empty frames arrive within 0.5 s (a fast source)
    for i in range(50):
        tracker.update(dets(), 0.01 + (i + 1) / 100)
    # then the track survives: 0.5 s is within max_lost_s however many frames it was
    assert [t.track_id for t in tracker.update(dets(person(100, 200)), 0.52)] == [1]


def test_irregular_dt_follows_a_fast_object() -> None:
    # given an object moving at 150 px/s, 30 px wide, seen at irregular times
    times = [0.0, 0.1, 0.2, 0.25, 0.6, 0.7, 1.1, 1.15, 1.5, 1.9, 2.0]
    tracker = ByteTracker(TrackerConfig())
    outs = [tracker.update(dets(person(100 + 150 * t, 200, w=30)), t) for t in times]
    # when a later frame comes after a 0.4 s gap without the object (30 px box, moved 60 px)
    coast = tracker.update(dets(), 2.4)
    # then one id throughout and the coasting prediction is where the object really is
    assert {t.track_id for f in outs for t in f} == {1}
    assert all(len(f) == 1 for f in outs[1:])
    assert centre_x(coast[0]) == pytest.approx(100 + 150 * 2.4, abs=8)


def test_time_going_backwards_is_treated_as_no_elapsed_time() -> None:
    tracker = ByteTracker(TrackerConfig())
    tracker.update(dets(person(100, 200)), 5.0)
    tracker.update(dets(person(100, 200)), 5.1)
    out = tracker.update(dets(person(100, 200)), 4.0)
    assert [(t.track_id, t.frames_since_update) for t in out] == [(1, 0)]


# --- determinism -------------------------------------------------------------------------


def _random_scene(seed: int, frames: int = 60) -> list[tuple[Detections, float]]:
    rng = np.random.default_rng(seed)
    start = rng.uniform(50, 600, (8, 2))
    vel = rng.normal(0, 60, (8, 2))
    seq, t = [], 0.0
    for _ in range(frames):
        t += float(rng.choice([0.1, 0.1, 0.2, 0.3]))
        rows = [
            person(float(c[0]), float(c[1]), score=float(rng.uniform(0.2, 1)))
            for k in range(8)
            if rng.random() > 0.15
            for c in [start[k] + vel[k] * t + rng.normal(0, 2, 2)]
        ]
        seq.append((dets(*rows), t))
    return seq


def test_same_sequence_gives_same_ids() -> None:
    # given a random scene with misses, weak boxes and irregular dt
    scene = _random_scene(seed=3)
    # when two trackers see it
    runs = []
    for _ in range(2):
        tracker = ByteTracker(TrackerConfig())
        runs.append([tracker.update(d, t) for d, t in scene])
    # then they report exactly the same tracks
    assert runs[0] == runs[1]
    assert len({t.track_id for f in runs[0] for t in f}) >= 8


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"low_score": 0.6, "high_score": 0.5},
        {"high_score": 0.7, "new_track_score": 0.6},
        {"coast_s": 4.0, "max_lost_s": 3.0},
    ],
)
def test_inconsistent_config_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        TrackerConfig.model_validate(kwargs)

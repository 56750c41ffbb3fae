"""ByteTrack-style multi-object tracker for one camera: Kalman prediction + two-stage IoU.

Per frame (`ByteTracker.update`):

1. predict every track to the frame's timestamp (dt-aware Kalman filter);
2. stage 1: high-score detections vs all confirmed tracks (tracked and lost) by IoU;
3. stage 2: low-score detections vs confirmed tracks still unmatched that were tracked
   in the previous frame (low-score boxes keep a track alive, never start one);
   tracks still unmatched become *lost*;
4. unconfirmed tracks vs the high-score detections left over; an unconfirmed track that
   misses a frame is dropped;
5. leftover high-score detections at or above `new_track_score` start new tracks;
6. lost tracks not seen for `max_lost_s` are removed, and a lost track that overlaps a
   matched one almost entirely is a duplicate: the younger of the two is deleted.

Matching is within the same class only. State lives in stacked numpy arrays (one row
per track), so prediction and correction are vectorised. No I/O, no logging.
See docs/tracking.md for parameters and the coasting behaviour.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from agent.config.inference import TrackerConfig
from agent.tracking.geometry import iou_matrix, xyah_to_xyxy, xyxy_to_xyah
from agent.tracking.kalman import KalmanFilter
from agent.types import Detections, Track

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

TENTATIVE, TRACKED, LOST = 0, 1, 2
"""Track states: not yet confirmed (fewer than min_hits), matched last frame, unmatched."""

DUPLICATE_IOU = 0.85
"""A lost track overlapping a tracked one at least this much is the same object."""

_INVALID = 1e6


class _TrackTable:
    """Every live track, one row each (columns as parallel arrays)."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.class_ids = np.zeros(0, np.int64)
        self.state = np.zeros(0, np.int8)
        self.hits = np.zeros(0, np.int64)
        self.misses = np.zeros(0, np.int64)
        """Frames (update calls) since the last match."""
        self.scores = np.zeros(0, np.float64)
        self.started = np.zeros(0, np.float64)
        self.last_seen = np.zeros(0, np.float64)
        self.mean = np.zeros((0, 8), np.float64)
        self.cov = np.zeros((0, 8, 8), np.float64)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        for name in _COLUMNS:
            setattr(self, name, getattr(self, name)[mask])

    def append(self, other: _TrackTable) -> None:
        for name in _COLUMNS:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))

    def boxes(self, idx: IntArray) -> FloatArray:
        return xyah_to_xyxy(self.mean[idx, :4])


_COLUMNS = (
    "ids",
    "class_ids",
    "state",
    "hits",
    "misses",
    "scores",
    "started",
    "last_seen",
    "mean",
    "cov",
)


def associate(
    track_boxes: FloatArray,
    track_classes: IntArray,
    det_boxes: FloatArray,
    det_classes: IntArray,
    min_iou: float,
) -> tuple[IntArray, IntArray, IntArray]:
    """Optimal same-class IoU matching.

    Returns (matches (K, 2) of [track row, det row], unmatched track rows, unmatched det
    rows), each in ascending order. Pairs of different classes, with IoU 0 or below
    `min_iou` never match.
    """
    n, m = track_boxes.shape[0], det_boxes.shape[0]
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64), np.arange(n), np.arange(m)
    iou = iou_matrix(track_boxes, det_boxes)
    valid = (iou >= min_iou) & (iou > 0.0) & (track_classes[:, None] == det_classes[None, :])
    cost = np.where(valid, 1.0 - iou, _INVALID)
    rows, cols = linear_sum_assignment(cost)
    ok = valid[rows, cols]
    matches = np.stack([rows[ok], cols[ok]], axis=1).astype(np.int64)
    return matches, _unmatched(n, matches[:, 0]), _unmatched(m, matches[:, 1])


def _unmatched(n: int, matched: IntArray) -> IntArray:
    """Ascending indices in range(n) not in `matched` (a mask: cheaper than setdiff1d)."""
    free = np.ones(n, dtype=np.bool_)
    free[matched] = False
    return np.flatnonzero(free)


class ByteTracker:
    """Tracks one camera's detections; ids are 1, 2, 3, ... for the tracker's life.

    `update` returns, sorted by id, every confirmed track matched in this frame
    (`frames_since_update == 0`, box = Kalman-corrected detection) plus every confirmed
    track unmatched for at most `cfg.coast_s` seconds (`frames_since_update > 0`, box =
    the prediction, score = its last detection score). Not thread-safe: one tracker per
    camera, fed in frame order.
    """

    def __init__(self, cfg: TrackerConfig, kalman: KalmanFilter | None = None) -> None:
        self.cfg = cfg
        self._kf = kalman if kalman is not None else KalmanFilter()
        self._tracks = _TrackTable()
        self._next_id = 1
        self._clock: float | None = None

    @property
    def live_tracks(self) -> int:
        """Tracks held in memory (tentative, tracked and lost)."""
        return len(self._tracks)

    def update(self, dets: Detections, timestamp: float) -> list[Track]:
        """Advance to `timestamp` (seconds) with this frame's detections."""
        now = self._advance(timestamp)
        boxes = np.asarray(dets.boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(dets.scores, np.float64).reshape(-1)
        classes = np.asarray(dets.class_ids, np.int64).reshape(-1)
        usable = scores >= self.cfg.low_score
        high = np.flatnonzero(usable & (scores >= self.cfg.high_score))
        low = np.flatnonzero(usable & (scores < self.cfg.high_score))

        matches, leftover_high = self._match(boxes, classes, high, low)
        self._correct(matches, boxes, scores, now)
        fresh = leftover_high[scores[leftover_high] >= self.cfg.new_track_score]
        self._spawn(boxes[fresh], scores[fresh], classes[fresh], now)
        self._prune(now)
        return self._report(now)

    def _advance(self, timestamp: float) -> float:
        """Move the clock (never backwards) and predict every track to it."""
        t = self._tracks
        dt = 0.0 if self._clock is None else max(0.0, timestamp - self._clock)
        self._clock = timestamp if self._clock is None else max(self._clock, timestamp)
        t.mean[t.state == LOST, 7] = 0.0  # ByteTrack: no height drift while unseen
        t.mean, t.cov = self._kf.predict(t.mean, t.cov, dt)
        t.misses += 1
        return self._clock

    def _match(
        self, boxes: FloatArray, classes: IntArray, high: IntArray, low: IntArray
    ) -> tuple[IntArray, IntArray]:
        """The three association stages; returns ([track row, det index] pairs, leftover high)."""
        t, cfg = self._tracks, self.cfg
        confirmed = np.flatnonzero(t.state != TENTATIVE)
        m1, rest, high_left = self._stage(confirmed, boxes, classes, high, cfg.match_iou)
        was_tracked = rest[t.state[rest] == TRACKED]
        m2, missed, _ = self._stage(was_tracked, boxes, classes, low, cfg.low_match_iou)
        t.state[missed] = LOST
        tentative = np.flatnonzero(t.state == TENTATIVE)
        m3, unconfirmed_missed, high_left = self._stage(
            tentative, boxes, classes, high_left, cfg.unconfirmed_match_iou
        )
        t.state[unconfirmed_missed] = LOST  # never confirmed: removed by _prune
        t.hits[unconfirmed_missed] = 0
        return np.concatenate([m1, m2, m3]), high_left

    def _stage(
        self,
        rows: IntArray,
        boxes: FloatArray,
        classes: IntArray,
        det_idx: IntArray,
        min_iou: float,
    ) -> tuple[IntArray, IntArray, IntArray]:
        """Match track rows to det indices: (pairs, unmatched rows, unmatched dets)."""
        t = self._tracks
        pairs, un_t, un_d = associate(
            t.boxes(rows), t.class_ids[rows], boxes[det_idx], classes[det_idx], min_iou
        )
        return (
            np.stack([rows[pairs[:, 0]], det_idx[pairs[:, 1]]], axis=1),
            rows[un_t],
            det_idx[un_d],
        )

    def _correct(
        self, matches: IntArray, boxes: FloatArray, scores: FloatArray, now: float
    ) -> None:
        """Kalman-correct matched tracks with their detections and bump their counters."""
        if matches.shape[0] == 0:
            return
        t = self._tracks
        rows, det = matches[:, 0], matches[:, 1]
        t.mean[rows], t.cov[rows] = self._kf.update(
            t.mean[rows], t.cov[rows], xyxy_to_xyah(boxes[det])
        )
        t.hits[rows] += 1
        t.misses[rows] = 0
        t.scores[rows] = scores[det]
        t.last_seen[rows] = now
        t.state[rows] = np.where(t.hits[rows] >= self.cfg.min_hits, TRACKED, TENTATIVE)

    def _spawn(self, boxes: FloatArray, scores: FloatArray, classes: IntArray, now: float) -> None:
        """Start a track for each of these detections, ids in detection order."""
        n = boxes.shape[0]
        if n == 0:
            return
        new = _TrackTable()
        new.ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        new.class_ids = classes.copy()
        confirmed = self.cfg.min_hits <= 1
        new.state = np.full(n, TRACKED if confirmed else TENTATIVE, np.int8)
        new.hits = np.ones(n, np.int64)
        new.misses = np.zeros(n, np.int64)
        new.scores = scores.copy()
        new.started = np.full(n, now)
        new.last_seen = np.full(n, now)
        new.mean, new.cov = self._kf.initiate(xyxy_to_xyah(boxes))
        self._tracks.append(new)

    def _prune(self, now: float) -> None:
        """Drop never-confirmed misses, expired lost tracks and lost duplicates."""
        t = self._tracks
        expired = (t.state == LOST) & ((t.hits == 0) | (now - t.last_seen > self.cfg.max_lost_s))
        t.keep(~expired)
        self._drop_duplicates()

    def _drop_duplicates(self) -> None:
        """A matched track and a lost one on the same object: keep the older (ByteTrack)."""
        t = self._tracks
        tracked = np.flatnonzero((t.state == TRACKED) & (t.misses == 0))
        lost = np.flatnonzero(t.state == LOST)
        if tracked.size == 0 or lost.size == 0:
            return
        iou = iou_matrix(t.boxes(tracked), t.boxes(lost))
        same = (iou >= DUPLICATE_IOU) & (t.class_ids[tracked][:, None] == t.class_ids[lost][None])
        ti, li = np.nonzero(same)
        if ti.size == 0:
            return
        a, b = tracked[ti], lost[li]
        a_older = t.started[a] <= t.started[b]
        drop = np.zeros(len(t), bool)
        drop[np.where(a_older, b, a)] = True
        t.keep(~drop)

    def _report(self, now: float) -> list[Track]:
        """Matched confirmed tracks plus confirmed ones coasting for at most coast_s."""
        t = self._tracks
        matched = (t.state == TRACKED) & (t.misses == 0)
        coasting = (t.state == LOST) & (t.hits >= self.cfg.min_hits)
        coasting &= (now - t.last_seen <= self.cfg.coast_s) & (self.cfg.coast_s > 0)
        rows = np.flatnonzero(matched | coasting)
        rows = rows[np.argsort(t.ids[rows], kind="stable")]
        boxes = t.boxes(rows)
        return [
            Track(
                track_id=int(t.ids[r]),
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(t.scores[r]),
                class_id=int(t.class_ids[r]),
                frames_since_update=int(t.misses[r]),
            )
            for r, b in zip(rows, boxes, strict=True)
        ]

"""Box overlap and non-maximum suppression, vectorised numpy.

`iou_matrix` is also the tracker's association cost. `nms` is greedy NMS in the
classic form: one numpy pass per *kept* box (not per candidate), class-aware by
offsetting each class's boxes into its own region of the plane, so boxes of
different classes can never overlap each other.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64Array = npt.NDArray[np.float64]


def box_area(boxes: npt.ArrayLike) -> npt.NDArray[np.float64]:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """(N, 4) x (M, 4) xyxy boxes -> (N, M) intersection over union (0 for empty boxes)."""
    a64 = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b64 = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    inter = np.minimum.outer(a64[:, 2], b64[:, 2])
    inter -= np.maximum.outer(a64[:, 0], b64[:, 0])
    np.clip(inter, 0.0, None, out=inter)
    ih = np.minimum.outer(a64[:, 3], b64[:, 3])
    ih -= np.maximum.outer(a64[:, 1], b64[:, 1])
    np.clip(ih, 0.0, None, out=ih)
    inter *= ih
    union = np.add.outer(box_area(a64), box_area(b64))
    union -= inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


_MATRIX_MAX = 256
"""Up to this many candidates NMS computes one IoU matrix and suppresses from its rows
(the agent's usual case: tens of candidates a frame); above it (low evaluation
thresholds) one IoU row per kept box is cheaper (crossover measured near 250)."""


def _iou_one_to_many(box: F64Array, others: F64Array, areas: F64Array, area: float) -> F64Array:
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter: F64Array = wh[:, 0] * wh[:, 1]
    union = area + areas - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    class_ids: npt.ArrayLike | None = None,
    max_detections: int | None = None,
) -> npt.NDArray[np.intp]:
    """Greedy NMS; returns indices of kept boxes, highest score first.

    With `class_ids`, suppression happens only within a class (class-aware). A box is
    suppressed when its IoU with a higher-scoring kept box is > `iou_threshold`.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    if b.shape[0] == 0:
        return np.zeros((0,), dtype=np.intp)
    if class_ids is not None:
        c = np.asarray(class_ids, dtype=np.float64).reshape(-1)
        span = float(np.max(np.abs(b))) * 2.0 + 1.0
        b = b + (c * span)[:, None]
    order = np.argsort(-s, kind="stable")
    limit = b.shape[0] if max_detections is None else max_detections
    if b.shape[0] <= _MATRIX_MAX:
        return _nms_matrix(b[order], order, iou_threshold, limit)
    areas = box_area(b)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        ious = _iou_one_to_many(b[i], b[rest], areas[rest], float(areas[i]))
        order = rest[ious <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def _nms_matrix(
    ranked: F64Array, order: npt.NDArray[np.intp], iou_threshold: float, limit: int
) -> npt.NDArray[np.intp]:
    """Greedy NMS over boxes already sorted best first: the same result as the loop, with
    one IoU matrix instead of one numpy pass per kept box (the agent's usual case: tens
    of candidates per frame)."""
    overlaps = iou_matrix(ranked, ranked) > iou_threshold
    alive = np.ones(ranked.shape[0], dtype=np.bool_)
    keep: list[int] = []
    for i in range(ranked.shape[0]):
        if not alive[i]:
            continue
        keep.append(i)
        if len(keep) >= limit:
            break
        alive &= ~overlaps[i]
    return order[np.asarray(keep, dtype=np.intp)]


__all__ = ["box_area", "iou_matrix", "nms"]

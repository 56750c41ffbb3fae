"""Box geometry for the tracker: IoU matrices and box <-> Kalman measurement conversions.

Pure, vectorised numpy. Boxes are (N, 4) x1, y1, x2, y2 in source pixels; the
Kalman filter measures (cx, cy, aspect = w / h, h) as ByteTrack does.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_MIN_SIDE = 1e-3
"""Smallest width/height a box may have after conversion (guards division by zero)."""


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Pairwise IoU of boxes `a` (N, 4) and `b` (M, 4), as an (N, M) float64 matrix.

    Degenerate boxes (zero or negative area) have IoU 0 with everything.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0.0, None) * np.clip(iy2 - iy1, 0.0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out: FloatArray = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0.0)
    return out


def xyxy_to_xyah(boxes: npt.ArrayLike) -> FloatArray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) centre x, centre y, aspect (w / h), height."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.maximum(b[:, 2] - b[:, 0], _MIN_SIDE)
    h = np.maximum(b[:, 3] - b[:, 1], _MIN_SIDE)
    return np.stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0, w / h, h], axis=1)


def xyah_to_xyxy(xyah: npt.ArrayLike) -> FloatArray:
    """(N, 4) centre x, centre y, aspect, height -> (N, 4) x1, y1, x2, y2."""
    m = np.asarray(xyah, dtype=np.float64).reshape(-1, 4)
    h = np.maximum(m[:, 3], _MIN_SIDE)
    w = np.maximum(m[:, 2], 0.0) * h
    return np.stack(
        [m[:, 0] - w / 2.0, m[:, 1] - h / 2.0, m[:, 0] + w / 2.0, m[:, 1] + h / 2.0], axis=1
    )

"""Box geometry for the tracker: IoU matrices and box <-> Kalman measurement conversions.

Pure, vectorised numpy. Boxes are (N, 4) x1, y1, x2, y2 in source pixels; the
Kalman filter measures (cx, cy, aspect = w / h, h) as ByteTrack does. The IoU matrix is
NMS's own (`agent.inference.nms.iou_matrix`), re-exported here.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.inference.nms import iou_matrix

FloatArray = npt.NDArray[np.float64]

_MIN_SIDE = 1e-3
"""Smallest width/height a box may have after conversion (guards division by zero)."""


def xyxy_to_xyah(boxes: npt.ArrayLike) -> FloatArray:
    """(N, 4) x1, y1, x2, y2 -> (N, 4) centre x, centre y, aspect (w / h), height."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out: FloatArray = np.empty_like(b)
    h = np.maximum(b[:, 3] - b[:, 1], _MIN_SIDE)
    out[:, 0] = (b[:, 0] + b[:, 2]) * 0.5
    out[:, 1] = (b[:, 1] + b[:, 3]) * 0.5
    out[:, 2] = np.maximum(b[:, 2] - b[:, 0], _MIN_SIDE) / h
    out[:, 3] = h
    return out


def xyah_to_xyxy(xyah: npt.ArrayLike) -> FloatArray:
    """(N, 4) centre x, centre y, aspect, height -> (N, 4) x1, y1, x2, y2."""
    m = np.asarray(xyah, dtype=np.float64).reshape(-1, 4)
    half_h = np.maximum(m[:, 3], _MIN_SIDE) * 0.5
    half_w = np.maximum(m[:, 2], 0.0) * half_h
    out: FloatArray = np.empty_like(m)
    out[:, 0] = m[:, 0] - half_w
    out[:, 1] = m[:, 1] - half_h
    out[:, 2] = m[:, 0] + half_w
    out[:, 3] = m[:, 1] + half_h
    return out


__all__ = ["iou_matrix", "xyah_to_xyxy", "xyxy_to_xyah"]

"""Output decoders, one per model family: raw network outputs -> scored candidate boxes.

All return `Candidates` (boxes xyxy in *network input* pixels, scores, class ids),
already filtered by `score_threshold` and ready for NMS (or, for the `nms` family,
already suppressed by the network). Pure, vectorised numpy; no state but a cache
of YOLOX grids.

- `yolox`: [1, N, 5 + C] raw grid: (dx, dy, log w, log h) per anchor point, objectness
  and C class probabilities (sigmoids applied in the graph); score = obj * max cls.
- `yolov8`: Ultralytics [1, 4 + C, N]: (cx, cy, w, h) in input pixels and C class
  scores; score = max cls.
- `nms`: end-to-end EfficientNMS outputs num_dets [1, 1], boxes [1, K, 4] xyxy,
  scores [1, K], classes [1, K]; only the first num_dets rows are valid.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import numpy.typing as npt


class Candidates(NamedTuple):
    boxes: npt.NDArray[np.float32]
    """(N, 4) x1, y1, x2, y2 in network input pixels."""
    scores: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int32]

    @staticmethod
    def empty() -> Candidates:
        return Candidates(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
        )


@lru_cache(maxsize=16)
def yolox_grid(
    input_w: int, input_h: int, strides: tuple[int, ...]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Anchor-point grid (N, 2) in cells and per-point stride (N, 1), in YOLOX order.

    Read-only arrays (they are cached and shared).
    """
    grids, expanded = [], []
    for stride in strides:
        hs, ws = input_h // stride, input_w // stride
        ys, xs = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), stride))
    grid = np.concatenate(grids).astype(np.float32)
    stride_col = np.concatenate(expanded).astype(np.float32)
    grid.flags.writeable = False
    stride_col.flags.writeable = False
    return grid, stride_col


def _xywh_to_xyxy(xywh: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    half = xywh[:, 2:4] * 0.5
    return np.concatenate((xywh[:, :2] - half, xywh[:, :2] + half), axis=1)


def decode_yolox(
    raw: npt.NDArray[np.floating],
    input_w: int,
    input_h: int,
    strides: tuple[int, ...] = (8, 16, 32),
    score_threshold: float = 0.0,
) -> Candidates:
    """Decode a YOLOX raw grid [1, N, 5 + C]; keep candidates with score > threshold.

    Objectness bounds the score (class probabilities are <= 1), so rows are first
    filtered on objectness alone and only survivors pay for the class max and exp.
    """
    pred = np.asarray(raw).reshape(raw.shape[-2], raw.shape[-1])
    grid, stride = yolox_grid(input_w, input_h, tuple(strides))
    if pred.shape[0] != grid.shape[0]:
        raise ValueError(
            f"YOLOX output has {pred.shape[0]} rows, {input_w}x{input_h} with strides "
            f"{tuple(strides)} gives {grid.shape[0]}"
        )
    rows = np.flatnonzero(pred[:, 4] > score_threshold)
    sub = pred[rows].astype(np.float32, copy=False)
    cls = sub[:, 5:]
    class_ids = cls.argmax(axis=1)
    scores = sub[:, 4] * cls[np.arange(cls.shape[0]), class_ids]
    keep = scores > score_threshold
    rows, sub, class_ids, scores = rows[keep], sub[keep], class_ids[keep], scores[keep]
    st = stride[rows]
    xy = (sub[:, 0:2] + grid[rows]) * st
    wh = np.exp(sub[:, 2:4]) * st
    boxes = _xywh_to_xyxy(np.concatenate((xy, wh), axis=1))
    return Candidates(
        boxes.astype(np.float32), scores.astype(np.float32), class_ids.astype(np.int32)
    )


def decode_yolov8(raw: npt.NDArray[np.floating], score_threshold: float = 0.0) -> Candidates:
    """Decode an Ultralytics head [1, 4 + C, N] (boxes cx, cy, w, h in input pixels)."""
    pred = np.asarray(raw).reshape(raw.shape[-2], raw.shape[-1])
    cls = pred[4:]
    class_ids = cls.argmax(axis=0)
    scores = np.take_along_axis(cls, class_ids[None, :], axis=0)[0]
    cols = np.flatnonzero(scores > score_threshold)
    boxes = _xywh_to_xyxy(pred[:4, cols].T.astype(np.float32))
    return Candidates(
        boxes.astype(np.float32),
        scores[cols].astype(np.float32),
        class_ids[cols].astype(np.int32),
    )


def decode_nms(
    num_dets: npt.ArrayLike,
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    classes: npt.ArrayLike,
    score_threshold: float = 0.0,
) -> Candidates:
    """Take the valid rows of EfficientNMS-style outputs (batch 1) above the threshold."""
    b = np.asarray(boxes).reshape(-1, 4)
    s = np.asarray(scores).reshape(-1)
    c = np.asarray(classes).reshape(-1)
    n = int(np.asarray(num_dets).reshape(-1)[0])
    n = max(0, min(n, b.shape[0], s.shape[0], c.shape[0]))
    keep = np.flatnonzero(s[:n] > score_threshold)
    return Candidates(
        b[keep].astype(np.float32), s[keep].astype(np.float32), c[keep].astype(np.int32)
    )


__all__ = ["Candidates", "decode_nms", "decode_yolov8", "decode_yolox", "yolox_grid"]

"""Family decoders on hand-built tensors with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.inference.decoders import decode_nms, decode_yolov8, decode_yolox, yolox_grid

ANCHORS_416 = 52 * 52 + 26 * 26 + 13 * 13  # strides 8, 16, 32


def _yolox_raw(n_cls: int = 80) -> np.ndarray:
    return np.zeros((1, ANCHORS_416, 5 + n_cls), np.float32)


def test_yolox_decodes_a_cell_of_the_stride_16_grid() -> None:
    # given one confident prediction in cell (x=5, y=3) of the stride-16 grid
    raw = _yolox_raw()
    row = 52 * 52 + 3 * 26 + 5
    raw[0, row, :4] = [0.5, 0.25, math.log(2.0), math.log(3.0)]
    raw[0, row, 4] = 0.9
    raw[0, row, 5:] = 0.1
    raw[0, row, 5 + 7] = 0.8
    # when decoded
    boxes, scores, class_ids = decode_yolox(raw, 416, 416, score_threshold=0.3)
    # then centre = (cell + offset) * stride, size = exp(log size) * stride, score = obj * cls
    np.testing.assert_allclose(boxes, [[72.0, 28.0, 104.0, 76.0]], atol=1e-4)
    np.testing.assert_allclose(scores, [0.72], rtol=1e-6)
    assert class_ids.tolist() == [7]
    assert boxes.dtype == np.float32 and class_ids.dtype == np.int32


def test_yolox_threshold_applies_to_objectness_times_class() -> None:
    raw = _yolox_raw()
    raw[0, 0, 4], raw[0, 0, 5] = 0.2, 0.99  # weak objectness: 0.198
    raw[0, 1, 4], raw[0, 1, 6] = 0.95, 0.2  # strong objectness, weak class: 0.19
    raw[0, 2, 4], raw[0, 2, 7] = 0.6, 0.6  # 0.36: kept
    cands = decode_yolox(raw, 416, 416, score_threshold=0.3)
    assert cands.class_ids.tolist() == [2]
    assert cands.scores[0] == pytest.approx(0.36)


def test_yolox_last_stride_32_cell() -> None:
    raw = _yolox_raw(n_cls=1)
    raw[0, -1, :5] = [0.0, 0.0, 0.0, 0.0, 1.0]
    raw[0, -1, 5] = 1.0
    cands = decode_yolox(raw, 416, 416)
    # cell (12, 12) of the 13x13 grid: centre 384, size 32
    np.testing.assert_allclose(cands.boxes, [[368.0, 368.0, 400.0, 400.0]])


def test_yolox_grid_is_cached_and_read_only() -> None:
    grid, stride = yolox_grid(416, 416, (8, 16, 32))
    assert yolox_grid(416, 416, (8, 16, 32))[0] is grid
    assert grid.shape == (ANCHORS_416, 2) and stride.shape == (ANCHORS_416, 1)
    assert grid[52].tolist() == [0.0, 1.0]  # row-major: second row of the stride-8 grid
    with pytest.raises(ValueError, match="read-only"):
        grid[0, 0] = 1.0


def test_yolox_rejects_output_of_another_input_size() -> None:
    with pytest.raises(ValueError, match="3549 rows"):
        decode_yolox(_yolox_raw(), 320, 320)


def test_yolox_empty_when_nothing_passes() -> None:
    cands = decode_yolox(_yolox_raw(), 416, 416, score_threshold=0.3)
    assert cands.boxes.shape == (0, 4) and cands.scores.shape == (0,)


def test_yolov8_decodes_centre_size_boxes_and_best_class() -> None:
    # given 3 classes and 4 anchors as Ultralytics lays them out: [1, 4 + C, N]
    raw = np.zeros((1, 7, 4), np.float32)
    raw[0, :4, 0] = [100, 50, 20, 10]  # cx cy w h
    raw[0, 4:, 0] = [0.1, 0.9, 0.2]  # class 1 at 0.9
    raw[0, :4, 1] = [10, 10, 4, 4]
    raw[0, 4:, 1] = [0.2, 0.1, 0.25]  # below threshold
    raw[0, :4, 3] = [300, 200, 100, 50]
    raw[0, 4:, 3] = [0.0, 0.3, 0.6]  # class 2 at 0.6
    boxes, scores, class_ids = decode_yolov8(raw, score_threshold=0.3)
    np.testing.assert_allclose(boxes, [[90, 45, 110, 55], [250, 175, 350, 225]])
    np.testing.assert_allclose(scores, [0.9, 0.6], rtol=1e-6)
    assert class_ids.tolist() == [1, 2]


def test_nms_family_takes_only_the_first_num_dets_rows() -> None:
    # given EfficientNMS outputs where rows past num_dets are junk
    num = np.array([[2]], np.int32)
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [0, 0, 1, 1]]], np.float32)
    scores = np.array([[0.9, 0.2, 0.99, 0.0]], np.float32)
    classes = np.array([[3, 4, 5, 0]], np.int32)
    cands = decode_nms(num, boxes, scores, classes, score_threshold=0.1)
    np.testing.assert_allclose(cands.boxes, [[0, 0, 10, 10], [5, 5, 20, 20]])
    assert cands.class_ids.tolist() == [3, 4]
    # and the score threshold still applies
    assert decode_nms(num, boxes, scores, classes, score_threshold=0.5).class_ids.tolist() == [3]


def test_nms_family_num_dets_larger_than_k_is_clamped() -> None:
    cands = decode_nms(np.array([[9]]), np.zeros((1, 1, 4)), np.array([[0.5]]), np.array([[1.0]]))
    assert len(cands.scores) == 1 and cands.class_ids.dtype == np.int32

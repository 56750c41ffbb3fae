"""IoU and class-aware greedy NMS."""

from __future__ import annotations

import numpy as np
import pytest

from agent.inference import nms as nms_module
from agent.inference.nms import iou_matrix, nms


def test_iou_matrix_known_values() -> None:
    a = [[0, 0, 10, 10], [0, 0, 0, 0]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_array_equal(iou[1], [0.0, 0.0, 0.0])  # empty box: 0, not NaN


def test_iou_matrix_empty_inputs() -> None:
    assert iou_matrix(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def test_overlapping_boxes_of_one_class_keep_the_best() -> None:
    boxes = [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]
    scores = [0.6, 0.9, 0.5]
    keep = nms(boxes, scores, 0.45, class_ids=[0, 0, 0])
    assert keep.tolist() == [1, 2]  # best first, its overlap suppressed


def test_class_aware_overlapping_boxes_of_different_classes_both_survive() -> None:
    boxes = [[0, 0, 10, 10], [0, 0, 10, 10]]
    keep = nms(boxes, [0.9, 0.8], 0.45, class_ids=[0, 16])
    assert sorted(keep.tolist()) == [0, 1]
    # and without classes (class-agnostic) only one survives
    assert nms(boxes, [0.9, 0.8], 0.45).tolist() == [0]


def test_threshold_is_strict_greater_than() -> None:
    boxes = [[0, 0, 10, 10], [5, 0, 15, 10]]  # IoU 1/3
    assert nms(boxes, [0.9, 0.8], 1 / 3 + 1e-9).tolist() == [0, 1]
    assert nms(boxes, [0.9, 0.8], 0.3).tolist() == [0]


def test_chain_suppression_is_greedy() -> None:
    # A overlaps B, B overlaps C, A does not overlap C: greedy keeps A and C
    boxes = [[0, 0, 10, 10], [6, 0, 16, 10], [12, 0, 22, 10]]
    assert nms(boxes, [0.9, 0.8, 0.7], 0.2).tolist() == [0, 2]


def test_max_detections_caps_the_result_in_score_order() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1000, size=(100, 2))
    boxes = np.concatenate([xy, xy + 5], axis=1)
    scores = rng.uniform(size=100)
    keep = nms(boxes, scores, 0.5, max_detections=10)
    assert len(keep) == 10
    assert np.all(np.diff(scores[keep]) <= 0)


def test_negative_coordinates_do_not_break_class_offsets() -> None:
    boxes = [[-100, -100, -90, -90], [-100, -100, -90, -90]]
    assert sorted(nms(boxes, [0.9, 0.8], 0.5, class_ids=[1, 2]).tolist()) == [0, 1]


def test_empty_and_mismatched_inputs() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        nms([[0, 0, 1, 1], [0, 0, 1, 1]], [0.5], 0.5)


@pytest.mark.parametrize("n", [1, 7, 80, 300])
@pytest.mark.parametrize("classes", [False, True])
def test_matrix_and_per_box_paths_keep_the_same_boxes(
    n: int, classes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small inputs use one IoU matrix, large ones one pass per kept box: same answer."""
    rng = np.random.default_rng(n)
    centres = rng.uniform(0, 400, (n // 4 + 1, 2)).repeat(4, axis=0)[:n]
    sizes = rng.uniform(8, 60, (n, 2))
    boxes = np.concatenate([centres, centres + sizes], axis=1) + rng.normal(0, 4, (n, 4))
    scores = rng.uniform(0.3, 1.0, n)
    class_ids = rng.integers(0, 3, n) if classes else None
    results = []
    for limit in (10_000, 0):
        monkeypatch.setattr(nms_module, "_MATRIX_MAX", limit)
        results.append(nms(boxes, scores, 0.45, class_ids, max_detections=50))
    np.testing.assert_array_equal(results[0], results[1])
    assert 0 < len(results[0]) <= 50

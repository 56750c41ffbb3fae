"""Geometry of the rules stage: anchors, polygons, sides of a line, segment crossings."""

from __future__ import annotations

import numpy as np
import pytest

from agent.rules.geometry import (
    LEFT,
    RIGHT,
    box_anchors,
    points_in_polygon,
    segments_intersect,
    side_of_line,
    signed_distance,
    to_pixels,
)

SQUARE = [(0, 0), (10, 0), (10, 10), (0, 10)]
# An L shape: the square minus its top-right quarter (concave).
ELL = [(0, 0), (5, 0), (5, 5), (10, 5), (10, 10), (0, 10)]


def test_anchor_is_bottom_centre_of_each_box() -> None:
    anchors = box_anchors([[10, 20, 30, 80], [0, 0, 4, 2]])
    np.testing.assert_allclose(anchors, [[20, 80], [2, 2]])


def test_empty_inputs_give_empty_outputs() -> None:
    assert box_anchors(np.zeros((0, 4))).shape == (0, 2)
    assert points_in_polygon(np.zeros((0, 2)), SQUARE).shape == (0,)
    assert segments_intersect(np.zeros((0, 2)), np.zeros((0, 2)), (0, 0), (1, 1)).shape == (0,)


def test_normalised_points_scale_to_pixels() -> None:
    np.testing.assert_allclose(to_pixels([(0.5, 0.25), (1, 1)], 640, 480), [[320, 120], [640, 480]])


def test_points_in_convex_polygon() -> None:
    points = [(5, 5), (0.1, 9.9), (-1, 5), (11, 5), (5, -0.1), (5, 10.1)]
    assert points_in_polygon(points, SQUARE).tolist() == [True, True, False, False, False, False]


def test_points_in_concave_polygon_respect_the_notch() -> None:
    points = [(2, 2), (8, 8), (7.5, 2.5), (2, 8), (5.5, 4.9)]
    assert points_in_polygon(points, ELL).tolist() == [True, True, False, True, False]


def test_polygon_orientation_does_not_matter() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(-2, 12, size=(500, 2))
    np.testing.assert_array_equal(
        points_in_polygon(points, ELL), points_in_polygon(points, ELL[::-1])
    )


def test_random_points_agree_with_rectangle_arithmetic() -> None:
    rng = np.random.default_rng(2)
    points = rng.uniform(-5, 15, size=(2000, 2))
    expected = (points[:, 0] > 0) & (points[:, 0] < 10) & (points[:, 1] > 0) & (points[:, 1] < 10)
    np.testing.assert_array_equal(points_in_polygon(points, SQUARE), expected)


def test_side_is_screen_sense_with_y_down() -> None:
    # A->B points right on the screen: below it (larger y) is the walker's right.
    a, b = (0, 0), (10, 0)
    assert side_of_line([(5, 3), (5, -3)], a, b).tolist() == [RIGHT, LEFT]
    # A->B points up the screen (bottom to top): screen-left is the walker's left.
    assert side_of_line([(-1, 5), (1, 5)], (0, 10), (0, 0)).tolist() == [LEFT, RIGHT]


def test_signed_distance_is_in_point_units() -> None:
    np.testing.assert_allclose(signed_distance([(5, 3), (5, -4)], (0, 0), (10, 0)), [3, -4])
    with pytest.raises(ValueError, match="differ"):
        signed_distance([(1, 1)], (2, 2), (2, 2))


def test_points_within_margin_are_on_no_side() -> None:
    sides = side_of_line([(5, 0.5), (5, 1.5), (5, -0.5), (5, -3)], (0, 0), (10, 0), margin=1.0)
    assert sides.tolist() == [0, RIGHT, 0, LEFT]
    per_point = side_of_line([(5, 2), (5, 2)], (0, 0), (10, 0), margin=[1.0, 3.0])
    assert per_point.tolist() == [RIGHT, 0]


def test_segments_crossing_the_line_segment() -> None:
    starts = [(5, -1), (15, -1), (5, 1), (0, 0), (-1, 0), (11, 0), (10, 1)]
    ends = [(5, 1), (15, 1), (6, 2), (3, 0), (2, 0), (12, 0), (10, -1)]
    hits = segments_intersect(starts, ends, (0, 0), (10, 0))
    # crossing / past the end / same side / collinear overlap / collinear overlap /
    # collinear disjoint / through the end point (touch counts)
    assert hits.tolist() == [True, False, False, True, True, False, True]

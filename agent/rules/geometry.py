"""Vectorised plane geometry for the rule engine: anchors, polygons, lines, segments.

Pure numpy over arrays of points; no Python loop per point. Coordinates are image
pixels with x to the right and y *down*, so "left" and "right" of a directed line are
as seen on the screen: walking from A to B, your left hand is the left side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

LEFT = -1
"""`side_of_line` value for points on the left of A->B (as seen on the screen)."""
RIGHT = 1
"""`side_of_line` value for points on the right of A->B (as seen on the screen)."""


def as_points(points: npt.ArrayLike) -> FloatArray:
    """(N, 2) float64 view of `points` (a single point becomes shape (1, 2))."""
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def box_anchors(boxes: npt.ArrayLike) -> FloatArray:
    """Bottom-centre ("feet") of each x1, y1, x2, y2 box: (N, 4) -> (N, 2)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack(((b[:, 0] + b[:, 2]) * 0.5, b[:, 3]), axis=1)


def to_pixels(points: Sequence[Sequence[float]], width: int, height: int) -> FloatArray:
    """Scale normalised (x, y) points in [0, 1] to pixels of a width x height image."""
    return as_points(points) * np.array([width, height], dtype=np.float64)


def points_in_polygon(points: npt.ArrayLike, polygon: npt.ArrayLike) -> BoolArray:
    """Which of the (N, 2) points lie inside the (M, 2) polygon (even-odd ray casting).

    The polygon is closed implicitly (last vertex joins the first) and may be concave or
    self-intersecting (even-odd rule). Points exactly on an edge may fall either way.
    """
    p = as_points(points)
    poly = as_points(polygon)
    x, y = p[:, 0:1], p[:, 1:2]  # (N, 1): broadcast against the M edges
    x1, y1 = poly[:, 0], poly[:, 1]
    nxt = np.r_[1 : poly.shape[0], 0]  # each vertex's successor, closing the ring
    x2, y2 = x1[nxt], y1[nxt]
    straddles = (y1 > y) != (y2 > y)  # (N, M); never true for horizontal edges
    dy = np.where(y2 == y1, 1.0, y2 - y1)
    x_cross = x1 + (y - y1) * (x2 - x1) / dy
    hits = straddles & (x < x_cross)
    return np.asarray(np.count_nonzero(hits, axis=1) % 2 == 1, dtype=np.bool_)


def _cross(o: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    """z of (a - o) x (b - o), broadcast over leading dimensions."""
    return np.asarray(
        (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1])
        - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0]),
        dtype=np.float64,
    )


def signed_distance(points: npt.ArrayLike, a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Signed distance of each point to the infinite line through A and B.

    Positive on the right of A->B, negative on the left (screen sense, y down).
    """
    p = as_points(points)
    pa = np.asarray(a, dtype=np.float64).reshape(2)
    pb = np.asarray(b, dtype=np.float64).reshape(2)
    length = float(np.hypot(*(pb - pa)))
    if length == 0.0:
        raise ValueError("line end points must differ")
    return _cross(pa, pb, p) / length


def side_of_line(
    points: npt.ArrayLike,
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    margin: npt.ArrayLike = 0.0,
) -> npt.NDArray[np.int8]:
    """RIGHT (1), LEFT (-1) or 0 for each point; 0 means within `margin` of the line.

    `margin` is a distance in the points' units, a scalar or one value per point: a
    point counts as being on a side only when it is clearly (more than `margin`) there.
    """
    d = signed_distance(points, a, b)
    m = np.broadcast_to(np.asarray(margin, dtype=np.float64), d.shape)
    side = np.zeros(d.shape, dtype=np.int8)
    side[d > m] = RIGHT
    side[d < -m] = LEFT
    return side


def segments_intersect(
    starts: npt.ArrayLike, ends: npt.ArrayLike, a: npt.ArrayLike, b: npt.ArrayLike
) -> BoolArray:
    """Whether each closed segment starts[i]->ends[i] meets the closed segment A->B.

    Touching (an end point on the other segment) counts; collinear segments count when
    they overlap.
    """
    p1, p2 = as_points(starts), as_points(ends)
    pa = np.broadcast_to(np.asarray(a, dtype=np.float64).reshape(1, 2), p1.shape)
    pb = np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(1, 2), p1.shape)
    o1, o2 = _cross(pa, pb, p1), _cross(pa, pb, p2)
    o3, o4 = _cross(p1, p2, pa), _cross(p1, p2, pb)
    general = (o1 * o2 <= 0) & (o3 * o4 <= 0)
    collinear = (o1 == 0) & (o2 == 0)
    overlap = np.ones(p1.shape[0], dtype=np.bool_)
    for axis in (0, 1):
        lo = np.maximum(np.minimum(p1[:, axis], p2[:, axis]), np.minimum(pa[:, axis], pb[:, axis]))
        hi = np.minimum(np.maximum(p1[:, axis], p2[:, axis]), np.maximum(pa[:, axis], pb[:, axis]))
        overlap &= lo <= hi
    return np.asarray(np.where(collinear, overlap, general), dtype=np.bool_)

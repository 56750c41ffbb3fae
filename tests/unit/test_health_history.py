"""Health history's pure parts: row extraction, derived points, query checks, SVG charts."""

from __future__ import annotations

import math
import re

import pytest

from fleet.dashboard_history import MAX_CHART_POINTS, line_chart
from fleet.health_history import (
    MAX_LIMIT,
    HistoryQueryError,
    camera_sample,
    check_window,
    derive,
    sample_row,
)
from fleet.models import HealthSample
from tests.fleet.history_helpers import camera, health


def _row(t: float, cameras: dict[str, dict[str, float]], started_at: float = 1.0) -> HealthSample:
    return HealthSample(device_id="d", time=t, received_at=t, seq=int(t), started_at=started_at,
                        cameras=cameras)  # fmt: skip


def test_a_row_keeps_the_charted_numbers_compactly_and_drops_what_is_not_a_number() -> None:
    # given a report with gauges, counters, a bool where a number belongs and a NaN
    cam = camera(fps=9.75, p99=48.25, frames_processed=120, detections=80, confidence_sum=56.0,
                 frames_decoded=130, drops=float("nan"))  # fmt: skip
    cam["detections_per_frame"] = True
    payload = health("dev", 7, 2_000.0, {"cam1": cam, "cam2": {"state": "reconnecting"}},
                     outbox_depth=3, degraded=True, system={"cpu_percent": 40.5})  # fmt: skip
    # when it becomes a history row
    row = sample_row(payload, now=2_001.0)
    # then device numbers are columns and each camera a short-keyed map
    assert row is not None
    assert (row.time, row.received_at, row.seq, row.started_at) == (2_000.0, 2_001.0, 7, 1_000.0)
    assert (row.degraded, row.backend, row.outbox_depth) == (True, "tensorrt", 3)
    assert (row.cpu_percent, row.hottest_c) == (40.5, None)
    assert row.cameras["cam1"] == {
        "st": "streaming", "fps": 9.75, "p50": 20.0, "p99": 48.2, "conf": 0.71, "drift": 0.04,
        "fr": 120.0, "dec": 130.0, "det": 80.0, "cs": 56.0,
    }  # fmt: skip
    assert row.cameras["cam2"] == {"st": "reconnecting"}


def test_a_report_with_a_non_finite_timestamp_gets_no_row() -> None:
    assert sample_row(health("dev", 1, math.inf), now=1.0) is None
    assert camera_sample({"fps_processed": math.nan, "latency_ms": "fast"}) == {}


def test_points_take_rates_from_counter_deltas_within_one_agent_run() -> None:
    # given three rows of one run (rates 1.0 then 3.0 per frame) and one after a restart
    rows = [
        _row(0, {"c": {"fr": 100, "det": 100, "cs": 80, "dec": 100, "drop": 0}}),
        _row(60, {"c": {"fr": 200, "det": 400, "cs": 230, "dec": 220, "drop": 20}}),
        _row(120, {"c": {"fr": 300, "det": 700, "cs": 380, "dec": 340, "drop": 20}}),
        _row(180, {"c": {"fr": 50, "det": 25, "cs": 20}}, started_at=2.0),
    ]
    # when points are derived
    pts = [p.cameras["c"] for p in derive(rows)]
    # then each is the rate since the previous row; the first and the restarted count from 0
    assert [p.detections_per_frame for p in pts] == [1.0, 3.0, 3.0, 0.5]
    assert [p.confidence_mean for p in pts] == [0.8, 0.5, 0.5, 0.8]
    assert [p.drop_pct for p in pts] == [0.0, 16.6667, 0.0, None]


def test_a_counter_that_went_down_without_a_new_start_counts_from_zero() -> None:
    rows = [_row(0, {"c": {"fr": 500, "det": 500}}), _row(60, {"c": {"fr": 100, "det": 20}})]
    assert derive(rows)[1].cameras["c"].detections_per_frame == 0.2


def test_reported_gauges_win_over_counters() -> None:
    later = {"fr": 200, "det": 400, "dpf": 1.7, "conf": 0.6}
    rows = [_row(0, {"c": {"fr": 100, "det": 100}}), _row(60, {"c": later})]
    point = derive(rows)[1].cameras["c"]
    assert (point.detections_per_frame, point.confidence_mean) == (1.7, 0.6)


@pytest.mark.parametrize(
    ("since", "until", "limit", "message"),
    [(5.0, 5.0, 10, "since (5) must be before until (5)"), (math.nan, None, 10, "since must"),
     (None, math.inf, 10, "until must"), (None, None, 0, "limit must"),
     (None, None, MAX_LIMIT + 1, "limit must")],
)  # fmt: skip
def test_query_windows_are_checked(
    since: float | None, until: float | None, limit: int, message: str
) -> None:
    with pytest.raises(HistoryQueryError, match=re.escape(message)):
        check_window(since, until, limit)


def test_a_line_chart_breaks_at_gaps_and_labels_its_axes() -> None:
    # given a series with a gap of ten intervals in the middle
    pts = [(float(t), 10.0) for t in range(0, 300, 60)] + [(900.0 + t, 5.0) for t in (0, 60, 120)]
    # when it is drawn
    svg = line_chart("fps", "fps", [("cam1", pts)], 0.0, 1020.0)
    # then two polylines, a dot per point with a tooltip, time labels and the unit
    assert svg.count("<polyline") == 2
    assert 'data-points="8"' in svg
    assert svg.count('<circle class="pt"') == 8
    assert "<title>cam1 1970-01-01 00:00:00 UTC: 10 fps</title>" in svg
    assert "time (UTC)" in svg and ">00:17<" in svg
    assert "style=" not in svg and "<script" not in svg


def test_a_long_series_is_bucketed_and_a_chart_without_data_is_left_out() -> None:
    pts = [(float(t), float(t % 7)) for t in range(5000)]
    svg = line_chart("p99", "ms", [("cam1", pts)], 0.0, 4999.0, peak=True)
    assert f'data-points="{MAX_CHART_POINTS}"' in svg
    assert "<circle" not in svg  # too many points for dots
    assert line_chart("p99", "ms", [("cam1", [])], 0.0, 1.0) == ""


def test_names_in_a_chart_are_escaped() -> None:
    svg = line_chart("fps", "", [("<b>x</b>", [(0.0, 1.0), (1.0, 2.0)])], 0.0, 1.0)
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg

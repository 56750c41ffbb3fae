"""The rollout quality gate's statistics (pure functions over health payloads)."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.rollout_gate import Counters, Verdict, counters_from_health, evaluate_gate, window
from fleet.rollout_spec import GateConfig

CFG = GateConfig()


def _dev(frames: float, rate: float, conf: float = 0.7, drift: float | None = None) -> Counters:
    return Counters(frames=frames, detections=frames * rate,
                    confidence_sum=frames * rate * conf, drift=drift)  # fmt: skip


def test_equal_groups_pass_every_check() -> None:
    result = evaluate_gate([_dev(1000, 2.0, drift=0.05)], [_dev(5000, 2.0, drift=0.04)] * 3, CFG)
    assert result.verdict is Verdict.PASS
    assert {c.name: c.verdict for c in result.checks} == {
        "detection_rate": Verdict.PASS, "mean_confidence": Verdict.PASS,
        "output_drift": Verdict.PASS,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("canary", "failed"),
    [
        (_dev(1000, 0.5), ["detection_rate"]),  # 75 % fewer detections per frame
        (_dev(1000, 2.0, conf=0.45), ["mean_confidence"]),
        (_dev(1000, 2.0, drift=0.9), ["output_drift"]),
    ],
)
def test_a_significant_drop_fails_the_gate(canary: Counters, failed: list[str]) -> None:
    result = evaluate_gate([canary], [_dev(5000, 2.0, drift=0.05)], CFG)
    assert result.verdict is Verdict.FAIL and result.failed() == failed


def test_a_drop_within_the_threshold_or_within_noise_passes() -> None:
    # 20 % lower rate: below the 30 % threshold
    assert evaluate_gate([_dev(1000, 1.6)], [_dev(5000, 2.0)], CFG).verdict is Verdict.PASS
    # 40 % lower but on so few detections that z < 3: not significant
    cfg = GateConfig(min_frames=10, max_confidence_drop=None, max_drift_increase=None)
    noisy = evaluate_gate([_dev(10, 0.06)], [_dev(10, 0.1)], cfg)
    assert noisy.verdict is Verdict.PASS
    assert "z 0.3" in noisy.checks[0].detail


def test_too_little_data_or_no_control_is_inconclusive() -> None:
    assert evaluate_gate([_dev(100, 0.0)], [_dev(5000, 2.0)], CFG).verdict is Verdict.INCONCLUSIVE
    assert evaluate_gate([_dev(5000, 0.0)], [], CFG).verdict is Verdict.INCONCLUSIVE
    no_counters = Counters(frames=5000)
    assert evaluate_gate([no_counters], [no_counters], CFG).verdict is Verdict.INCONCLUSIVE


def _health(cams: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"device_id": "d", "cameras": cams}


def test_counters_sum_cameras_and_take_the_worst_output_drift() -> None:
    c = counters_from_health(_health({
        "a": {"frames_processed": 100, "detections": 150, "confidence_sum": 90,
              "drift": {"scores": {"detection_rate": 0.1, "confidence": 0.3, "brightness": 5}}},
        "b": {"frames_processed": 50, "detections": 50, "confidence_sum": 40, "drift": None},
    }))  # fmt: skip
    assert c == Counters(frames=150, detections=200, confidence_sum=130, drift=0.3)
    assert counters_from_health(None) is None
    assert counters_from_health(_health({})) is None


def test_gauges_from_the_simulator_are_used_as_they_are() -> None:
    c = counters_from_health(_health({
        "a": {"fps_processed": 10.0, "detections_per_frame": 1.5, "confidence": {"mean": 0.7}},
    }))  # fmt: skip
    assert c is not None and not c.cumulative
    assert (c.frames, c.detections, c.confidence_sum) == pytest.approx((600, 900, 630))
    assert window(c, Counters(frames=10_000, detections=1)) == c


def test_window_is_counted_from_the_start_and_restarts_with_the_agent() -> None:
    start = Counters(frames=1000, detections=2000, confidence_sum=1400)
    later = Counters(frames=1500, detections=2100, confidence_sum=1460)
    assert window(later, start) == Counters(frames=500, detections=100, confidence_sum=60)
    restarted = Counters(frames=300, detections=30, confidence_sum=20)
    assert window(restarted, start) == restarted
    assert window(later, None) == later
    assert Counters.from_json(later.to_json()) == later

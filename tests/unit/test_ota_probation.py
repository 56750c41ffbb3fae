"""Probation verdicts: errors fail at once; fps and detection-rate collapse fail at the end."""

from __future__ import annotations

from agent.config.ota import ProbationConfig
from agent.ota.errors import ReasonCode
from agent.ota.probation import HealthSample, Verdict, judge

CFG = ProbationConfig(window_s=10, max_inference_errors=0, min_fps_ratio=0.5,
                      min_detection_ratio=0.2, min_frames=10)  # fmt: skip
BASE = HealthSample(frames=1000, detections=5000, errors=0, fps=10.0)
START = HealthSample(frames=0, detections=0, errors=3, fps=10.0)


def test_a_healthy_window_passes_only_at_its_end() -> None:
    healthy = HealthSample(frames=100, detections=450, errors=3, fps=10.0)
    assert judge(CFG, BASE.baseline(), START, healthy, 5.0).verdict is Verdict.WATCHING
    assert judge(CFG, BASE.baseline(), START, healthy, 10.0).verdict is Verdict.PASSED


def test_inference_errors_fail_before_the_window_ends() -> None:
    j = judge(CFG, BASE.baseline(), START, HealthSample(10, 50, 4, 10.0), 1.0)
    assert (j.verdict, j.reason) == (Verdict.FAILED, ReasonCode.PROBATION_ERRORS)


def test_fps_collapse_fails() -> None:
    j = judge(CFG, BASE.baseline(), START, HealthSample(40, 200, 3, 4.0), 10.0)
    assert (j.verdict, j.reason) == (Verdict.FAILED, ReasonCode.PROBATION_FPS)


def test_no_frames_at_all_is_an_fps_collapse() -> None:
    j = judge(CFG, BASE.baseline(), START, HealthSample(0, 0, 3, 0.0), 10.0)
    assert j.reason is ReasonCode.PROBATION_FPS


def test_detection_rate_collapse_fails() -> None:
    # given 5 detections per frame before, 0.5 after
    j = judge(CFG, BASE.baseline(), START, HealthSample(100, 50, 3, 10.0), 10.0)
    assert (j.verdict, j.reason) == (Verdict.FAILED, ReasonCode.PROBATION_DETECTIONS)


def test_detection_check_is_skipped_when_the_baseline_saw_nothing() -> None:
    empty = HealthSample(frames=1000, detections=0, errors=0, fps=10.0)
    j = judge(CFG, empty.baseline(), START, HealthSample(100, 0, 3, 10.0), 10.0)
    assert j.verdict is Verdict.PASSED


def test_fps_check_is_skipped_without_a_baseline_fps() -> None:
    idle = HealthSample(frames=0, detections=0, errors=0, fps=0.0)
    assert judge(CFG, idle.baseline(), START, START, 10.0).verdict is Verdict.PASSED


def test_probe_dict_maps_to_a_sample_with_missing_keys_as_zero() -> None:
    assert HealthSample.of({"frames": 5, "fps": 2.5}) == HealthSample(5, 0, 0, 2.5)

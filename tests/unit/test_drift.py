"""Drift statistics, PSI, the drift monitor's crossings and the bounded sample store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.config.health import DriftConfig
from agent.health.drift import (
    DriftChange,
    DriftCode,
    DriftMonitor,
    bin_counts,
    frame_stats,
    psi,
    quantile_edges,
)
from agent.health.samples import SampleKeeper, SampleStoreError

RNG_SEED = 1234


def _cfg(**kw: object) -> DriftConfig:
    base: dict[str, object] = {
        "baseline_samples": 60,
        "window_samples": 30,
        "min_recent_samples": 30,
        "bins": 8,
        "frozen_window_samples": 10,
        "sample_every_s": 1.0,
    }
    base.update(kw)
    return DriftConfig.model_validate(base)


def _scene(rng: np.random.Generator, gain: float = 1.0) -> np.ndarray:
    """A textured 120x160 BGR image with per-frame noise, brightness scaled by `gain`."""
    yy, xx = np.mgrid[0:120, 0:160]
    texture = 100 + 60 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    noise = rng.normal(0, 4, size=(120, 160))
    luma = np.clip((texture + noise) * gain, 0, 255)
    return np.repeat(luma[..., None], 3, axis=2).astype(np.uint8)


# --- frame statistics -------------------------------------------------------------------


def test_frame_stats_of_a_flat_gray_image() -> None:
    # given a uniform gray image
    img = np.full((120, 160), 80, dtype=np.uint8)
    # when
    s = frame_stats(img)
    # then
    assert s.brightness == pytest.approx(80)
    assert s.contrast == pytest.approx(0)
    assert s.sharpness == pytest.approx(0)
    assert (s.colour_bg, s.colour_rg) == (0.0, 0.0)
    assert s.diff is None


def test_frame_stats_sees_colour_cast_and_sharpness() -> None:
    # given a blue-tinted checkerboard and the same board blurred to flat
    board = ((np.indices((120, 160)).sum(axis=0) % 2) * 200).astype(np.uint8)
    bgr = np.stack([board, board // 2, board // 2], axis=2)
    flat = np.full_like(bgr, 100)
    # when
    sharp, blurred = frame_stats(bgr), frame_stats(flat)
    # then
    assert sharp.colour_bg > 40 and sharp.colour_rg == pytest.approx(0)
    assert sharp.sharpness > 1000 * (blurred.sharpness + 1)


def test_frame_difference_is_zero_only_for_identical_frames() -> None:
    rng = np.random.default_rng(RNG_SEED)
    a, b = _scene(rng), _scene(rng)
    first = frame_stats(a)
    assert frame_stats(a, first.luma).diff == 0.0
    moved = frame_stats(b, first.luma).diff
    assert moved is not None and moved > 1.0


def test_frame_stats_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match="HxW"):
        frame_stats(np.zeros((4, 4, 4), dtype=np.uint8))


# --- PSI ----------------------------------------------------------------------------------


def test_point_mass_baseline_gets_its_own_bin() -> None:
    # given a baseline that is always zero (an empty scene's detections)
    edges = quantile_edges(np.zeros(50), bins=10)
    # then values below, at and above it land in three different bins
    assert edges.tolist() == [0.0]
    assert bin_counts([-1, 0, 0, 3], edges).tolist() == [1, 2, 1]


def test_psi_is_zero_for_equal_histograms_and_large_for_disjoint() -> None:
    assert psi([5, 5, 0], [10, 10, 0], 1e-4) == pytest.approx(0)
    assert psi([10, 0], [0, 10], 1e-4) > 5
    assert psi([6, 4], [4, 6], 1e-4) == pytest.approx(psi([4, 6], [6, 4], 1e-4))


def test_quantile_edges_split_continuous_data_into_equal_bins() -> None:
    values = np.random.default_rng(RNG_SEED).normal(size=1000)
    edges = quantile_edges(values, bins=10)
    counts = bin_counts(values, edges)
    assert edges.size == 9
    assert counts[1::2].sum() == 0  # no continuous sample sits exactly on an edge
    assert np.all(np.abs(counts[0::2] - 100) <= 1)


# --- the monitor --------------------------------------------------------------------------


def _feed(mon: DriftMonitor, images: list[np.ndarray], t0: float) -> list[DriftChange]:
    changes: list[DriftChange] = []
    for i, img in enumerate(images):
        mon.observe_image(img, t0 + i)
        changes += mon.check(t0 + i)
    return changes


def test_stable_input_raises_nothing_and_darkening_raises_brightness_once() -> None:
    # given a monitor with a baseline of a stable scene
    rng = np.random.default_rng(RNG_SEED)
    mon = DriftMonitor(_cfg(), camera="cam1")
    assert _feed(mon, [_scene(rng) for _ in range(120)], 0) == []
    assert max(mon.scores().values()) < mon.cfg.threshold
    # when the scene darkens for a long while
    changes = _feed(mon, [_scene(rng, gain=0.3) for _ in range(60)], 120)
    # then brightness drift is raised exactly once, for this camera
    raised = [c for c in changes if c.code is DriftCode.BRIGHTNESS]
    assert len(raised) == 1 and raised[0].raised and raised[0].camera == "cam1"
    assert mon.scores()["brightness"] > mon.cfg.threshold
    assert DriftCode.BRIGHTNESS in mon.active
    # and when light returns, it clears once
    back = _feed(mon, [_scene(rng) for _ in range(60)], 180)
    cleared = [c for c in back if c.code is DriftCode.BRIGHTNESS]
    assert [c.raised for c in cleared] == [False]
    assert not mon.active


def test_scores_stay_zero_until_baseline_and_window_are_filled() -> None:
    rng = np.random.default_rng(RNG_SEED)
    mon = DriftMonitor(_cfg())
    _feed(mon, [_scene(rng, gain=0.3) for _ in range(60)], 0)
    assert mon.baseline_progress == 1.0
    _feed(mon, [_scene(rng) for _ in range(29)], 60)
    assert mon.scores()["brightness"] == 0.0  # 29 < min_recent_samples
    _feed(mon, [_scene(rng)], 89)
    assert mon.scores()["brightness"] > 1.0


def test_frozen_input_is_raised_and_cleared() -> None:
    # given a running camera
    rng = np.random.default_rng(RNG_SEED)
    mon = DriftMonitor(_cfg())
    _feed(mon, [_scene(rng) for _ in range(20)], 0)
    # when the same frame repeats
    still = _scene(rng)
    changes = _feed(mon, [still] * 12, 20)
    # then FROZEN is raised (no baseline needed) and clears once frames move again
    assert [(c.code, c.raised) for c in changes] == [(DriftCode.FROZEN, True)]
    assert mon.scores()["frozen"] == 1.0
    moving = _feed(mon, [_scene(rng) for _ in range(10)], 32)
    assert [(c.code, c.raised) for c in moving] == [(DriftCode.FROZEN, False)]


def test_hysteresis_keeps_a_raised_drift_until_well_below_threshold() -> None:
    # given detection counts alternating 0 and 10 in the baseline (PSI is exact, tolerance 0)
    cfg = {"bins": 2, "tolerance_detections": 0.0, "threshold": 0.25, "hysteresis": 0.5}
    mon = DriftMonitor(_cfg(**cfg, window_samples=20, min_recent_samples=20))
    for i in range(60):
        mon.observe_output(10 * (i % 2), [], i)

    def phase(zeros: int, t: float) -> list[bool]:
        for i in range(20):
            mon.observe_output(0 if i < zeros else 10, [], t + i)
        return [c.raised for c in mon.check(t + 20) if c.code is DriftCode.DETECTION_RATE]

    # when 90 % of frames have no detections: PSI 0.88 > 0.25
    assert phase(18, 100) == [True]
    # then 70 %: PSI 0.17, between 0.125 and 0.25: still raised, nothing reported
    assert phase(14, 200) == []
    assert DriftCode.DETECTION_RATE in mon.active
    # and 60 %: PSI 0.04 < 0.125: cleared
    assert phase(12, 300) == [False]


def test_output_drift_in_detection_rate_and_confidence() -> None:
    # given a baseline of ~20 detections per frame with confident scores
    rng = np.random.default_rng(RNG_SEED)
    mon = DriftMonitor(_cfg())
    for i in range(60):
        n = int(rng.integers(17, 24))
        mon.observe_output(n, rng.uniform(0.5, 0.9, n), i)
    for i in range(30):
        n = int(rng.integers(17, 24))
        mon.observe_output(n, rng.uniform(0.5, 0.9, n), 60 + i)
    assert mon.check(90) == []
    # when the model sees fewer objects with low confidence
    for i in range(30):
        n = int(rng.integers(2, 5))
        mon.observe_output(n, rng.uniform(0.25, 0.4, n), 90 + i)
    codes = {c.code for c in mon.check(120) if c.raised}
    # then both output indicators are raised
    assert codes == {DriftCode.DETECTION_RATE, DriftCode.CONFIDENCE}


def test_rebaseline_resets_scores_and_clears_raised_drift() -> None:
    rng = np.random.default_rng(RNG_SEED)
    mon = DriftMonitor(_cfg())
    _feed(mon, [_scene(rng) for _ in range(60)], 0)
    _feed(mon, [_scene(rng, gain=0.3) for _ in range(30)], 60)
    assert DriftCode.BRIGHTNESS in mon.active
    # when the operator re-baselines on the new scene
    mon.rebaseline()
    assert mon.baseline_progress == 0.0
    cleared = mon.check(91)
    assert DriftCode.BRIGHTNESS in {c.code for c in cleared if not c.raised}
    # then the darker scene becomes the normal one
    assert _feed(mon, [_scene(rng, gain=0.3) for _ in range(90)], 92) == []


def test_due_samples_once_per_interval() -> None:
    mon = DriftMonitor(_cfg(sample_every_s=2.0))
    assert mon.due(0.0)
    mon.observe_image(np.zeros((12, 16), np.uint8), 0.0)
    assert not mon.due(1.9)
    assert mon.due(2.0)


def test_keep_reason_picks_uncertain_or_drifted_frames_rate_limited() -> None:
    mon = DriftMonitor(_cfg(keep_samples=True, keep_every_s=10.0, low_confidence=(0.3, 0.5)))
    assert mon.keep_reason([0.9, 0.2], 0) is None  # confident best detection
    assert mon.keep_reason([], 0) is None
    assert mon.keep_reason([0.45, 0.1], 0) == "low_confidence"
    assert mon.keep_reason([0.45], 5) is None  # within keep_every_s
    assert mon.keep_reason([0.45], 10) == "low_confidence"
    assert DriftMonitor(_cfg()).keep_reason([0.45], 0) is None  # keep_samples off


def test_health_report_is_json_ready() -> None:
    mon = DriftMonitor(_cfg())
    report = mon.health()
    json.dumps(report)
    assert set(report["scores"]) == {c.value for c in DriftCode}
    assert report["active"] == [] and report["baseline_progress"] == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"min_recent_samples": 31}, "min_recent_samples"),
        ({"low_confidence": (0.6, 0.5)}, "low_confidence"),
        ({"hysteresis": 1.0}, "less than 1"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_drift_config_rejects_inconsistent_values(
    override: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _cfg(**override)


# --- the sample store ---------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_sample_keeper_writes_jpeg_and_sidecar_atomically(tmp_path: Path) -> None:
    keeper = SampleKeeper(tmp_path / "samples", max_files=10, max_bytes=1 << 20, clock=_Clock())
    path = keeper.save(b"\xff\xd8jpeg\xff\xd9", {"scores": [0.4]}, camera="cam/1", reason="low")
    assert path.read_bytes() == b"\xff\xd8jpeg\xff\xd9"
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["camera"] == "cam/1" and side["reason"] == "low" and side["scores"] == [0.4]
    assert "/" not in path.name.replace("cam/1", "")  # unsafe characters replaced
    assert "cam_1" in path.name
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.stem + ".json"]


def test_sample_keeper_deletes_oldest_beyond_count_and_bytes(tmp_path: Path) -> None:
    # given a store of at most 3 files
    keeper = SampleKeeper(tmp_path, max_files=3, max_bytes=1 << 20, clock=_Clock())
    paths = [keeper.save(bytes([i]) * 100, {}, "cam", "low") for i in range(5)]
    # then the two oldest are gone, counted
    assert [p.exists() for p in paths] == [False, False, True, True, True]
    assert not paths[0].with_suffix(".json").exists()
    assert (keeper.count, keeper.evicted, keeper.saved) == (3, 2, 5)
    # and a byte bound evicts by size, oldest first
    small = SampleKeeper(tmp_path / "b", max_files=100, max_bytes=1000, clock=_Clock())
    for _ in range(4):
        small.save(b"x" * 300, {}, "cam", "low")
    assert small.total_bytes <= 1000 and small.count < 4 and small.evicted >= 1


def test_sample_keeper_finds_its_files_after_restart(tmp_path: Path) -> None:
    clock = _Clock()
    first = SampleKeeper(tmp_path, max_files=3, max_bytes=1 << 20, clock=clock)
    old = [first.save(b"a" * 10, {}, "cam", "low") for _ in range(3)]
    (tmp_path / ".stale.jpg.tmp").write_bytes(b"half")
    (tmp_path / "orphan.json").write_text("{}")
    # when the process restarts and saves one more
    second = SampleKeeper(tmp_path, max_files=3, max_bytes=1 << 20, clock=clock)
    assert second.count == 3
    second.save(b"b" * 10, {}, "cam", "low")
    # then the oldest from the first run was deleted and leftovers were cleaned
    assert not old[0].exists() and old[1].exists()
    assert not (tmp_path / ".stale.jpg.tmp").exists()
    assert not (tmp_path / "orphan.json").exists()


def test_sample_keeper_reports_write_failures(tmp_path: Path) -> None:
    keeper = SampleKeeper(tmp_path / "gone", max_files=3, max_bytes=1 << 20)
    (tmp_path / "gone").rmdir()
    with pytest.raises(SampleStoreError, match="cannot keep sample"):
        keeper.save(b"x", {}, "cam", "low")
    assert keeper.count == 0

"""Drift on real footage: vtest.avi through PyAV, with darkened, blurred and frozen input.

The baseline is the first 200 frames' input statistics (every 2nd frame sampled); the rest of
the video is fed unmodified or transformed at full resolution before the same swscale sampling
the agent uses.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from agent.config.health import DriftConfig
from agent.health.drift import DriftChange, DriftCode, DriftMonitor, sample_image
from agent.health.samples import SampleKeeper

FPS = 10.0
BASELINE_FRAMES = 200
STEP = 2  # sample every 2nd frame

Transform = Callable[[av.VideoFrame], av.VideoFrame]


def _cfg() -> DriftConfig:
    return DriftConfig(
        sample_every_s=STEP / FPS,
        baseline_samples=BASELINE_FRAMES // STEP,
        window_samples=50,
        min_recent_samples=50,
        frozen_window_samples=10,
        keep_samples=True,
        keep_every_s=5.0,
    )


def _frames(video: Path) -> Iterator[av.VideoFrame]:
    with av.open(str(video)) as container:
        yield from container.decode(video=0)


def _darken(frame: av.VideoFrame) -> av.VideoFrame:
    bgr = frame.to_ndarray(format="bgr24")
    return av.VideoFrame.from_ndarray((bgr * 0.3).astype(np.uint8), format="bgr24")


def _blur(frame: av.VideoFrame) -> av.VideoFrame:
    """Lose detail as an out-of-focus lens would: swscale down 8x and back up."""
    small = frame.reformat(width=frame.width // 8, height=frame.height // 8)
    return small.reformat(width=frame.width, height=frame.height)


class _Freeze:
    """Repeat the first frame it sees for ever (a camera stuck on one picture)."""

    def __init__(self) -> None:
        self.still: av.VideoFrame | None = None

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        if self.still is None:
            self.still = frame
        return self.still


def _run(
    video: Path, transform: Transform | None, keeper: SampleKeeper | None = None
) -> tuple[DriftMonitor, list[DriftChange], dict[str, float]]:
    mon = DriftMonitor(_cfg(), camera="vtest")
    changes: list[DriftChange] = []
    peak: dict[str, float] = {}
    for i, decoded in enumerate(_frames(video)):
        t = i / FPS
        if not mon.due(t):
            continue
        frame = decoded
        if transform is not None and i >= BASELINE_FRAMES:
            frame = transform(decoded)
        image = sample_image(frame)
        mon.observe_image(image, t)
        changes += mon.check(t)
        for k, v in mon.scores().items():
            peak[k] = max(peak.get(k, 0.0), v)
        if keeper is not None and (reason := mon.keep_reason([], t)) is not None:
            buf = io.BytesIO()
            Image.fromarray(image[..., ::-1]).save(buf, format="JPEG", quality=80)
            keeper.save(buf.getvalue(), {"scores": mon.scores(), "t": t}, mon.camera, reason)
    return mon, changes, peak


def _raised(changes: list[DriftChange]) -> list[DriftCode]:
    return [c.code for c in changes if c.raised]


def test_unmodified_video_stays_below_threshold(assets: Path) -> None:
    mon, changes, peak = _run(assets / "vtest.avi", None)
    assert mon.baseline_progress == 1.0
    assert changes == []
    input_codes = ("brightness", "contrast", "sharpness", "colour")
    assert max(peak[c] for c in input_codes) < mon.cfg.threshold, peak
    assert peak["frozen"] == 0.0


def test_darkened_video_raises_brightness_drift_once(assets: Path) -> None:
    mon, changes, peak = _run(assets / "vtest.avi", _darken)
    assert _raised(changes).count(DriftCode.BRIGHTNESS) == 1
    assert peak["brightness"] > 4 * mon.cfg.threshold
    assert DriftCode.BRIGHTNESS in mon.active
    assert DriftCode.FROZEN not in mon.active


def test_blurred_video_raises_sharpness_drift(assets: Path) -> None:
    mon, changes, peak = _run(assets / "vtest.avi", _blur)
    assert _raised(changes).count(DriftCode.SHARPNESS) == 1
    assert peak["sharpness"] > 4 * mon.cfg.threshold
    assert DriftCode.BRIGHTNESS not in mon.active  # blur keeps the mean light level


def test_frozen_video_raises_frozen_within_its_window(assets: Path) -> None:
    mon, changes, _ = _run(assets / "vtest.avi", _Freeze())
    frozen = [c for c in changes if c.code is DriftCode.FROZEN]
    assert [c.raised for c in frozen] == [True]
    # raised once the frozen window (10 samples of 0.2 s) is full of identical frames
    assert frozen[0].t <= BASELINE_FRAMES / FPS + (mon.cfg.frozen_window_samples + 1) * 0.2
    assert mon.scores()["frozen"] == 1.0


@pytest.mark.parametrize("transform", [_darken], ids=["darken"])
def test_drifted_frames_are_kept_for_labelling(
    assets: Path, tmp_path: Path, transform: Transform
) -> None:
    keeper = SampleKeeper(tmp_path / "samples", max_files=5, max_bytes=10 << 20)
    _run(assets / "vtest.avi", transform, keeper)
    kept = list(keeper.files())
    assert 1 <= len(kept) <= 5
    with Image.open(kept[-1]) as img:
        assert img.size == (160, 120)
    meta = json.loads(kept[-1].with_suffix(".json").read_text())
    assert meta["camera"] == "vtest" and meta["reason"].startswith("drift-")
    assert "brightness" in meta["reason"] and meta["scores"]["brightness"] > 0.25

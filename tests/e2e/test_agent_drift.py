"""Drift in the running agent: a darkened camera raises drift events, vtest itself none."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from agent.app import Agent
from agent.config import load_config
from tests.agent_helpers import agent_config, read_events

DRIFT = {
    "sample_every_s": 0.2,
    "baseline_samples": 100,
    "window_samples": 40,
    "min_recent_samples": 30,
}


def _darkened_copy(src: Path, dst: Path, from_frame: int, factor: float) -> None:
    """vtest re-encoded (H.264), frames from `from_frame` on with brightness * factor."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 768, 576, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i, frame in enumerate(inp.decode(video=0)):
            img = frame.to_ndarray(format="rgb24")
            if i >= from_frame:
                img = (img.astype(np.float32) * factor).astype(np.uint8)
            new = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            new.pts, new.time_base = i, Fraction(1, 10)
            out.mux(stream.encode(new))
        out.mux(stream.encode(None))


def _drift_events(tmp_path: Path, assets: Path, video: Path) -> list[dict[str, object]]:
    source = {"type": "file", "path": str(video)}
    cfg = load_config(agent_config(tmp_path, assets, source=source, extra={"drift": DRIFT}))
    agent = Agent(cfg)
    agent.start()
    agent.wait()
    agent.periodic.check_drift()  # the supervisor's last periodic check, before shutdown
    agent.close()
    return [e for e in read_events(tmp_path / "events.jsonl") if e["rule_type"] == "drift"]


@pytest.mark.slow
def test_darkened_input_raises_brightness_drift_and_vtest_does_not(
    tmp_path: Path, assets: Path
) -> None:
    dark = tmp_path / "dark.mp4"
    _darkened_copy(assets / "vtest.avi", dark, from_frame=400, factor=0.3)
    events = _drift_events(tmp_path / "dark", assets, dark)
    starts = [e for e in events if e["phase"] == "start"]
    assert "drift-brightness" in {e["rule_id"] for e in starts}
    # raised once per episode: each indicator's events alternate start, end
    for rule in {e["rule_id"] for e in events}:
        phases = [e["phase"] for e in events if e["rule_id"] == rule]
        assert phases == ["start", "end"] * (len(phases) // 2), (rule, phases)
    # the unmodified video raises no input drift (its crowd does grow over the 80 s, so
    # detection-rate drift against a 20 s baseline is a real output change, not checked)
    plain = _drift_events(tmp_path / "plain", assets, assets / "vtest.avi")
    assert {e["rule_id"] for e in plain} <= {"drift-detection_rate", "drift-confidence"}

"""Probation: after activation, the agent watches its own health before it commits.

The updater samples `health_probe()` (a dict the composition root builds from the
pipeline's counters) once before activation, which gives the baseline, and every
`poll_s` during the window. Verdicts:

- inference errors in the window above `max_inference_errors`: fail at once;
- at the end of the window, processed fps over the window below `min_fps_ratio` of
  the baseline fps (a model too slow for the live load, or one that wedges);
- detections per frame below `min_detection_ratio` of the baseline rate (a model
  that runs but sees nothing), when the baseline saw enough to judge and the
  window processed at least `min_frames` frames.

Probe keys (cumulative since the process started, except fps): `frames`,
`detections`, `inference_errors`, `fps`. Missing keys count as 0.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.ota import ProbationConfig
from agent.ota.errors import ReasonCode


@dataclass(frozen=True)
class HealthSample:
    frames: int
    detections: int
    errors: int
    fps: float

    @staticmethod
    def of(probe: Mapping[str, Any]) -> HealthSample:
        return HealthSample(
            frames=int(probe.get("frames", 0)),
            detections=int(probe.get("detections", 0)),
            errors=int(probe.get("inference_errors", 0)),
            fps=float(probe.get("fps", 0.0)),
        )

    def baseline(self) -> dict[str, float]:
        """What a later window is compared with (persisted with the update record)."""
        rate = self.detections / self.frames if self.frames else 0.0
        return {"fps": self.fps, "detection_rate": rate, "frames": float(self.frames)}


class Verdict(str, enum.Enum):
    WATCHING = "watching"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: ReasonCode | None = None
    detail: str = ""


def judge(
    cfg: ProbationConfig,
    baseline: Mapping[str, float],
    start: HealthSample,
    now: HealthSample,
    elapsed_s: float,
) -> Judgement:
    """The verdict on the window from `start` to `now` (`elapsed_s` seconds long)."""
    errors = now.errors - start.errors
    if errors > cfg.max_inference_errors:
        return Judgement(
            Verdict.FAILED,
            ReasonCode.PROBATION_ERRORS,
            f"{errors} inference errors (allowed {cfg.max_inference_errors})",
        )
    if elapsed_s < cfg.window_s:
        return Judgement(Verdict.WATCHING)
    frames = now.frames - start.frames
    base_fps = float(baseline.get("fps", 0.0))
    fps = frames / elapsed_s if elapsed_s > 0 else 0.0
    if cfg.min_fps_ratio > 0 and base_fps > 0 and fps < base_fps * cfg.min_fps_ratio:
        return Judgement(
            Verdict.FAILED,
            ReasonCode.PROBATION_FPS,
            f"{fps:.2f} fps in probation vs {base_fps:.2f} before (min ratio {cfg.min_fps_ratio})",
        )
    base_rate = float(baseline.get("detection_rate", 0.0))
    if (
        cfg.min_detection_ratio > 0
        and frames >= max(cfg.min_frames, 1)
        and base_rate >= cfg.min_baseline_detections
    ):
        rate = (now.detections - start.detections) / frames
        if rate < base_rate * cfg.min_detection_ratio:
            return Judgement(
                Verdict.FAILED,
                ReasonCode.PROBATION_DETECTIONS,
                f"{rate:.3f} detections/frame vs {base_rate:.3f} before (min ratio "
                f"{cfg.min_detection_ratio})",
            )
    return Judgement(Verdict.PASSED)


__all__ = ["HealthSample", "Judgement", "Verdict", "judge"]

"""The rollout quality gate: canary detection statistics against a control group.

Pure functions over the health payloads the controller keeps (`Device.last_health`);
no database, no clock. Per device and camera the agent's health section
`cameras.<id>` carries cumulative counters since the agent started
(`frames_processed`, `detections`, `confidence_sum`) and the drift monitor's PSI
scores (`drift.scores.detection_rate`, `drift.scores.confidence`).

Devices that report gauges instead (`detections_per_frame`, `confidence.mean`,
as the fleet simulator does) are used as they are, each standing for
`GAUGE_SECONDS` of frames at its `fps_processed` (or its `frames_processed`).

Counters are compared over a window: the canary's since it committed, control's
since the rollout started (a counter lower than its snapshot means the agent
restarted, so the current value is the window). Per group the windows are pooled
(sums), so a busy camera weighs more than an idle one.

Checks (each `pass`, `fail` or `inconclusive`; the gate fails if any check fails,
passes if none fails and at least one passes):

- detection rate r = detections / frames. Fail when the relative drop
  (r_control - r_canary) / r_control exceeds `max_detection_rate_drop` AND the
  drop is at least `min_z` standard errors, z = (r_c - r_k) / sqrt(r_k/n_k + r_c/n_c)
  (counts per frame taken as Poisson; consecutive frames are correlated, so z is
  optimistic and the relative threshold is the main criterion). Needs `min_frames`
  per group and a control rate above 0.
- mean confidence = confidence_sum / detections. Fail when it falls by more than
  `max_confidence_drop` (absolute). Needs `min_detections` per group.
- output drift: mean over devices of max(PSI detection_rate, PSI confidence) over
  cameras. Fail when the canaries' mean exceeds control's by `max_drift_increase`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.rollout_spec import GateConfig

DRIFT_KEYS = ("detection_rate", "confidence")
GAUGE_SECONDS = 60.0
"""A gauge (`detections_per_frame`) without `frames_processed` stands for this many
seconds of frames at the camera's `fps_processed`."""


class Verdict(str, enum.Enum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Counters:
    """One device's detection statistics (sums over its cameras)."""

    frames: float = 0.0
    detections: float | None = None
    confidence_sum: float | None = None
    drift: float | None = None
    cumulative: bool = True
    """Counters since agent start (windowed), or a gauge snapshot (used as is)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Counters | None:
        if not data:
            return None
        return cls(
            frames=float(data.get("frames") or 0.0),
            detections=_num(data.get("detections")),
            confidence_sum=_num(data.get("confidence_sum")),
            drift=_num(data.get("drift")),
            cumulative=bool(data.get("cumulative", True)),
        )


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _sum(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(sum(present)) if present else None


def _camera(cam: Mapping[str, Any]) -> tuple[float, float | None, float | None, bool]:
    """(frames, detections, confidence sum, cumulative) of one camera section."""
    frames = _num(cam.get("frames_processed"))
    detections = _num(cam.get("detections"))
    if detections is not None:
        return frames or 0.0, detections, _num(cam.get("confidence_sum")), True
    dpf = _num(cam.get("detections_per_frame"))
    if dpf is None:
        return frames or 0.0, None, None, True
    conf = cam.get("confidence")
    mean = _num(conf.get("mean")) if isinstance(conf, Mapping) else _num(cam.get("confidence_mean"))
    if frames is None:
        frames = (_num(cam.get("fps_processed")) or 0.0) * GAUGE_SECONDS
    return frames, dpf * frames, None if mean is None else mean * dpf * frames, False


def counters_from_health(health: Mapping[str, Any] | None) -> Counters | None:
    """The device's counters from a health payload; None without camera sections."""
    cameras = health.get("cameras") if health else None
    if not isinstance(cameras, Mapping) or not cameras:
        return None
    cams = [c for c in cameras.values() if isinstance(c, Mapping)]
    drifts = []
    for cam in cams:
        drift = cam.get("drift")
        scores = drift.get("scores") if isinstance(drift, Mapping) else None
        if isinstance(scores, Mapping):
            drifts += [v for v in (_num(scores.get(k)) for k in DRIFT_KEYS) if v is not None]
    parts = [_camera(c) for c in cams]
    return Counters(
        frames=sum(p[0] for p in parts),
        detections=_sum([p[1] for p in parts]),
        confidence_sum=_sum([p[2] for p in parts]),
        drift=max(drifts) if drifts else None,
        cumulative=all(p[3] for p in parts),
    )


def window(current: Counters, start: Counters | None) -> Counters:
    """Counts since `start`; a counter that went backwards (agent restart) restarts the window."""
    if start is None or not current.cumulative or current.frames < start.frames:
        return current

    def delta(now: float | None, then: float | None) -> float | None:
        if now is None:
            return None
        return now - then if then is not None and now >= then else now

    return Counters(
        frames=current.frames - start.frames,
        detections=delta(current.detections, start.detections),
        confidence_sum=delta(current.confidence_sum, start.confidence_sum),
        drift=current.drift,
    )


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    canary: float | None = None
    control: float | None = None
    threshold: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class GateResult:
    verdict: Verdict
    checks: tuple[Check, ...] = field(default_factory=tuple)
    canary_devices: int = 0
    control_devices: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict.value
        out["checks"] = [{**asdict(c), "verdict": c.verdict.value} for c in self.checks]
        return out

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.verdict is Verdict.FAIL]


@dataclass(frozen=True)
class _Pool:
    devices: int
    frames: float
    detections: float
    conf_sum: float | None
    drift: float | None


def _pool(group: Sequence[Counters]) -> _Pool:
    counted = [c for c in group if c.detections is not None and c.frames > 0]
    conf = [c.confidence_sum for c in counted if c.confidence_sum is not None]
    drifts = [c.drift for c in group if c.drift is not None]
    return _Pool(
        devices=len(counted),
        frames=sum(c.frames for c in counted),
        detections=sum(c.detections or 0.0 for c in counted),
        conf_sum=sum(conf) if conf and len(conf) == len(counted) else None,
        drift=sum(drifts) / len(drifts) if drifts else None,
    )


def _rate_check(k: _Pool, c: _Pool, cfg: GateConfig) -> Check:
    name = "detection_rate"
    if min(k.devices, c.devices) < cfg.min_devices or min(k.frames, c.frames) < cfg.min_frames:
        return Check(name, Verdict.INCONCLUSIVE, detail="too few devices or frames")
    rk, rc = k.detections / k.frames, c.detections / c.frames
    if rc <= 0:
        return Check(name, Verdict.INCONCLUSIVE, rk, rc, detail="control detects nothing")
    drop = (rc - rk) / rc
    se = math.sqrt(rk / k.frames + rc / c.frames)
    z = (rc - rk) / se if se > 0 else 0.0
    bad = drop > cfg.max_detection_rate_drop and z >= cfg.min_z
    detail = f"relative drop {drop:.3f}, z {z:.1f}, frames {k.frames:.0f}/{c.frames:.0f}"
    return Check(
        name,
        Verdict.FAIL if bad else Verdict.PASS,
        round(rk, 4),
        round(rc, 4),
        cfg.max_detection_rate_drop,
        detail,
    )


def _confidence_check(k: _Pool, c: _Pool, cfg: GateConfig) -> Check | None:
    if cfg.max_confidence_drop is None:
        return None
    name = "mean_confidence"
    if k.conf_sum is None or c.conf_sum is None:
        return Check(name, Verdict.INCONCLUSIVE, detail="no confidence_sum in health")
    if min(k.detections, c.detections) < cfg.min_detections:
        return Check(name, Verdict.INCONCLUSIVE, detail="too few detections")
    mk, mc = k.conf_sum / k.detections, c.conf_sum / c.detections
    bad = mc - mk > cfg.max_confidence_drop
    return Check(
        name,
        Verdict.FAIL if bad else Verdict.PASS,
        round(mk, 4),
        round(mc, 4),
        cfg.max_confidence_drop,
        f"drop {mc - mk:.3f}",
    )


def _drift_check(k: _Pool, c: _Pool, cfg: GateConfig) -> Check | None:
    if cfg.max_drift_increase is None:
        return None
    if k.drift is None or c.drift is None:
        return Check("output_drift", Verdict.INCONCLUSIVE, detail="no drift scores in health")
    bad = k.drift - c.drift > cfg.max_drift_increase
    return Check(
        "output_drift",
        Verdict.FAIL if bad else Verdict.PASS,
        round(k.drift, 4),
        round(c.drift, 4),
        cfg.max_drift_increase,
    )


def evaluate_gate(
    canary: Sequence[Counters], control: Sequence[Counters], cfg: GateConfig
) -> GateResult:
    """Compare the canaries' windows with control's (see the module docstring)."""
    if not control:
        return GateResult(
            Verdict.INCONCLUSIVE,
            (Check("control", Verdict.INCONCLUSIVE, detail="no devices left on the old version"),),
            len(canary),
            0,
        )
    k, c = _pool(canary), _pool(control)
    checks = [_rate_check(k, c, cfg), _confidence_check(k, c, cfg), _drift_check(k, c, cfg)]
    done = tuple(ch for ch in checks if ch is not None)
    verdicts = {ch.verdict for ch in done}
    if Verdict.FAIL in verdicts:
        verdict = Verdict.FAIL
    elif Verdict.PASS in verdicts:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    return GateResult(verdict, done, len(canary), len(control))

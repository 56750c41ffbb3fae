"""Resilience configuration: the backend degradation ladder and fair overload control.

`LadderConfig` lists the backends to try, best first (e.g. TensorRT EP, CUDA EP, CPU),
with the fault thresholds that move inference down a rung and the timer that tries to
climb back. `OverloadConfig` tunes the per-camera fair rate controller. See
docs/degradation.md.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.config.base import StrictModel
from agent.config.inference import BackendConfig, OnnxRuntimeBackendConfig


def _default_rungs() -> list[BackendConfig]:
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    return [OnnxRuntimeBackendConfig(type="onnxruntime", providers=[p]) for p in providers]


def rung_key(cfg: BackendConfig) -> str:
    """A rung's name in health and events: the backend type plus its first provider."""
    providers: list[str] | None = getattr(cfg, "providers", None)
    return f"{cfg.type}:{providers[0]}" if providers else cfg.type


class LadderConfig(StrictModel):
    """Backends in order of preference and when to move between them."""

    enabled: bool = Field(
        default=True, description="Use the ladder; false runs the single top-level backend."
    )
    rungs: list[BackendConfig] = Field(
        default_factory=_default_rungs,
        min_length=1,
        description="Backends, best first. A rung whose runtime or provider is missing on "
        "this device counts as a load failure and the next one is tried.",
    )
    inference_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="An inference taking longer than this is abandoned, its rung marked "
        "faulted and the frame retried on the next rung.",
    )
    load_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="A rung that takes longer than this to load (session or engine creation) "
        "counts as a load failure.",
    )
    failures_to_degrade: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Consecutive inference errors on one rung that move inference down a "
        "rung (the last rung is never left for errors).",
    )
    climb_back_after_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="Time on a lower rung before trying the better rungs again; doubles "
        "after each failed attempt up to climb_back_max_s.",
    )
    climb_back_max_s: float = Field(
        default=900.0,
        gt=0,
        le=86400,
        description="Cap on the climb-back delay. A rung that faults within this time of "
        "being climbed to also doubles the delay (no flapping).",
    )
    cpu_fallback_max_fps: float | None = Field(
        default=5.0,
        gt=0,
        le=240,
        description="Per-camera fps cap while degraded onto a CPU rung (null: no cap). Not "
        "applied when the best rung itself is a CPU rung.",
    )

    @model_validator(mode="after")
    def _check(self) -> LadderConfig:
        keys = [rung_key(r) for r in self.rungs]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate ladder rungs: {', '.join(dupes)}")
        if self.climb_back_max_s < self.climb_back_after_s:
            raise ValueError("climb_back_max_s must be >= climb_back_after_s")
        return self


class OverloadConfig(StrictModel):
    """Fair per-camera rate control when inference cannot keep up (docs/degradation.md)."""

    enabled: bool = Field(default=True, description="Lower camera fps fairly under overload.")
    interval_s: float = Field(
        default=2.0, gt=0, le=60, description="How often the controller is fed and decides."
    )
    min_fps: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="No camera's target goes below this (no camera starved), even if the "
        "floors together exceed the capacity.",
    )
    headroom: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Share of the measured inference capacity handed out to cameras.",
    )
    drop_high: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Share of frames dropped at the mailbox that counts as overload.",
    )
    drop_low: float = Field(
        default=0.02,
        ge=0,
        lt=1,
        description="Drop share at or below which targets may be raised again.",
    )
    engage_ticks: int = Field(
        default=2, ge=1, le=100, description="Consecutive overloaded ticks before acting."
    )
    recover_ticks: int = Field(
        default=3, ge=1, le=100, description="Consecutive calm ticks between raising steps."
    )
    recover_step: float = Field(
        default=0.15,
        gt=0,
        le=1,
        description="Each recovery step raises the total fps budget by this fraction.",
    )
    band: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="Hysteresis: capacity changes smaller than this fraction move nothing.",
    )
    hold_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="After a cut forced by drops, no raise for this long (the capacity "
        "estimate proved too high).",
    )
    smoothing: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="EWMA weight of a new capacity or demand measurement (1: no smoothing).",
    )
    fps_step: float = Field(
        default=0.5,
        ge=0,
        le=10,
        description="A camera's target changes only when it moves by at least this many fps.",
    )

    @model_validator(mode="after")
    def _check(self) -> OverloadConfig:
        if self.drop_low >= self.drop_high:
            raise ValueError("drop_low must be below drop_high")
        return self


__all__ = ["LadderConfig", "OverloadConfig", "rung_key"]

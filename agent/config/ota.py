"""Over-the-air update settings (docs/ota.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from agent.config.base import StrictModel


class ProbationConfig(StrictModel):
    """How long and how strictly a freshly activated version is watched before commit."""

    window_s: float = Field(
        default=300.0, ge=0.1, le=86_400, description="Probation window in seconds."
    )
    poll_s: float = Field(
        default=1.0, gt=0, le=60, description="How often health is sampled during probation."
    )
    max_inference_errors: int = Field(
        default=0, ge=0, description="Inference errors tolerated in the window (more: roll back)."
    )
    min_fps_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Roll back when processed fps over the window falls below this fraction "
        "of the pre-update fps (0 disables).",
    )
    min_detection_ratio: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Roll back when detections per frame fall below this fraction of the "
        "pre-update rate (0 disables).",
    )
    min_baseline_detections: float = Field(
        default=0.05,
        ge=0,
        description="Detections per frame the baseline needs before the detection-rate check "
        "applies (a camera watching an empty street says nothing about a new model).",
    )
    min_frames: int = Field(
        default=10,
        ge=0,
        description="Frames the window must process before the fps and detection checks apply.",
    )
    crash_restarts: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Process restarts tolerated while activating or in probation before the "
        "update is rolled back (a power cut is not the model's fault; a crash loop is).",
    )


class OtaConfig(StrictModel):
    enabled: bool = Field(default=False, description="Follow the fleet's desired state.")
    public_key: Path | None = Field(
        default=None,
        description="The fleet's Ed25519 public key (PEM), pinned at provisioning.",
    )
    ca_file: Path | None = Field(
        default=None, description="CA bundle for https artifact URLs (default: system store)."
    )
    download_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Socket timeout of one download request."
    )
    retry_initial_s: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="First wait after a transient failure (network, HTTP 5xx); transient "
        "failures are retried without limit, each download attempt resuming the last.",
    )
    retry_max_s: float = Field(
        default=120.0, gt=0, le=3600, description="Cap of the wait between attempts."
    )
    max_artifact_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="Largest artifact the device accepts."
    )
    min_free_bytes: int = Field(
        default=256 * 1024**2,
        ge=0,
        description="Free space that must remain in the state folder after download and "
        "staging; an update that would eat into it is refused before it starts.",
    )
    latency_budget_ms: float = Field(
        default=200.0, gt=0, description="Median latency a new model may take per frame."
    )
    latency_runs: int = Field(
        default=10, ge=1, le=1000, description="Timed inferences when validating latency."
    )
    retention: int = Field(
        default=3,
        ge=2,
        le=100,
        description="Model versions kept on disk; the active and previous are never pruned.",
    )
    probation: ProbationConfig = Field(
        default_factory=ProbationConfig, description="Post-activation health watch."
    )

    @model_validator(mode="after")
    def _key_when_enabled(self) -> OtaConfig:
        if self.enabled and self.public_key is None:
            raise ValueError("ota.enabled needs ota.public_key (the fleet's pinned public key)")
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be >= retry_initial_s")
        return self


__all__ = ["OtaConfig", "ProbationConfig"]

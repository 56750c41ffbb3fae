"""Model, backend and tracker configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.config.base import StrictModel
from agent.config.tensorrt import TensorRTBackendConfig


class OnnxRuntimeBackendConfig(StrictModel):
    type: Literal["onnxruntime"] = Field(description="ONNX Runtime (CPU; CUDA/TensorRT EPs).")
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="Execution providers in order of preference.",
    )
    workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Inference worker threads, each with its own session. On a CPU, several "
        "single-threaded sessions outrun one multi-threaded session.",
    )
    intra_op_threads: int = Field(
        default=1, ge=0, le=64, description="Threads per session (0 = ONNX Runtime's default)."
    )


BackendConfig = Annotated[
    OnnxRuntimeBackendConfig | TensorRTBackendConfig, Field(discriminator="type")
]


class ModelConfig(StrictModel):
    path: Path = Field(description="Model folder: the ONNX file plus model.json.")
    score_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Override the manifest's score threshold."
    )
    nms_threshold: float | None = Field(
        default=None, ge=0, le=1, description="Override the manifest's NMS IoU threshold."
    )
    verify_sha256: bool = Field(
        default=True, description="Check the ONNX file against the manifest's sha256 at load."
    )


class TrackerConfig(StrictModel):
    """ByteTrack tuning; see docs/tracking.md. Times are seconds of stream time."""

    high_score: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Detections at or above this take part in the first association stage.",
    )
    low_score: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Detections below this are ignored entirely; those between low_score and "
        "high_score only keep existing tracks alive (second stage). The model's score "
        "threshold must be at or below this for the second stage to see them.",
    )
    new_track_score: float = Field(
        default=0.6, ge=0, le=1, description="Unmatched detections above this start a track."
    )
    match_iou: float = Field(
        default=0.2, ge=0, le=1, description="Minimum IoU for a first-stage match."
    )
    low_match_iou: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Minimum IoU for a second-stage match (low-score detections).",
    )
    unconfirmed_match_iou: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Minimum IoU for matching a not yet confirmed track.",
    )
    max_lost_s: float = Field(
        default=3.0, gt=0, le=600, description="Drop a track not seen for this long."
    )
    coast_s: float = Field(
        default=1.0,
        ge=0,
        le=600,
        description="Keep reporting a confirmed track on its predicted box for this long "
        "after its last match (0: report matched tracks only). At most max_lost_s.",
    )
    min_hits: int = Field(
        default=2, ge=1, le=100, description="Matches needed before a track is reported."
    )

    @model_validator(mode="after")
    def _ordered(self) -> TrackerConfig:
        if not self.low_score <= self.high_score <= self.new_track_score:
            raise ValueError("need low_score <= high_score <= new_track_score")
        if self.coast_s > self.max_lost_s:
            raise ValueError("coast_s must not exceed max_lost_s")
        return self

"""Camera and source configuration (owned by the ingest stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.config.base import StrictModel
from agent.config.rules import RuleConfig

CameraId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Camera id: letters, digits, '_', '.', '-' (no MQTT wildcards or '/').",
    ),
]


class FileSourceConfig(StrictModel):
    type: Literal["file"] = Field(description="A video file read through PyAV.")
    path: Path = Field(description="Path of the video file.")
    loop: bool = Field(default=False, description="Start again at the end (a live-like feed).")
    pace: bool = Field(
        default=False,
        description="Deliver frames at the file's native frame rate, as a live camera would. "
        "Unpaced files hand frames over without dropping any (deterministic offline runs).",
    )


class RtspSourceConfig(StrictModel):
    type: Literal["rtsp"] = Field(description="An RTSP camera.")
    url: str = Field(
        pattern=r"^rtsps?://", description="rtsp:// URL; credentials in it are redacted in logs."
    )
    transport: Literal["tcp", "udp"] = Field(default="tcp", description="RTP transport.")
    open_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Give up opening (connect, RTSP handshake, probing) after this long. "
        "Reads time out after the camera's stall_timeout_s.",
    )


class UsbSourceConfig(StrictModel):
    type: Literal["usb"] = Field(description="A V4L2 (USB/CSI via v4l2) camera.")
    device: str = Field(default="/dev/video0", pattern=r"^/dev/", description="V4L2 device node.")
    width: int | None = Field(default=None, gt=0, le=8192, description="Requested width.")
    height: int | None = Field(default=None, gt=0, le=8192, description="Requested height.")
    fps: float | None = Field(default=None, gt=0, le=240, description="Requested frame rate.")
    input_format: str | None = Field(
        default=None, description="V4L2 pixel format to request, e.g. 'mjpeg' or 'yuyv422'."
    )


SourceConfig = Annotated[
    FileSourceConfig | RtspSourceConfig | UsbSourceConfig, Field(discriminator="type")
]


class ReconnectConfig(StrictModel):
    initial_s: float = Field(default=1.0, gt=0, le=60, description="First retry delay.")
    max_s: float = Field(default=30.0, gt=0, le=3600, description="Cap on the retry delay.")
    multiplier: float = Field(default=2.0, ge=1, le=10, description="Backoff growth factor.")
    jitter: float = Field(
        default=0.2, ge=0, le=1, description="Random +/- fraction applied to each delay."
    )
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        description="Give up (camera state 'failed') after this many consecutive failures; "
        "null retries forever.",
    )

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")
        return self


class CameraConfig(StrictModel):
    id: CameraId
    source: SourceConfig
    enabled: bool = Field(default=True, description="Disabled cameras are not opened.")
    max_fps: float | None = Field(
        default=None, gt=0, le=240, description="Infer at most this many frames per second."
    )
    stall_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="No frame for this long while connected counts as a stall: reconnect.",
    )
    decoder_threads: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Software decoder threads for this camera. Above 1, FFmpeg's slice "
        "threading is used, never frame threading (it has crashed on corrupt streams).",
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Reconnect backoff."
    )
    rules: list[RuleConfig] = Field(default_factory=list, description="Rules on this camera.")

    @model_validator(mode="after")
    def _unique_rule_ids(self) -> CameraConfig:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate rule ids: {', '.join(dupes)}")
        return self

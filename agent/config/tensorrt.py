"""Configuration of the native TensorRT backend (`agent.inference.tensorrt`).

One member of the `BackendConfig` discriminated union (`type: tensorrt`). The engine
is built on the device from the model folder's ONNX and cached under `cache_dir`;
see docs/jetson.md for installing TensorRT and pycuda on JetPack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.config.base import StrictModel

DEFAULT_ENGINE_DIR = Path("/var/lib/edge-agent/engines")
"""Where engines go when `cache_dir` is not set and no state_dir is known."""

Precision = Literal["fp16", "fp32"]


class TensorRTBackendConfig(StrictModel):
    type: Literal["tensorrt"] = Field(
        description="Native TensorRT (8.6 / 10.x tensor API, pycuda buffers, one CUDA stream)."
    )
    precision: Precision = Field(
        default="fp16",
        description="fp16 (default) or fp32. On TensorRT 8.6/10 fp16 is a builder flag; on "
        "TensorRT 11 (strongly typed) fp16 needs an FP16 ONNX converted at staging time. "
        "INT8 is used only when the ONNX carries explicit Q/DQ nodes (no calibration).",
    )
    max_batch: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Most frames per inference when the ONNX has a dynamic batch dimension "
        "(frames of several cameras batched together). A static-batch model runs per frame.",
    )
    workspace_mb: int = Field(
        default=1024,
        ge=16,
        le=65536,
        description="Builder workspace memory pool limit in MiB (Jetson shares it with the CPU).",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Folder for built engines and their index.json; null means "
        "<device.state_dir>/engines.",
    )
    build_timeout_s: float = Field(
        default=1800.0,
        ge=10,
        le=86_400,
        description="Time budget of one engine build; a build over budget fails and is reported.",
    )
    device_index: int = Field(default=0, ge=0, le=15, description="CUDA device ordinal.")
    batch_wait_ms: float = Field(
        default=5.0,
        ge=0,
        le=200,
        description="How long the inference thread waits for more ready cameras to fill a "
        "batch after the first frame arrives (dynamic-batch models only).",
    )


def engine_dir(cfg: TensorRTBackendConfig, state_dir: Path | None = None) -> Path:
    """The engine cache folder: `cache_dir`, else `<state_dir>/engines`, else the default."""
    if cfg.cache_dir is not None:
        return cfg.cache_dir
    if state_dir is not None:
        return state_dir / "engines"
    return DEFAULT_ENGINE_DIR


__all__ = ["DEFAULT_ENGINE_DIR", "Precision", "TensorRTBackendConfig", "engine_dir"]

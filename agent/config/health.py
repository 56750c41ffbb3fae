"""Health-side configuration: the drift monitor and the resource guard (docs/drift.md)."""

from __future__ import annotations

from pydantic import Field, model_validator

from agent.config.base import StrictModel

_MIB = 1024 * 1024


class DriftConfig(StrictModel):
    enabled: bool = Field(default=True, description="Run the per-camera drift monitor.")
    sample_every_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Take input statistics from at most one frame per this many seconds.",
    )
    baseline_samples: int = Field(
        default=600,
        ge=20,
        le=1_000_000,
        description="Samples in the baseline window (the first ones after start or re-baseline).",
    )
    window_samples: int = Field(
        default=300,
        ge=10,
        le=1_000_000,
        description="Samples in the rolling recent window compared with the baseline.",
    )
    min_recent_samples: int = Field(
        default=100,
        ge=5,
        le=1_000_000,
        description="Scores stay 0 until the recent window holds this many samples.",
    )
    bins: int = Field(
        default=10, ge=2, le=50, description="Quantile bins learned from the baseline (PSI)."
    )
    epsilon: float = Field(
        default=1e-4,
        gt=0,
        le=0.01,
        description="Added to every bin proportion before PSI so empty bins stay finite.",
    )
    threshold: float = Field(
        default=0.25,
        gt=0,
        le=100,
        description="PSI above this raises drift (conventional: <0.1 stable, 0.1-0.25 "
        "moderate, >0.25 significant shift).",
    )
    hysteresis: float = Field(
        default=0.6,
        gt=0,
        lt=1,
        description="A raised drift clears once its score falls below threshold * hysteresis.",
    )
    tolerance_brightness: float = Field(
        default=10.0,
        ge=0,
        le=255,
        description="Brightness tolerance, luma levels: each sample is spread over +/- this "
        "before binning, so smaller shifts cannot raise drift however stable the baseline.",
    )
    tolerance_contrast: float = Field(
        default=6.0, ge=0, le=255, description="Contrast tolerance, luma levels (std)."
    )
    tolerance_sharpness: float = Field(
        default=0.3,
        ge=0,
        le=10,
        description="Sharpness tolerance in natural-log units of the Laplacian variance "
        "(0.3 is about +/-35 %).",
    )
    tolerance_colour: float = Field(
        default=6.0, ge=0, le=255, description="Colour-cast tolerance, levels of B-G and R-G."
    )
    tolerance_detections: float = Field(
        default=2.0, ge=0, le=10_000, description="Detections-per-frame tolerance, detections."
    )
    tolerance_confidence: float = Field(
        default=0.05, ge=0, le=1, description="Confidence tolerance, score units."
    )
    frozen_max_diff: float = Field(
        default=0.05,
        ge=0,
        le=255,
        description="Mean absolute luma difference (0-255) to the previous sample at or "
        "below which a sample counts as frozen (identical frames give 0).",
    )
    frozen_window_samples: int = Field(
        default=30,
        ge=2,
        le=100_000,
        description="Recent samples over which the frozen fraction is taken.",
    )
    frozen_fraction: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description="Raise FROZEN when more than this fraction of the frozen window is frozen.",
    )
    min_scores: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        description="Confidence PSI needs this many detection scores in baseline and window.",
    )
    keep_samples: bool = Field(
        default=False,
        description="Keep JPEGs of low-confidence or drifted frames for later labelling.",
    )
    keep_every_s: float = Field(
        default=60.0, ge=0, le=86400, description="At most one kept frame per camera this often."
    )
    low_confidence: tuple[float, float] = Field(
        default=(0.25, 0.5),
        description="A frame whose best detection score lies in [low, high) is 'uncertain'.",
    )
    max_sample_files: int = Field(
        default=500, ge=1, le=1_000_000, description="Kept frames on disk (oldest deleted)."
    )
    max_sample_bytes: int = Field(
        default=200 * _MIB,
        ge=_MIB,
        le=1 << 40,
        description="Bytes of kept frames on disk, JPEG plus sidecar (oldest deleted).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DriftConfig:
        if self.min_recent_samples > self.window_samples:
            raise ValueError("min_recent_samples must be <= window_samples")
        lo, hi = self.low_confidence
        if not 0 <= lo < hi <= 1:
            raise ValueError("low_confidence must be (low, high) with 0 <= low < high <= 1")
        return self


class ResourceConfig(StrictModel):
    enabled: bool = Field(default=True, description="Run the resource guard.")
    poll_interval_s: float = Field(
        default=5.0, gt=0, le=600, description="How often the guard reads the sensors."
    )
    malloc_trim_interval_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="How often freed native heap is handed back to the kernel (glibc "
        "malloc_trim; keeps RSS from creeping on long runs); 0 turns it off.",
    )
    thermal_reduce_c: float = Field(
        default=80.0,
        ge=30,
        le=150,
        description="Hottest thermal zone at or above this: reduce load (REDUCE).",
    )
    thermal_critical_c: float = Field(
        default=92.0,
        ge=30,
        le=150,
        description="Hottest thermal zone at or above this: minimum load (CRITICAL). Keep it "
        "below the SoC's own software throttling point.",
    )
    thermal_hysteresis_c: float = Field(
        default=5.0, ge=0, le=30, description="A thermal level clears this many degrees lower."
    )
    thermal_ignore: list[str] = Field(
        default_factory=lambda: ["PMIC-Die"],
        description="Thermal zone types to ignore, case-insensitive (PMIC-Die reads a fixed "
        "100 C on several Jetsons).",
    )
    memory_reduce_fraction: float = Field(
        default=0.10,
        gt=0,
        lt=1,
        description="MemAvailable/MemTotal below this: REDUCE.",
    )
    memory_critical_fraction: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="MemAvailable/MemTotal below this: CRITICAL.",
    )
    memory_hysteresis_fraction: float = Field(
        default=0.03, ge=0, le=0.5, description="A memory level clears this much higher."
    )
    disk_reduce_bytes: int = Field(
        default=1024 * _MIB,
        ge=0,
        description="Free bytes in the state dir below this: rotate data (DISK_LOW).",
    )
    disk_critical_bytes: int = Field(
        default=200 * _MIB,
        ge=0,
        description="Free bytes below this: stop optional writes (DISK_CRITICAL).",
    )
    disk_hysteresis_bytes: int = Field(
        default=100 * _MIB, ge=0, description="A disk level clears this many bytes higher."
    )
    reduce_fps_scale: float = Field(
        default=0.5, gt=0, le=1, description="Target-fps factor while thermal/memory REDUCE."
    )
    critical_fps_scale: float = Field(
        default=0.2, gt=0, le=1, description="Target-fps factor while thermal/memory CRITICAL."
    )
    tegrastats: bool = Field(
        default=True, description="Read GPU load from tegrastats where the binary exists."
    )
    tegrastats_interval_ms: int = Field(
        default=1000, ge=100, le=60_000, description="tegrastats --interval, milliseconds."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ResourceConfig:
        if self.thermal_critical_c <= self.thermal_reduce_c:
            raise ValueError("thermal_critical_c must be above thermal_reduce_c")
        if self.memory_critical_fraction >= self.memory_reduce_fraction:
            raise ValueError("memory_critical_fraction must be below memory_reduce_fraction")
        if self.disk_critical_bytes > self.disk_reduce_bytes:
            raise ValueError("disk_critical_bytes must be <= disk_reduce_bytes")
        if self.critical_fps_scale > self.reduce_fps_scale:
            raise ValueError("critical_fps_scale must be <= reduce_fps_scale")
        return self

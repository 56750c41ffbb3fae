"""What a rollout is asked to do: the operator's spec, the state codes, the wave plan.

Pure: pydantic models (`extra="forbid"`, a description on every field) and small
functions, no database and no MQTT. The engine (`fleet.rollouts`) stores the
validated spec as JSON on the rollout row and reads it back with `RolloutSpec`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet.schemas import ArtifactPick

DEFAULT_WAVES = ("1", "10%", "50%", "100%")


class RolloutState(str, enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    ABORTED = "aborted"


ACTIVE_ROLLOUT_STATES = frozenset({RolloutState.RUNNING.value, RolloutState.PAUSED.value})


class WaveState(str, enum.Enum):
    WAITING = "waiting"
    UPDATING = "updating"
    PROBATION = "probation"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"


class DeviceRolloutState(str, enum.Enum):
    """`waiting` (not launched yet), the device's own OTA positions, and `timed_out`.

    The middle values are agent.ota.state.UpdateState's, spelled out so the controller's
    enum stays a plain one; tests/fleet/test_state_contract.py keeps the two in step."""

    WAITING = "waiting"
    PENDING = "pending"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    VALIDATING = "validating"
    ACTIVATING = "activating"
    PROBATION = "probation"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"


D = DeviceRolloutState
OTA_STATES = frozenset(s.value for s in D if s not in (D.WAITING, D.TIMED_OUT))
"""States a device reports in `reported.update.state`."""
IN_FLIGHT = frozenset(
    s.value
    for s in (
        D.PENDING,
        D.DOWNLOADING,
        D.VERIFYING,
        D.STAGING,
        D.VALIDATING,
        D.ACTIVATING,
        D.PROBATION,
    )
)
FAILURE_STATES = frozenset({D.FAILED.value, D.ROLLED_BACK.value, D.TIMED_OUT.value})


class Selector(BaseModel):
    """Which devices: every id listed, plus every device carrying all the tags listed."""

    model_config = ConfigDict(extra="forbid")
    tags: list[str] = Field(default_factory=list, description="Devices with all these tags.")
    device_ids: list[str] = Field(default_factory=list, description="These devices.")

    @model_validator(mode="after")
    def _not_empty(self) -> Selector:
        if not self.tags and not self.device_ids:
            raise ValueError("target needs tags or device_ids (a rollout never targets 'all')")
        return self

    def matches(self, device_id: str, tags: Sequence[str]) -> bool:
        if device_id in self.device_ids:
            return True
        return bool(self.tags) and set(self.tags) <= set(tags)


class WaveSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: str = Field(
        pattern=r"^[1-9][0-9]*%?$",
        description="Cumulative size after this wave: a device count ('1') or a percentage "
        "of the target ('10%').",
    )
    probation_s: float | None = Field(
        default=None, ge=0, description="Probation window of this wave (default: the rollout's)."
    )

    @field_validator("size")
    @classmethod
    def _percent_range(cls, v: str) -> str:
        if v.endswith("%") and int(v[:-1]) > 100:
            raise ValueError("a percentage is at most 100%")
        return v


class Deadlines(BaseModel):
    """Seconds a device may stay in each in-flight state before it counts as `timed_out`."""

    model_config = ConfigDict(extra="forbid")
    pending: float = Field(default=900, gt=0, description="From launch to its first report.")
    downloading: float = Field(default=1800, gt=0, description="Downloading the artifact.")
    verifying: float = Field(default=300, gt=0, description="Checking signature and hash.")
    staging: float = Field(default=300, gt=0, description="Unpacking into the spare slot.")
    validating: float = Field(default=600, gt=0, description="Loading / test inference.")
    activating: float = Field(default=300, gt=0, description="Switching over.")
    probation: float = Field(default=3600, gt=0, description="The device's own probation.")

    def of(self, state: str) -> float | None:
        value = getattr(self, state, None) if state in IN_FLIGHT else None
        return float(value) if value is not None else None


class GateConfig(BaseModel):
    """The quality gate: canaries (committed devices) against control (not yet launched)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=True, description="Evaluate the gate during wave probation.")
    min_frames: int = Field(
        default=500, ge=1, description="Frames each group must have processed for a verdict."
    )
    max_detection_rate_drop: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="Halt when canary detections/frame fall by more "
        "than this fraction of control's (and by at least min_z standard errors).",
    )
    min_z: float = Field(
        default=3.0,
        ge=0,
        description="Standard errors the detection-rate drop must reach to count.",
    )
    min_detections: int = Field(
        default=100, ge=1, description="Detections each group needs for the confidence check."
    )
    max_confidence_drop: float | None = Field(
        default=0.1, gt=0, description="Halt when mean confidence falls by more (absolute)."
    )
    max_drift_increase: float | None = Field(
        default=0.5,
        gt=0,
        description="Halt when the canaries' mean output-drift PSI exceeds "
        "control's by more than this.",
    )
    min_devices: int = Field(default=1, ge=1, description="Devices each group needs.")
    require_conclusive: bool = Field(
        default=False, description="Halt instead of proceeding when the gate has too little data."
    )


class RolloutSpec(BaseModel):
    """What the operator asks for (POST /api/rollouts, `edge-fleet rollout start`)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, description="Operator's label.")
    target: Selector = Field(description="Which devices.")
    model: ArtifactPick | None = Field(default=None, description="Model artifact to roll out.")
    config: ArtifactPick | None = Field(default=None, description="Config artifact to roll out.")
    waves: list[WaveSpec] = Field(
        default_factory=lambda: [WaveSpec(size=s) for s in DEFAULT_WAVES],
        min_length=1,
        max_length=20,
        description="Cumulative wave sizes, in order.",
    )
    probation_s: float = Field(default=600, ge=0, description="Default probation per wave.")
    success_threshold: float = Field(
        default=0.95, gt=0, le=1, description="Fraction of a wave that must commit."
    )
    failure_threshold: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Halt when more than this fraction of a wave failed, rolled back or timed out.",
    )
    deadlines_s: Deadlines = Field(default_factory=Deadlines, description="Per-state deadlines.")
    quality_gate: GateConfig = Field(default_factory=GateConfig, description="Quality gate.")

    @field_validator("waves", mode="before")
    @classmethod
    def _short_waves(cls, v: object) -> object:
        """Accept "10%" or 3 as shorthand for {"size": "10%"} / {"size": "3"}."""
        if not isinstance(v, list):
            return v
        out: list[object] = []
        for w in v:
            if isinstance(w, str | int):
                out.append({"size": str(w)})
            elif isinstance(w, dict) and isinstance(w.get("size"), int):
                out.append({**w, "size": str(w["size"])})
            else:
                out.append(w)
        return out

    @model_validator(mode="after")
    def _something_to_roll_out(self) -> RolloutSpec:
        if self.model is None and self.config is None:
            raise ValueError("a rollout needs a model, a config or both")
        return self

    def probation_of(self, wave: int) -> float:
        own = self.waves[wave].probation_s
        return self.probation_s if own is None else own


def cumulative_target(size: str, total: int) -> int:
    """Devices updated after a wave of `size` ('3' or '10%'); percentages round up."""
    if size.endswith("%"):
        return min(total, max(1, math.ceil(total * int(size[:-1]) / 100)))
    return min(total, int(size))


def plan_waves(total: int, waves: Sequence[WaveSpec]) -> list[tuple[int, int]]:
    """(index into `waves`, devices in that wave) for each non-empty wave, in order.

    Sizes are cumulative: [1, 10%, 50%, 100%] over 40 devices gives waves of
    1, 3, 16 and 20. A wave that adds nobody (10% of 5 after 1) is left out.
    """
    out: list[tuple[int, int]] = []
    done = 0
    for i, wave in enumerate(waves):
        cum = max(done, cumulative_target(wave.size, total))
        if cum > done:
            out.append((i, cum - done))
            done = cum
    return out

"""How the rollout engine reads one device: pure functions, no database, no MQTT.

`TargetKeys` says which `reported` updates are about a rollout's artifacts,
`overlay_desired` builds the desired state a launched device is sent, `next_state`
turns a device's retained report (or an expired deadline) into its next rollout
state, and `gate_windows` / `canary_start` give the quality gate each device's
counters since its window started (`fleet.rollout_gate` judges them). The engine
(`fleet.rollouts.RolloutEngine`) applies them to the rows it loads each tick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.protocol import DesiredState
from fleet.models import Device, Reported
from fleet.rollout_gate import Counters, counters_from_health, window
from fleet.rollout_models import RolloutDevice
from fleet.rollout_spec import OTA_STATES, RolloutSpec
from fleet.rollout_spec import DeviceRolloutState as D

RECOVERABLE = frozenset({D.COMMITTED.value, D.FAILED.value, D.ROLLED_BACK.value})


@dataclass(frozen=True)
class TargetKeys:
    """Which reports are about this rollout. In `reported.update`, the first present of:
    `sequence` (a target artifact's manifest sequence), `target` (`{"model": version,
    "config": version}` agreeing on every artifact rolled out), `version`."""

    sequences: frozenset[int]
    versions: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, desired: dict[str, Any]) -> TargetKeys:
        refs = {k: r for k in ("model", "config") if isinstance(r := desired.get(k), dict)}
        return cls(
            frozenset(int(r["sequence"]) for r in refs.values()),
            tuple((k, str(r["version"])) for k, r in refs.items()),
        )

    def matches(self, payload: dict[str, Any]) -> bool:
        upd = payload.get("update")
        if not isinstance(upd, dict):
            return False
        seq, target = upd.get("sequence"), upd.get("target")
        if isinstance(seq, int) and not isinstance(seq, bool):
            return seq in self.sequences
        if isinstance(target, dict):
            return all(str(target.get(k)) == v for k, v in self.versions)
        version = upd.get("version")
        return version is not None and str(version) in {v for _, v in self.versions}


def overlay_desired(previous: dict[str, Any] | None, refs: dict[str, Any]) -> dict[str, Any]:
    """The device's previous desired state with the rollout's artifacts laid over it."""
    out = dict(previous or {})
    out.update({k: v for k, v in refs.items() if v is not None})
    out["schema"] = 1
    return DesiredState.model_validate(out).model_dump(mode="json", by_alias=True)


def next_state(
    row: RolloutDevice, rep: Reported | None, keys: TargetKeys, spec: RolloutSpec, now: float
) -> tuple[str | None, str | None]:
    """(new state, error) of a launched device, or (None, None) when nothing changed.

    A report counts if it is about this rollout's artifact and, except `committed`,
    arrived after the device's wave was launched (a retained `failed` from an
    earlier attempt must not fail the new one). `timed_out` is left only for a
    terminal report.
    """
    reported = None
    if rep is not None and rep.update_state in OTA_STATES and keys.matches(rep.payload):
        fresh = row.launched_at is not None and rep.received_at >= row.launched_at
        if fresh or rep.update_state == D.COMMITTED.value:
            reported = rep.update_state
    if (
        reported is not None
        and reported != row.state
        and (row.state != D.TIMED_OUT.value or reported in RECOVERABLE)
    ):
        upd = rep.payload.get("update") if rep is not None else None
        error = upd.get("error") if isinstance(upd, dict) else None
        return reported, None if error is None else str(error)[:256]
    limit = spec.deadlines_s.of(row.state)
    if limit is not None and now - row.state_since > limit:
        return D.TIMED_OUT.value, f"{row.state} for more than {limit:g}s"
    return None, None


def gate_windows(
    rows: Sequence[RolloutDevice],
    devices: Mapping[str, Device],
    start: Callable[[RolloutDevice], dict[str, Any] | None],
) -> list[Counters]:
    """Each row's quality-gate window: its device's current health counters less the
    counters `start(row)` picked; a device without counters is left out."""
    out = []
    for row in rows:
        dev = devices.get(row.device_id)
        now_c = counters_from_health(dev.last_health if dev else None)
        if now_c is not None:
            out.append(window(now_c, Counters.from_json(start(row))))
    return out


def canary_start(row: RolloutDevice) -> dict[str, Any] | None:
    """Where a canary's window starts: at its commit, or at zero when its counters fell
    between launch and commit (the agent restarted into the new version)."""
    at_launch = Counters.from_json(row.start_counters)
    at_commit = Counters.from_json(row.commit_counters)
    if at_launch is not None and at_commit is not None and at_commit.frames < at_launch.frames:
        return None
    return row.commit_counters

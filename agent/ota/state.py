"""The update state machine: states, allowed transitions, the persisted record, planning.

    pending -> downloading -> verifying -> staging -> validating -> activating
            -> probation -> committed
    verifying -> downloading (a resumed part that does not hash: one fresh download)
    any state before activating -> failed (reason)
    activating | probation -> rolled_back (reason)

`pending` fetches and verifies the signed manifest (its sequence is accepted there,
so a version that later fails or is rolled back is not retried until a manifest with
a newer sequence arrives); `verifying` hashes the downloaded bytes.

One `UpdateRecord` per artifact kind is persisted as JSON (written atomically:
temp file, fsync, rename) at every transition, so a crash resumes from the last
state written: the steps before `activating` are idempotent and simply run again;
`activating` and `probation` count the restart and resume, or roll back once the
restarts exceed the configured limit (a model that crashes the process must not
crash-loop the device). The pure `plan` decides what a desired ref asks for.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.ota.errors import ReasonCode
from agent.state import atomic_write

log = logging.getLogger(__name__)


class UpdateState(str, enum.Enum):
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

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def live(self) -> bool:
        """True once the new version may be (or is) serving."""
        return self in (UpdateState.ACTIVATING, UpdateState.PROBATION)


_TERMINAL = frozenset({UpdateState.COMMITTED, UpdateState.FAILED, UpdateState.ROLLED_BACK})
_S = UpdateState
TRANSITIONS: dict[UpdateState, frozenset[UpdateState]] = {
    _S.PENDING: frozenset({_S.DOWNLOADING, _S.FAILED}),
    _S.DOWNLOADING: frozenset({_S.VERIFYING, _S.FAILED}),
    _S.VERIFYING: frozenset({_S.STAGING, _S.DOWNLOADING, _S.FAILED}),
    _S.STAGING: frozenset({_S.VALIDATING, _S.FAILED}),
    _S.VALIDATING: frozenset({_S.ACTIVATING, _S.FAILED}),
    _S.ACTIVATING: frozenset({_S.PROBATION, _S.ROLLED_BACK}),
    _S.PROBATION: frozenset({_S.COMMITTED, _S.ROLLED_BACK}),
    _S.COMMITTED: frozenset(),
    _S.FAILED: frozenset(),
    _S.ROLLED_BACK: frozenset(),
}


class TransitionError(Exception):
    """A transition the state machine does not allow (a bug, never bad input)."""


@dataclass(frozen=True)
class UpdateRecord:
    """Where one update stands; everything needed to resume it after a crash."""

    kind: str
    version: str
    """The desired version (from the desired ref until the manifest is verified)."""
    manifest_url: str
    ref_sequence: int
    state: UpdateState = UpdateState.PENDING
    manifest: dict[str, Any] | None = None
    """The verified manifest's fields (name, sha256, size, url, sequence, ...)."""
    reason: ReasonCode | None = None
    detail: str | None = None
    staged_path: str | None = None
    previous_path: str | None = None
    previous_version: str | None = None
    baseline: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0

    @property
    def ref_key(self) -> tuple[str, int, str]:
        return (self.manifest_url, self.ref_sequence, self.version)

    @property
    def name(self) -> str | None:
        return None if self.manifest is None else str(self.manifest["name"])

    def to(self, state: UpdateState, now: float, **changes: Any) -> UpdateRecord:
        """The record in `state`; raise TransitionError if the machine does not allow it."""
        if state is not self.state and state not in TRANSITIONS[self.state]:
            raise TransitionError(f"{self.kind}: {self.state.value} -> {state.value}")
        return dataclasses.replace(self, state=state, updated_at=now, **changes)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["reason"] = None if self.reason is None else self.reason.value
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> UpdateRecord:
        fields = {f.name for f in dataclasses.fields(UpdateRecord)}
        kw = {k: v for k, v in data.items() if k in fields}
        kw["state"] = UpdateState(kw["state"])
        kw["reason"] = None if kw.get("reason") is None else ReasonCode(kw["reason"])
        return UpdateRecord(**kw)

    def summary(self) -> dict[str, Any]:
        """The record as reported on MQTT (`update` in the reported payload)."""
        m = self.manifest or {}
        return {
            "kind": self.kind,
            "state": self.state.value,
            "name": m.get("name"),
            "version": self.version,
            "sequence": m.get("sequence", self.ref_sequence),
            "reason": None if self.reason is None else self.reason.value,
            "detail": None if self.detail is None else self.detail[:500],
            "previous_version": self.previous_version,
            "restarts": self.restarts,
            "started_at": round(self.started_at, 3),
            "updated_at": round(self.updated_at, 3),
        }


class StateFile:
    """One kind's record in `<state_dir>/ota/<kind>.json`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateRecord | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return UpdateRecord.from_json(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable state: keep the file for inspection and start clean; the active
            # pointer (switched atomically) still says what runs.
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.error("ota state unreadable path=%s error=%s; moved to %s", self.path, exc, aside)
            self.path.replace(aside)
            return None

    def save(self, record: UpdateRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record.to_json(), sort_keys=True, indent=1).encode("utf-8")
        atomic_write(self.path, data)


class Plan(str, enum.Enum):
    NOTHING = "nothing"
    START = "start"
    CONTINUE = "continue"
    SUPERSEDE = "supersede"
    """Abandon the unfinished (not yet live) update for a newer desired ref."""


def plan(
    ref_key: tuple[str, int, str] | None,
    record: UpdateRecord | None,
    running_version: str | None,
) -> Plan:
    """What to do about the desired ref `(manifest_url, sequence, version)`.

    An update in progress continues; a new ref supersedes it only before it is live.
    A ref the device already ran to an end (committed, failed, rolled back) is done:
    the same retained desired never restarts an update, and a rolled-back version only
    comes back with a newer manifest (which the fleet publishes as a new ref).
    """
    if record is not None and not record.state.terminal:
        if ref_key is None or ref_key == record.ref_key or record.state.live:
            return Plan.CONTINUE
        return Plan.SUPERSEDE
    if ref_key is None:
        return Plan.NOTHING
    if record is not None and record.ref_key == ref_key:
        return Plan.NOTHING
    if running_version is not None and ref_key[2] == running_version:
        return Plan.NOTHING
    return Plan.START


__all__ = [
    "TRANSITIONS",
    "Plan",
    "StateFile",
    "TransitionError",
    "UpdateRecord",
    "UpdateState",
    "plan",
]

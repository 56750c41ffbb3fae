"""The update state machine: allowed transitions, the persisted record, and planning."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.ota.errors import ReasonCode
from agent.ota.state import (
    Plan,
    StateFile,
    TransitionError,
    UpdateRecord,
    UpdateState,
    plan,
)

REF = ("http://f/m/2.json", 5, "0.2.0")


def _rec(state: UpdateState = UpdateState.PENDING) -> UpdateRecord:
    return UpdateRecord("model", "0.2.0", REF[0], REF[1], state=state)


def test_happy_path_is_allowed_in_order() -> None:
    # given a pending record
    rec = _rec()
    # when it walks the documented path
    for state in ["downloading", "verifying", "staging", "validating", "activating",
                  "probation", "committed"]:  # fmt: skip
        rec = rec.to(UpdateState(state), now=1.0)
    # then it ends committed
    assert rec.state is UpdateState.COMMITTED and rec.state.terminal


@pytest.mark.parametrize(
    ("src", "dst"),
    [("pending", "activating"), ("downloading", "committed"), ("probation", "failed"),
     ("committed", "rolled_back"), ("rolled_back", "activating"), ("validating", "rolled_back")],
)  # fmt: skip
def test_forbidden_transitions_raise(src: str, dst: str) -> None:
    with pytest.raises(TransitionError):
        _rec(UpdateState(src)).to(UpdateState(dst), now=1.0)


def test_record_survives_a_json_round_trip_through_the_state_file(tmp_path: Path) -> None:
    # given a rolled-back record with a reason and a baseline
    rec = _rec(UpdateState.PROBATION).to(
        UpdateState.ROLLED_BACK, 3.0, reason=ReasonCode.PROBATION_FPS, detail="slow",
        baseline={"fps": 10.0}, restarts=1, manifest={"name": "yolox_nano", "sequence": 5},
    )  # fmt: skip
    f = StateFile(tmp_path / "ota" / "model.json")
    # when saved and loaded
    f.save(rec)
    # then it is equal, and its summary carries the str-enum codes
    assert f.load() == rec
    assert rec.summary()["reason"] == "probation_fps"
    assert rec.summary()["state"] == "rolled_back"


def test_corrupt_state_file_is_moved_aside_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text("{not json")
    assert StateFile(path).load() is None
    assert (tmp_path / "model.json.corrupt").exists()
    assert not path.exists()


@pytest.mark.parametrize(
    ("ref", "state", "running", "expected"),
    [
        (REF, None, "0.1.1", Plan.START),
        (REF, None, "0.2.0", Plan.NOTHING),  # already running that version
        (None, None, "0.1.1", Plan.NOTHING),
        (REF, "downloading", "0.1.1", Plan.CONTINUE),
        (("http://f/m/3.json", 6, "0.3.0"), "downloading", "0.1.1", Plan.SUPERSEDE),
        (("http://f/m/3.json", 6, "0.3.0"), "probation", "0.2.0", Plan.CONTINUE),  # live
        (None, "probation", "0.2.0", Plan.CONTINUE),
        (REF, "rolled_back", "0.1.1", Plan.NOTHING),  # same desired: not retried
        (REF, "failed", "0.1.1", Plan.NOTHING),
        (("http://f/m/2b.json", 7, "0.2.0"), "rolled_back", "0.1.1", Plan.START),  # newer seq
    ],
)
def test_plan(
    ref: tuple[str, int, str] | None, state: str | None, running: str, expected: Plan
) -> None:
    record = None if state is None else _rec(UpdateState(state))
    assert plan(ref, record, running) is expected

"""System conditions: raised once, cleared once, closed at shutdown with their own type."""

from __future__ import annotations

from agent.health.system_events import SystemEvents
from agent.types import EventPhase, EventRecord


def test_condition_is_raised_once_and_cleared_once() -> None:
    got: list[EventRecord] = []
    events = SystemEvents("dev", 3, got.append)
    assert events.raise_("cam", "camera-offline", "camera", {"state": "reconnecting"})
    assert not events.raise_("cam", "camera-offline", "camera", {"state": "stalled"})
    assert events.clear("cam", "camera-offline", "camera", {"state": "streaming"})
    assert not events.clear("cam", "camera-offline", "camera", {})
    assert [r.event.phase for r in got] == [EventPhase.START, EventPhase.END]
    assert got[0].event.event_id == got[1].event.event_id
    # a second outage is a new episode with a new id
    events.raise_("cam", "camera-offline", "camera", {})
    assert got[2].event.episode == 2
    assert got[2].event.event_id != got[0].event.event_id


def test_close_all_ends_open_conditions_keeping_their_type() -> None:
    got: list[EventRecord] = []
    events = SystemEvents("dev", 1, got.append)
    events.raise_("device", "backend-degraded.infer-0", "backend", {})
    events.raise_("cam", "drift-brightness", "drift", {})
    assert events.close_all("shutdown") == 2
    ends = {r.event.rule_id: r.event for r in got if r.event.phase is EventPhase.END}
    assert ends["backend-degraded.infer-0"].rule_type == "backend"
    assert ends["drift-brightness"].rule_type == "drift"
    assert all(e.attributes["reason"] == "shutdown" for e in ends.values())
    assert events.close_all("shutdown") == 0

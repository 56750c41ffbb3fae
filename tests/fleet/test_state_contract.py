"""The fleet's per-device rollout states are the device's OTA states plus its own two."""

from __future__ import annotations

from agent.ota.state import UpdateState
from fleet.rollout_spec import DeviceRolloutState


def test_rollout_states_extend_the_devices_update_states_exactly() -> None:
    fleet_only = {"waiting", "timed_out"}
    assert {s.value for s in DeviceRolloutState} == {s.value for s in UpdateState} | fleet_only

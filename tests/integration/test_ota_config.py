"""Config updates through the same state machine: validated with the agent's own models,
staged atomically, applied through the ConfigApplier, rolled back if it refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.ota import OtaConfig
from agent.ota.manifest import load_public_key
from agent.ota.staging import active_config_path
from agent.ota.updater import OtaUpdater
from agent.protocol import DesiredState
from tests.agent_helpers import agent_config
from tests.ota_helpers import (
    Keys,
    RangeServer,
    RecordingSwapper,
    Reports,
    ScriptedProbe,
    ended,
    make_keys,
    make_version,
    publish,
)


class Applier:
    def __init__(self, refuse: bool = False) -> None:
        self.applied: list[str] = []
        self.refuse = refuse

    def apply_config(self, text: str) -> str:
        if self.refuse and not self.applied:
            self.applied.append("REFUSED")
            raise RuntimeError("camera 'street' cannot be reconfigured live")
        self.applied.append(text)
        return "live"


@pytest.fixture
def world(tmp_path: Path, assets: Path) -> Iterator[dict[str, Any]]:
    server = RangeServer()
    keys = make_keys(tmp_path / "keys")
    base = agent_config(tmp_path, assets, name="base.yaml")
    new = agent_config(tmp_path, assets, name="new.yaml",
                       rules=[{"id": "crossing", "type": "line",
                               "points": [[0.5, 0.3], [0.5, 0.8]]}])  # fmt: skip
    yield {"server": server, "keys": keys, "base": base, "new": new, "tmp": tmp_path,
           "assets": assets}  # fmt: skip
    server.stop()


def _updater(world: dict[str, Any], applier: Applier, reports: Reports) -> OtaUpdater:
    keys: Keys = world["keys"]
    swapper = RecordingSwapper(make_version(world["tmp"], world["assets"], "0.1.1"))
    cfg = OtaConfig.model_validate({
        "enabled": True, "public_key": str(keys.public), "min_free_bytes": 0,
        "probation": {"window_s": 0.2, "poll_s": 0.05},
    })  # fmt: skip
    updater = OtaUpdater(
        cfg, world["tmp"] / "state", load_public_key(keys.public), swapper, reports,
        ScriptedProbe(swapper), config_applier=applier, base_config=world["base"],
        clock_synced=lambda: True,
    )  # fmt: skip
    updater.start()
    return updater


def _desire(updater: OtaUpdater, world: dict[str, Any], text: bytes, version: str) -> None:
    url = publish(world["server"], world["keys"], text, version=version, sequence=3,
                  kind="config", name="agent")  # fmt: skip
    ref = {"version": version, "manifest_url": url, "sequence": 3}
    updater.on_desired(DesiredState.model_validate({"schema": 1, "config": ref}))


def test_valid_config_is_staged_applied_and_committed(world: dict[str, Any]) -> None:
    reports, applier = Reports(), Applier()
    updater = _updater(world, applier, reports)
    text = world["new"].read_bytes()
    _desire(updater, world, text, "c2")
    final = reports.wait(ended("c2", "config"))
    updater.stop()
    assert final["updates"]["config"]["state"] == "committed", final
    assert applier.applied == [text.decode()]
    assert final["versions"]["config"] == "c2"
    active = active_config_path(world["tmp"] / "state")
    assert active is not None and active.read_bytes() == text


def test_invalid_config_is_rejected_and_never_applied(world: dict[str, Any]) -> None:
    reports, applier = Reports(), Applier()
    updater = _updater(world, applier, reports)
    bad = world["new"].read_text().replace("min_dwell_s", "min_dwell_seconds").encode()
    bad = bad.replace(b"schema_version: 1", b"schema_version: 1\nbogus_key: 3")
    _desire(updater, world, bad, "c3")
    final = reports.wait(ended("c3", "config"))
    updater.stop()
    upd = final["updates"]["config"]
    assert (upd["state"], upd["reason"]) == ("failed", "invalid_config")
    assert "bogus_key" in upd["detail"]
    assert applier.applied == []
    assert active_config_path(world["tmp"] / "state") is None


def test_config_the_applier_refuses_is_rolled_back_to_the_old_one(world: dict[str, Any]) -> None:
    reports, applier = Reports(), Applier(refuse=True)
    updater = _updater(world, applier, reports)
    _desire(updater, world, world["new"].read_bytes(), "c4")
    final = reports.wait(ended("c4", "config"))
    updater.stop()
    upd = final["updates"]["config"]
    assert (upd["state"], upd["reason"]) == ("rolled_back", "activation_failed")
    # the refusing applier kept the old config running: it is not applied again, and
    # `active` names it once more
    assert applier.applied == ["REFUSED"]
    assert active_config_path(world["tmp"] / "state") == world["base"].resolve()

"""OTA config updates end to end: real Mosquitto, the real fleet controller, the real
agent on vtest paced as a live camera.

A config artifact that changes one rule is applied live (the camera keeps streaming,
the new rule raises events) and commits; an invalid config, which the controller
refuses to publish and which therefore arrives signed but unpublished, is rejected by
the device and the old config keeps running.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app import Agent
from agent.cli import EXIT_RESTART
from agent.ingest.camera import CameraState
from agent.ota.staging import active_config_path
from fleet.artifacts import ArtifactError
from tests.agent_helpers import read_events
from tests.e2e.ota_world import (
    AgentProcess,
    World,
    config_with_rules,
    fleet,
    frames_flow,
    running_agent,
    update_of,
    world,
    write_agent_config,
)
from tests.mosquitto import wait_until
from tests.ota_helpers import publish

__all__ = ["fleet", "world"]  # fixtures used by name

WHOLE_FRAME = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
STREET_WIDE = {"id": "street-wide", "type": "zone", "polygon": WHOLE_FRAME, "min_dwell_s": 0.5}


def _rules(agent: Agent) -> list[str]:
    return [r.id for r in agent.cfg.cameras[0].rules]


def _running_rules(config: Path) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(config.read_text())["cameras"][0]["rules"]
    return rules


def _streams_throughout(w: World, agent: Agent, since: int) -> None:
    """The camera never left `streaming`: same worker, no reconnect, every health says so."""
    assert agent.camera_states["street"] is CameraState.STREAMING
    assert agent.cameras[0].is_alive()
    assert agent.cameras[0].stats().get("reconnects", 0) == 0
    states = [h["cameras"]["street"]["state"] for h in w.health(since)]
    assert states and set(states) == {"streaming"}, states


def test_rule_change_applies_live_without_dropping_the_camera(world: World) -> None:
    cfg = write_agent_config(world)
    # given a config artifact derived from the running one, the lamp-post zone replaced
    # by a zone over the whole street
    rules = [STREET_WIDE if r["id"] == "lamp-post" else r for r in _running_rules(cfg)]
    new = config_with_rules(cfg, rules, world.tmp / "c2.yaml")
    world.publish("config", new, name="agent", version="c2")
    with running_agent(cfg) as agent:
        world.wait_registered()
        frames_flow(agent, 5)
        camera = agent.cameras[0]
        decoded = camera.stats()["frames_decoded"]
        since = world.mark()
        # when the operator makes it the desired config
        world.set_desired(config={"name": "agent", "version": "c2"})
        final = world.wait_update("c2", kind="config", since=since)
        # then it was applied live and committed
        upd = update_of(final, "config")
        assert upd["state"] == "committed", upd
        details = [update_of(r, "config").get("detail") for r in world.reports(since)]
        assert "applied live" in details, details
        assert final["versions"]["config"] == "c2"
        assert _rules(agent) == ["street-wide", "crossing"]
        assert not agent.restart_requested and not agent.stop_event.is_set()
        # and the new rule raises events while the same camera keeps streaming
        events = world.tmp / "events.jsonl"
        wait_until(
            lambda: any(e["rule_id"] == "street-wide" for e in read_events(events)),
            20, "an event of the new rule",
        )  # fmt: skip
        frames_flow(agent, 10)
        assert agent.cameras[0] is camera and camera.stats()["frames_decoded"] > decoded
        _streams_throughout(world, agent, since)
        # and the controller recorded it
        world.wait_controller("config", "c2", "committed")
    active = active_config_path(world.tmp / "state")
    assert active is not None and active.read_text() == new.read_text()


def test_invalid_config_is_rejected_and_the_old_one_keeps_running(world: World) -> None:
    cfg = write_agent_config(world)
    # given an invalid config: one rule's polygon has two points
    bad_rule = {**STREET_WIDE, "polygon": [[0.0, 0.0], [1.0, 1.0]]}
    bad = config_with_rules(cfg, [bad_rule], world.tmp / "c3.yaml")
    # which the controller refuses to publish
    with pytest.raises(ArtifactError, match="invalid config"):
        world.publish("config", bad, name="agent", version="c3")
    # so it arrives signed with the fleet's key from elsewhere, set as desired on the broker
    url = publish(world.files, world.keys, bad.read_bytes(), version="c3", sequence=40,
                  kind="config", name="agent")  # fmt: skip
    with running_agent(cfg) as agent:
        world.wait_registered()
        frames_flow(agent, 5)
        since = world.mark()
        # when it becomes the desired config
        world.publish_desired(config={"version": "c3", "manifest_url": url, "sequence": 40})
        final = world.wait_update("c3", kind="config", since=since)
        # then the device rejected it before activation, naming the problem
        upd = update_of(final, "config")
        assert (upd["state"], upd["reason"]) == ("failed", "invalid_config"), upd
        assert "polygon" in upd["detail"]
        assert not {"activating", "probation"} & set(world.update_states("config", since))
        assert final["versions"]["config"] == "provisioned"
        # and the old config keeps running, the camera streaming
        assert _rules(agent) == ["lamp-post", "crossing"]
        assert not agent.restart_requested
        frames_flow(agent, 10)
        _streams_throughout(world, agent, since)
        # and the controller knows why
        device = world.wait_controller("config", "c3", "failed")
        assert device["reported"]["updates"]["config"]["reason"] == "invalid_config"
    assert active_config_path(world.tmp / "state") is None
    assert json.loads((world.tmp / "state" / "ota" / "config.json").read_text())["state"] == (
        "failed"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_restarts",
    [1, 0],
)
def test_config_needing_a_restart_commits_after_a_clean_restart(
    world: World, crash_restarts: int
) -> None:
    cfg = write_agent_config(world, ota={"probation": {"crash_restarts": crash_restarts}})
    # given a config that changes the model's score threshold (not live-applicable) and
    # replaces the lamp-post zone
    data = yaml.safe_load(cfg.read_text())
    data["model"]["score_threshold"] = 0.35
    data["cameras"][0]["rules"] = [
        STREET_WIDE if r["id"] == "lamp-post" else r for r in data["cameras"][0]["rules"]
    ]
    new = world.tmp / "c4.yaml"
    new.write_text(yaml.safe_dump(data, sort_keys=False))
    world.publish("config", new, name="agent", version="c4")
    # and the agent process running on the provisioned config
    first = AgentProcess(cfg, world.tmp / "agent-1.log")
    world.wait_report(lambda _r: True, "the agent's first report", timeout=60)
    world.wait_registered()
    # when it becomes the desired config
    world.set_desired(config={"name": "agent", "version": "c4"})
    # then the agent stops cleanly with the restart status (systemd starts it again)
    assert first.wait(60) == EXIT_RESTART, first.tail()
    details = [update_of(r, "config").get("detail") for r in world.reports()]
    assert "applied restart" in details, details
    # when it is started again on the same state folder
    since, events = world.mark(), world.tmp / "events.jsonl"
    before = len(read_events(events))
    second = AgentProcess(cfg, world.tmp / "agent-2.log")
    final = world.wait_update("c4", kind="config", since=since, timeout=60)
    # then the update commits on the new config, which the new process runs
    upd = update_of(final, "config")
    assert upd["state"] == "committed", f"{upd}\n{second.tail()}"
    assert final["versions"]["config"] == "c4"
    wait_until(
        lambda: any(e["rule_id"] == "street-wide" for e in read_events(events)[before:]),
        30, "an event of the new config's rule",
    )  # fmt: skip
    world.wait_controller("config", "c4", "committed")
    second.assert_stops_cleanly()

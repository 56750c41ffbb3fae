"""OTA updates that must not go through, end to end: real Mosquitto, the real fleet
controller, the real agent on vtest paced as a live camera.

- a v3 that fails validation (corrupt ONNX, wrong output shape, too slow) is refused
  before activation, and the agent keeps serving v1;
- a v4 that activates but sees nothing (score threshold 0.99) fails probation on the
  detection-rate collapse and is rolled back automatically;
- tampered bytes, a manifest signed by another key, an expired manifest and a replay
  of an older manifest are each rejected.

In every case the reason code reaches the controller through `reported`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from agent.app import Agent
from agent.ota.manifest import TIMESYNC_FLAG
from tests.e2e.ota_world import (
    FACTORY_VERSION,
    World,
    fleet,
    frames_flow,
    pointer_versions,
    running_agent,
    update_of,
    world,
    write_agent_config,
)
from tests.model_helpers import make_model_dir, write_manifest
from tests.mosquitto import wait_until
from tests.ota_helpers import make_keys, model_tar, publish

__all__ = ["fleet", "world"]  # fixtures used by name

V2, V3, V4 = "0.2.0", "0.3.0", "0.4.0"
PICK = {"name": "yolox_nano"}


def _assert_still_on_v1(w: World, agent: Agent) -> None:
    """The provisioned model still serves, nothing was switched, frames keep flowing."""
    frames_flow(agent, 10)
    assert agent.current_model().manifest.version == FACTORY_VERSION
    assert pointer_versions(w.tmp / "state") == (None, None)


def _assert_controller_saw(w: World, version: str, state: str, reason: str) -> None:
    device = w.wait_controller("model", version, state)
    assert device["update_state"] == state
    assert device["reported"]["update"]["reason"] == reason


# --------------------------------------------------------------------------- validation
def _v3(w: World, case: str) -> Path:
    """A v3 model folder the fleet accepts (it does not probe) but that must not serve."""
    family = {"family": "yolov8"} if case == "wrong_shape" else {}
    v3 = make_model_dir(w.tmp / "release", w.assets, version=V3, **family)
    if case == "corrupt":  # garbage ONNX bytes, with the sha256 that matches them
        garbage = b"\x08\x07not an onnx graph\x00" * 50_000
        (v3 / "yolox_nano.onnx").unlink()
        (v3 / "yolox_nano.onnx").write_bytes(garbage)
        manifest = json.loads((v3 / "model.json").read_text())
        manifest["sha256"] = hashlib.sha256(garbage).hexdigest()
        write_manifest(v3, manifest)
    return v3


@pytest.mark.parametrize(
    ("case", "reason", "hint"),
    [
        ("corrupt", "invalid_model", "ONNX Runtime cannot load"),
        ("wrong_shape", "invalid_model", "do not match family 'yolov8'"),
        ("too_slow", "too_slow", "budget"),
    ],
)
def test_v3_failing_validation_is_refused_before_activation(
    world: World, case: str, reason: str, hint: str
) -> None:
    # given a v3 published by the controller, and the agent serving v1
    world.publish("model", _v3(world, case))
    ota = {"latency_budget_ms": 0.001} if case == "too_slow" else None
    with running_agent(write_agent_config(world, ota=ota)) as agent:
        world.wait_registered()
        frames_flow(agent, 5)
        since = world.mark()
        # when the operator makes v3 the desired model
        world.set_desired(model={**PICK, "version": V3})
        final = world.wait_update(V3, since=since)
        # then the update failed before activation and v1 keeps serving
        upd = update_of(final)
        assert (upd["state"], upd["reason"]) == ("failed", reason), upd
        assert hint in upd["detail"]
        assert final["versions"]["model"] == f"yolox_nano@{FACTORY_VERSION}"
        assert not {"activating", "probation"} & set(world.update_states(since=since))
        _assert_still_on_v1(world, agent)
        # and the controller knows why
        _assert_controller_saw(world, V3, "failed", reason)


# --------------------------------------------------------------------------- probation
def test_v4_failing_probation_is_rolled_back_automatically(world: World) -> None:
    # given a v4 that loads and validates but sees nothing (every score under 0.99)
    world.publish(
        "model", make_model_dir(world.tmp / "release", world.assets, version=V4,
                                score_threshold=0.99)
    )  # fmt: skip
    cfg = write_agent_config(world, ota={"probation": {"window_s": 2.0, "min_frames": 5}})
    with running_agent(cfg) as agent:
        lane = agent.lanes["street"]
        world.wait_registered()
        # and v1 seeing people on the street (the pre-update baseline)
        wait_until(lambda: lane.frames_processed >= 20 and lane.detections >= 20, 30, "a baseline")
        since = world.mark()
        # when v4 becomes the desired model
        world.set_desired(model={**PICK, "version": V4})
        final = world.wait_update(V4, since=since)
        # then it went live, failed probation on the detection collapse and was rolled back
        upd = update_of(final)
        assert (upd["state"], upd["reason"]) == ("rolled_back", "probation_detections"), upd
        assert {"activating", "probation"} <= set(world.update_states(since=since))
        assert final["versions"]["model"] == f"yolox_nano@{FACTORY_VERSION}"
        # and v1 serves again, seeing people again
        assert agent.current_model().manifest.version == FACTORY_VERSION
        seen = lane.detections
        wait_until(lambda: lane.detections >= seen + 20, 20, "v1's detections after rollback")
        assert pointer_versions(world.tmp / "state") == (FACTORY_VERSION, FACTORY_VERSION)
        # and the controller knows why
        _assert_controller_saw(world, V4, "rolled_back", "probation_detections")


# --------------------------------------------------------------------------- trust
def _clock(tmp: Path, monkeypatch: pytest.MonkeyPatch, *, synced: bool) -> None:
    """What `timedatectl show -p NTPSynchronized --value` says on this "system"."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "timedatectl"
    tool.write_text(f"#!/bin/sh\necho {'yes' if synced else 'no'}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def _forge(w: World, case: str, version: str, sequence: int) -> tuple[str, str]:
    """Serve `version` with a manifest forged per `case`; return (manifest url, artifact)."""
    data = model_tar(make_model_dir(w.tmp / f"v{version}", w.assets, version=version))
    keys = make_keys(w.tmp / "rogue", "rogue") if case == "wrong_key" else w.keys
    kw = {"issued_at": int(time.time()) - 7200, "ttl_s": 3600} if case == "expired" else {}
    url = publish(w.files, keys, data, version=version, sequence=sequence, **kw)
    art = f"/a/{version}-{sequence}.tar"
    if case == "tampered":  # same size, one byte changed in the ONNX, after signing
        served = w.files.files[art]
        mid = len(data) // 2
        served.data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
    return url, art


def _desire(w: World, url: str, version: str, sequence: int) -> None:
    w.publish_desired(model={"version": version, "manifest_url": url, "sequence": sequence})


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered", "sha_mismatch"),
        ("wrong_key", "bad_signature"),
        ("expired", "expired"),
        ("replayed", "replayed"),
    ],
)
def test_untrusted_update_is_rejected_with_the_reason_reported(
    world: World, monkeypatch: pytest.MonkeyPatch, case: str, reason: str
) -> None:
    _clock(world.tmp, monkeypatch, synced=True)
    with running_agent(write_agent_config(world)) as agent:
        world.wait_registered()
        running = FACTORY_VERSION
        if case == "replayed":
            # given the device already moved on to v2 with manifest sequence 5
            url, _ = _forge(world, "genuine", V2, 5)
            _desire(world, url, V2, 5)
            assert update_of(world.wait_update(V2))["state"] == "committed"
            running = V2
            # when an attacker replays an older genuine manifest (sequence 3, back to v1)
            url, art = _forge(world, "genuine", FACTORY_VERSION, 3)
            version, sequence = FACTORY_VERSION, 3
        else:
            # when the desired state points at a forged update of v2
            url, art = _forge(world, case, V2, 7)
            version, sequence = V2, 7
        since = world.mark()
        _desire(world, url, version, sequence)
        final = world.wait_update(version, since=since)
        # then it is rejected with the reason, the running model unchanged
        upd = update_of(final)
        assert (upd["state"], upd["reason"]) == ("failed", reason), upd
        frames_flow(agent, 10)
        assert agent.current_model().manifest.version == running
        assert final["versions"]["model"] == f"yolox_nano@{running}"
        # and nothing of it stayed on the device: never downloaded, or deleted as soon
        # as the bytes did not hash to the signed sha256
        fetched = [r for r in world.files.requests if r[0] == art]
        assert bool(fetched) is (case == "tampered"), world.files.requests
        downloads = world.tmp / "state" / "ota" / "downloads"
        assert not downloads.exists() or os.listdir(downloads) == []
        if case != "replayed":
            assert not (world.tmp / "state" / "models" / "yolox_nano" / V2).exists()
        # and the controller knows why
        _assert_controller_saw(world, version, "failed", reason)


@pytest.mark.skipif(TIMESYNC_FLAG.exists(), reason="this host's clock is NTP-synchronised")
def test_expired_manifest_is_accepted_while_the_clock_is_unknown(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clock(world.tmp, monkeypatch, synced=False)
    # given a device whose clock is not known to be synchronised (as at a Jetson's boot)
    # and an update whose manifest expired an hour ago by this clock
    url, _ = _forge(world, "expired", V2, 7)
    with running_agent(write_agent_config(world)) as agent:
        world.wait_registered()
        # when it is desired
        _desire(world, url, V2, 7)
        final = world.wait_update(V2)
        # then signature and sequence decide: it is installed
        assert update_of(final)["state"] == "committed", final
        assert agent.current_model().manifest.version == V2

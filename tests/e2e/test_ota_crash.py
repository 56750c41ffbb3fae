"""SIGKILL of the real agent process (`python -m agent run`) during an OTA model update,
end to end: real Mosquitto, the real fleet controller, vtest paced as a live camera.

The test watches the retained `reported` topic and kills the process as soon as the
update reports the state under test (downloading, staging, activating, probation).
Then what the device would load must be a complete folder (old, or new once live), and
after a restart on the same state folder the update must go on to commit (steps before
activation resume; one crash while live is tolerated) while the camera serves frames.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_helpers import REPO, agent_env
from tests.e2e.ota_world import (
    FACTORY_VERSION,
    TERMINAL,
    AgentProcess,
    World,
    fleet,
    leftovers,
    pointer_versions,
    serving_folder,
    update_of,
    world,
    write_agent_config,
)
from tests.model_helpers import make_model_dir
from tests.mosquitto import wait_until
from tests.ota_helpers import model_tar, publish

__all__ = ["fleet", "world"]  # fixtures used by name

V2 = "0.2.0"
PADDING_MB = 128
"""Staging of a 128 MiB artifact (unpack and fsync) lasts long enough to be caught."""
THROTTLE_BPS = 1024 * 1024
"""The ~3.6 MB download of the throttled artifact server takes a few seconds."""
LIVE = ("activating", "probation")


def _release(w: World, state: str) -> str:
    """Release v2 and make it desired; return the served artifact path (or "")."""
    v2 = make_model_dir(w.tmp / "release", w.assets, version=V2)
    if state == "staging":
        with open(v2 / "padding.bin", "wb") as fh:
            fh.truncate(PADDING_MB * 1024 * 1024)  # packed, downloaded and staged in full
    if state != "downloading":
        w.publish("model", v2)
        w.set_desired(model={"name": "yolox_nano", "version": V2})
        return ""
    # a download slow enough to be cut: the same bytes the fleet would pack, signed with
    # the fleet's key, from a throttled server with Range support
    url = publish(w.files, w.keys, model_tar(v2), version=V2, sequence=1)
    art = next(p for p in w.files.files if p.startswith("/a/"))
    w.files.files[art].bytes_per_s = THROTTLE_BPS
    w.publish_desired(model={"version": V2, "manifest_url": url, "sequence": 1})
    return art


def _part_bytes(state_dir: Path) -> int:
    parts = list((state_dir / "ota" / "downloads").glob("*.part"))
    return parts[0].stat().st_size if parts else 0


def _events_size(w: World) -> int:
    path = w.tmp / "events.jsonl"
    return path.stat().st_size if path.exists() else 0


def _kill_in(w: World, proc: AgentProcess, state: str, state_dir: Path) -> str:
    """Kill the process as soon as `state` is reported; return the persisted state."""
    w.wait_update(V2, (state, *TERMINAL), timeout=90)
    if state == "downloading":  # some bytes on disk, so the restart must resume them
        wait_until(lambda: _part_bytes(state_dir) > 256 * 1024, 30, "a partial download")
    proc.kill()
    record = json.loads((state_dir / "ota" / "model.json").read_text())
    return str(record["state"])


def _assert_serving_after_restart(w: World, since: int, events_before: int) -> None:
    """The restarted agent streams, processes frames and writes events."""

    def streaming_and_growing() -> bool:
        cams = [h.get("cameras", {}).get("street", {}) for h in w.health(since)]
        frames = [c.get("frames_processed", 0) for c in cams if c.get("state") == "streaming"]
        return len(frames) >= 2 and frames[-1] > frames[0]

    wait_until(streaming_and_growing, 30, "health: camera streaming, frames growing")
    wait_until(lambda: _events_size(w) > events_before, 30, "new events after the restart")


@pytest.mark.slow
@pytest.mark.parametrize("state", ["downloading", "staging", "activating", "probation"])
def test_sigkill_of_the_agent_process_leaves_a_consistent_version_and_resumes(
    world: World, state: str
) -> None:
    state_dir = world.tmp / "state"
    cfg = write_agent_config(world)
    factory = world.tmp / "model"
    # given the agent process running on the provisioned model, reporting
    first = AgentProcess(cfg, world.tmp / "agent-1.log")
    world.wait_report(lambda _r: True, "the agent's first report", timeout=60)
    world.wait_registered()
    # when v2 is desired and the process is SIGKILLed as soon as `state` is reported
    art = _release(world, state)
    killed_in = _kill_in(world, first, state, state_dir)
    assert killed_in == state, f"killed in {killed_in}, not {state}:\n{first.tail()}"
    # then what the device would load is a complete, sound folder: the provisioned one
    # before activation, the old or the new one once live (never a temp or half folder)
    loaded = serving_folder(state_dir, factory)
    version = json.loads((loaded / "model.json").read_text())["version"]
    if state in LIVE:
        assert version in (FACTORY_VERSION, V2)
    else:
        assert version == FACTORY_VERSION
        assert pointer_versions(state_dir) == (None, None)
    if state == "downloading":
        world.files.files[art].bytes_per_s = None  # the network is fast again
    # when the agent restarts on the same state folder
    since, events_before = world.mark(), _events_size(world)
    second = AgentProcess(cfg, world.tmp / "agent-2.log")
    final = world.wait_update(V2, TERMINAL, since=since, timeout=90)
    upd = update_of(final)
    # then the update went on and committed (one crash while live is tolerated)
    assert upd["state"] == "committed", f"{upd}\n{second.tail()}"
    assert final["versions"]["model"] == f"yolox_nano@{V2}"
    assert upd["restarts"] == (1 if state in LIVE else 0), upd
    # and the camera streams and the agent writes events again
    _assert_serving_after_restart(world, since, events_before)
    # and the controller stored the committed state
    world.wait_controller("model", V2, "committed")
    # and it stops cleanly
    second.assert_stops_cleanly()
    # and the device now loads the complete v2 folder, the provisioned one kept as previous
    assert serving_folder(state_dir, factory) == state_dir / "models" / "yolox_nano" / V2
    assert pointer_versions(state_dir) == (V2, FACTORY_VERSION)
    assert leftovers(state_dir) == []
    assert os.listdir(state_dir / "ota" / "downloads") == []
    if state == "downloading":  # the cut download resumed where it stopped
        ranges = [rng for path, rng, _ in world.files.requests if path == art and rng]
        assert ranges and ranges[-1] != "bytes=0-", world.files.requests


# The clean stop of a restarted agent above once hung under load: "signal received
# signal=SIGTERM: stopping" was logged, then the pipeline ran on for 90 s. The handler in
# agent/cli.py (_install_signal_handlers) calls `stop.set()` from the main thread, which
# is almost always inside `agent.wait()` -> `Event.wait()`; when the signal is handled
# while that frame holds the event's internal lock (between its timed waits), `set()`
# waits for a lock its own thread holds: a deadlock. This reproduces that state exactly.
_HOLD_AND_SIGNAL = """
import os, signal, threading
from agent.cli import _install_signal_handlers
stop = threading.Event()
_install_signal_handlers(stop)
with stop._cond:  # the lock Event.wait() holds around its timed waits
    os.kill(os.getpid(), signal.SIGTERM)  # handled at the next check, lock held
print("stopped" if stop.wait(3) else "not stopped", flush=True)
"""


def test_sigterm_stops_the_agent_even_while_its_main_thread_is_in_event_wait() -> None:
    # given the agent's SIGTERM handler, and the main thread where Event.wait() holds
    # the stop event's lock; when SIGTERM arrives
    try:
        out = subprocess.run(
            [sys.executable, "-c", _HOLD_AND_SIGNAL], cwd=REPO, env=agent_env(),
            capture_output=True, text=True, timeout=4, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the SIGTERM handler deadlocked on the stop event's lock")
    # then the stop event is set
    assert out.stdout.strip() == "stopped", out.stderr

"""SIGKILL the updater's process in every state; after a restart the device serves the old
or the new version (never a missing or mixed folder) and the update resumes or rolls back."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.inference.model import load_model_folder
from agent.ota.staging import Pointers
from tests.ota_helpers import RangeServer, make_keys, make_version, model_tar, publish

REPO = Path(__file__).resolve().parents[2]


class Child:
    def __init__(self, spec: dict[str, Any], path: Path) -> None:
        path.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ota_child", str(path)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.log.append(line)
                self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 30.0) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} from child:\n{''.join(self.log)}") from None
            if line.startswith(prefix):
                return line

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def wait(self) -> int:
        rc = self.proc.wait(10)
        self._reader.join(10)
        return rc


@pytest.fixture
def setup(tmp_path: Path, assets: Path) -> Iterator[dict[str, Any]]:
    server = RangeServer()
    keys = make_keys(tmp_path / "keys")
    factory = make_version(tmp_path, assets, "0.1.1")
    v2 = make_version(tmp_path, assets, "0.2.0")
    url = publish(server, keys, model_tar(v2), version="0.2.0", sequence=5)
    cfg = {"enabled": True, "public_key": str(keys.public), "latency_budget_ms": 5000,
           "latency_runs": 2, "retry_initial_s": 0.05, "retry_max_s": 0.2, "min_free_bytes": 0,
           "download_timeout_s": 5,
           "probation": {"window_s": 0.3, "poll_s": 0.05, "crash_restarts": 1}}  # fmt: skip
    yield {
        "server": server, "tmp": tmp_path,
        "spec": {"state_dir": str(tmp_path / "state"), "factory": str(factory),
                 "public_key": str(keys.public), "cfg": cfg,
                 "desired": {"version": "0.2.0", "manifest_url": url, "sequence": 5}},
    }  # fmt: skip
    server.stop()


def _assert_consistent(state: Path, factory: Path) -> str:
    """The folder the device would load now is complete; return its version."""
    active = Pointers(state / "models").active()
    folder = factory if active is None else active
    model = load_model_folder(folder, verify_sha256=True, probe=False)
    if active is not None:  # never a temp folder left by the kill
        assert active in (state / "models" / "yolox_nano" / "0.2.0", factory.resolve())
    return model.manifest.version


def _restart(setup: dict[str, Any], name: str, **spec: Any) -> dict[str, Any]:
    child = Child({**setup["spec"], **spec}, setup["tmp"] / f"{name}.json")
    final: dict[str, Any] = json.loads(child.expect("FINAL ").removeprefix("FINAL "))
    assert child.wait() == 0
    return final


@pytest.mark.parametrize(
    "state",
    ["pending", "downloading", "verifying", "staging", "validating", "activating", "swap",
     "probation"],
)  # fmt: skip
def test_sigkill_in_each_state_ends_consistent_after_restart(
    setup: dict[str, Any], state: str
) -> None:
    factory = Path(setup["spec"]["factory"])
    stateful = Path(setup["spec"]["state_dir"])
    # given an updater killed in `state` (for "swap": inside swap_model, pointer switched)
    pause = {"pause_in_swap": True} if state == "swap" else {"pause_state": state}
    child = Child({**setup["spec"], **pause}, setup["tmp"] / "first.json")
    child.expect("PAUSED")
    child.kill()
    # then what the device would load is a complete old or new folder
    assert _assert_consistent(stateful, factory) in ("0.1.1", "0.2.0")
    # when it restarts
    final = _restart(setup, "second")
    # then the update ends committed (pre-activation steps resume; a live update resumes
    # once, since one restart is tolerated) and v2 serves from a complete folder
    rec = final["record"]
    assert rec["state"] == "committed", final
    assert final["serving"] == "0.2.0"
    assert _assert_consistent(stateful, factory) == "0.2.0"
    live = state in ("activating", "swap", "probation")
    assert rec["restarts"] == (1 if live else 0)


def test_repeated_crashes_while_live_roll_back(setup: dict[str, Any]) -> None:
    factory = Path(setup["spec"]["factory"])
    stateful = Path(setup["spec"]["state_dir"])
    # given two kills in probation (crash_restarts: 1 tolerates only one)
    for i in range(2):
        child = Child({**setup["spec"], "pause_state": "probation"}, setup["tmp"] / f"{i}.json")
        child.expect("PAUSED")
        child.kill()
    # when it restarts a third time
    final = _restart(setup, "third")
    # then the update is rolled back as a crash loop and the factory model serves
    assert (final["record"]["state"], final["record"]["reason"]) == ("rolled_back", "crash_loop")
    assert final["serving"] == "0.1.1"
    assert Pointers(stateful / "models").active() == factory.resolve()


def test_sigkill_mid_download_resumes_with_range(setup: dict[str, Any]) -> None:
    # given a slow artifact server and a kill once part of the file is on disk
    server: RangeServer = setup["server"]
    art = next(p for p in server.files if p.startswith("/a/"))
    server.files[art].bytes_per_s = 4 * 1024 * 1024
    child = Child(setup["spec"], setup["tmp"] / "first.json")
    downloads = Path(setup["spec"]["state_dir"]) / "ota" / "downloads"
    child.expect("SERVING")
    part_seen = threading.Event()

    def watch() -> None:
        while not part_seen.is_set() and child.proc.poll() is None:
            parts = list(downloads.glob("*.part")) if downloads.exists() else []
            if parts and parts[0].stat().st_size > 256 * 1024:
                part_seen.set()
            else:
                part_seen.wait(0.01)

    threading.Thread(target=watch, daemon=True).start()
    assert part_seen.wait(30), "no partial download appeared"
    child.kill()
    # when restarted (at full speed)
    server.files[art].bytes_per_s = None
    final = _restart(setup, "second")
    # then it resumed with a Range request and committed
    assert final["record"]["state"] == "committed"
    ranges = [rng for path, rng, _ in server.requests if path == art and rng]
    assert ranges and ranges[-1].startswith("bytes=") and ranges[-1] != "bytes=0-"
    assert os.listdir(downloads) == []

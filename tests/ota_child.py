"""An OTA updater in its own process, for crash tests: `python -m tests.ota_child SPEC.json`.

It starts the way the agent does (the model it serves is whatever the `active` pointer
names, else the factory folder), follows one desired model, and exits 0 once the update
ends, printing `FINAL <record json>`. With `pause_state` it prints `PAUSED` when that
state is reported (persisted, its work not yet done) and blocks until killed; with
`pause_in_swap` it blocks inside `swap_model` (the pointer already switched).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from agent.config.ota import OtaConfig
from agent.inference.model import ModelFolder
from agent.ota.manifest import load_public_key
from agent.ota.staging import active_model_path
from agent.ota.updater import OtaUpdater
from agent.protocol import DesiredState
from tests.ota_helpers import RecordingSwapper, ScriptedProbe

_forever = threading.Event()


class PausingSwapper(RecordingSwapper):
    pause = False

    def swap_model(self, folder: ModelFolder) -> None:
        if self.pause:
            print("PAUSED", flush=True)
            _forever.wait()
        super().swap_model(folder)


def main(spec_path: str) -> int:
    spec: dict[str, Any] = json.loads(Path(spec_path).read_text())
    state = Path(spec["state_dir"])
    swapper = PausingSwapper(active_model_path(state, Path(spec["factory"])))
    swapper.pause = bool(spec.get("pause_in_swap"))
    print(f"SERVING {swapper.current.manifest.version}", flush=True)
    done = threading.Event()

    def reporter(payload: dict[str, Any]) -> None:
        upd = payload.get("update") or {}
        if spec.get("pause_state") and upd.get("state") == spec["pause_state"]:
            print("PAUSED", flush=True)
            _forever.wait()
        if upd.get("state") in ("committed", "failed", "rolled_back"):
            done.set()

    updater = OtaUpdater(
        OtaConfig.model_validate(spec["cfg"]), state, load_public_key(Path(spec["public_key"])),
        swapper, reporter, ScriptedProbe(swapper, tuple(spec.get("bad_versions", ()))),
        clock_synced=lambda: True,
    )  # fmt: skip
    updater.start()
    updater.on_desired(DesiredState.model_validate({"schema": 1, "model": spec["desired"]}))
    if not done.wait(60):
        print("TIMEOUT", flush=True)
        return 2
    updater.stop()
    rec = updater.record()
    final = {"record": None if rec is None else rec.to_json(),
             "serving": swapper.current.manifest.version, "swaps": swapper.swaps}  # fmt: skip
    print("FINAL " + json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Hot model swap (OTA activation): the pipeline changes model between frames."""

from __future__ import annotations

import threading
from pathlib import Path

from agent.app import Agent
from agent.config import load_config
from agent.inference.model import load_model_folder
from tests.agent_helpers import agent_config, read_events
from tests.model_helpers import make_model_dir


def test_swap_mid_run_loses_no_frame_and_events_keep_flowing(tmp_path: Path, assets: Path) -> None:
    # given the agent running unpaced over vtest and a v2 model folder
    cfg = load_config(agent_config(tmp_path, assets))
    v2 = load_model_folder(make_model_dir(tmp_path, assets, name="v2", version="2.0.0"))
    agent = Agent(cfg, max_frames=500)
    lane = agent.lanes["street"]
    swapped = threading.Event()
    frames_at_swap: list[int] = []

    def swap_when_busy() -> None:
        while lane.frames_processed < 150 and not agent.stop_event.wait(0.01):
            pass
        frames_at_swap.append(lane.frames_processed)
        agent.swap_model(v2)
        swapped.set()

    agent.start()
    threading.Thread(target=swap_when_busy, daemon=True).start()
    agent.wait()
    summary = agent.close()
    # then the swap happened mid-run, every frame was processed, none failed
    assert swapped.is_set()
    assert 150 <= frames_at_swap[0] < 500
    cam = summary.cameras["street"]
    assert cam["frames_processed"] == 500
    assert cam["inference_failures"] == 0
    assert agent.current_model().manifest.version == "2.0.0"
    assert all(w.detector.model is v2 for w in agent.workers)
    # and events were raised after the swap too, from the same tracks and rules
    events = read_events(tmp_path / "events.jsonl")
    assert any(e["frame_seq"] > frames_at_swap[0] + 20 for e in events)

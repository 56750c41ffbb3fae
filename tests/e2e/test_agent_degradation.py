"""Accelerator faults in the running agent: it moves down the ladder and keeps serving.

The top rung is a fault-injecting backend of our own Backend protocol standing in for a
GPU (a GPU cannot run here); it serves real ONNX Runtime outputs until told to fail.
The rung below is the real ONNX Runtime CPU session on the real model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.app import Agent
from agent.config import LadderConfig, OnnxRuntimeBackendConfig, load_config
from agent.inference.backend import Backend
from agent.inference.errors import BackendError
from agent.inference.ladder import DegradingBackend, Rung, onnxruntime_rung
from agent.inference.model import ModelFolder
from agent.inference.onnxrt import OnnxRuntimeBackend
from tests.agent_helpers import agent_config, read_events
from tests.backend_helpers import WrappedBackend

CPU = OnnxRuntimeBackendConfig(type="onnxruntime", providers=["CPUExecutionProvider"])


class FaultyGpu(WrappedBackend):
    """Real outputs until `fail_after` calls, then raises (or hangs until released)."""

    name = "fake-gpu"

    def __init__(self, model: ModelFolder, fail_after: int, mode: str, release: threading.Event):
        super().__init__(OnnxRuntimeBackend(model.onnx_path, ["CPUExecutionProvider"], 1))
        self._calls = 0
        self._fail_after = fail_after
        self._mode = mode
        self._release = release

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        self._calls += 1
        if self._calls > self._fail_after:
            if self._mode == "hang":
                self._release.wait()
            raise BackendError("CUDA error: an illegal memory access was encountered")
        return self.inner.infer(tensor)


def _ladder_factory(
    holder: list[Agent], mode: str, release: threading.Event
) -> Callable[[ModelFolder, str], Backend]:
    cfg = LadderConfig(
        rungs=[CPU],
        inference_timeout_s=0.5,
        failures_to_degrade=2,
        climb_back_after_s=3600,
        climb_back_max_s=3600,
        cpu_fallback_max_fps=None,
    )

    def make(model: ModelFolder, label: str) -> Backend:
        def on_change(*args: Any) -> None:
            if holder:  # the agent exists once the first rung has loaded
                holder[0]._ladder_callback(label)(*args)

        rungs = [
            Rung("fake:gpu", lambda: FaultyGpu(model, 40, mode, release), cpu=False),
            Rung(
                "onnxruntime:CPUExecutionProvider", lambda: onnxruntime_rung(CPU, model), cpu=True
            ),
        ]
        return DegradingBackend(rungs, cfg, on_change=on_change, label=label)

    return make


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_backend_fault_degrades_to_cpu_and_events_keep_flowing(
    tmp_path: Path, assets: Path, mode: str
) -> None:
    release = threading.Event()
    holder: list[Agent] = []
    cfg = load_config(agent_config(tmp_path, assets))
    agent = Agent(cfg, max_frames=300, backends=_ladder_factory(holder, mode, release))
    holder.append(agent)
    try:
        agent.start()
        agent.wait()
        health = agent.health()
    finally:
        release.set()
        summary = agent.close()
    # every frame was processed, none lost to the fault
    cam = summary.cameras["street"]
    assert cam["frames_processed"] == 300
    # the degraded mode is reported in health ...
    inference = health["inference"]
    assert inference["degraded"] is True
    assert {lad["rung"] for lad in inference["ladders"].values()} == {
        "onnxruntime:CPUExecutionProvider"
    }
    # ... and as one event per worker, START when it degraded (END at shutdown)
    events = read_events(tmp_path / "events.jsonl")
    degraded = [e for e in events if e["rule_type"] == "backend" and e["phase"] == "start"]
    assert len(degraded) == len(agent.workers)
    code = "infer_timeout" if mode == "hang" else "infer_error"
    assert all(e["attributes"]["code"] == code for e in degraded)
    # and rule events were still raised after the fault (frames beyond 40 per worker)
    assert any(e["rule_type"] == "zone" and e["frame_seq"] > 150 for e in events)

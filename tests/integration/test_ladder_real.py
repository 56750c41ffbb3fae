"""The ladder with the real ONNX Runtime CPU session on the real model as its last rung.

The rung above it is a fake of our Backend protocol (no GPU here) that raises or hangs;
after degrading, the ladder's outputs must equal a direct ORT session's outputs, and a
Detector over the ladder must still find the person and the dog in person.jpg.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent.config.inference import OnnxRuntimeBackendConfig
from agent.config.ladder import LadderConfig
from agent.inference.backend import Backend
from agent.inference.detector import Detector, load_image
from agent.inference.errors import BackendError
from agent.inference.ladder import (
    DegradingBackend,
    LadderCode,
    Rung,
    build_ladder,
    onnxruntime_rung,
)
from agent.inference.model import ModelFolder, load_model_folder
from agent.inference.onnxrt import OnnxRuntimeBackend
from tests.backend_helpers import WrappedBackend
from tests.model_helpers import make_model_dir

PERSON, DOG = 0, 16
CPU_CFG = OnnxRuntimeBackendConfig(type="onnxruntime")
CFG = LadderConfig(inference_timeout_s=0.5, failures_to_degrade=2, climb_back_after_s=30)


class FaultyAccelerator(WrappedBackend):
    """A fake GPU rung: delegates to a real CPU session unless told to fail or hang."""

    name = "fake:gpu"

    def __init__(self, model: ModelFolder, state: dict[str, str], gate: threading.Event) -> None:
        super().__init__(OnnxRuntimeBackend(model.onnx_path))
        self._state = state
        self._gate = gate

    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        if self._state["mode"] == "raise":
            raise BackendError("fake:gpu: CUDA error: an illegal memory access was encountered")
        if self._state["mode"] == "hang":
            self._gate.wait(10)
        return self.inner.infer(tensor)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> ModelFolder:
    return load_model_folder(make_model_dir(tmp_path_factory.mktemp("models"), assets))


@pytest.fixture(scope="module")
def person(model: ModelFolder, assets: Path) -> Person:
    """person.jpg's network input and a direct ORT session's outputs for it."""
    direct = OnnxRuntimeBackend(model.onnx_path)
    det = Detector(model, direct)
    tensor, _ = det.preprocess_image(load_image(assets / "person.jpg"))
    tensor = tensor.copy()
    expected = direct.infer(tensor)
    det.close()
    return tensor, expected


Controls = dict[str, Any]
MakeLadder = Callable[[str], tuple[DegradingBackend, Controls]]
Person = tuple[npt.NDArray[np.float32], list[npt.NDArray[np.generic]]]


@pytest.fixture
def ladder_of(model: ModelFolder) -> Iterator[MakeLadder]:
    made: list[tuple[DegradingBackend, threading.Event]] = []

    def make(mode: str) -> tuple[DegradingBackend, Controls]:
        state, gate = {"mode": mode}, threading.Event()
        clock = {"t": 0.0}
        changes: list[tuple[Any, ...]] = []

        def accelerator() -> Backend:
            return FaultyAccelerator(model, state, gate)

        rungs = [
            Rung("fake:gpu", accelerator),
            Rung(
                "onnxruntime:CPUExecutionProvider",
                functools.partial(onnxruntime_rung, CPU_CFG, model),
                cpu=True,
            ),
        ]
        backend = DegradingBackend(
            rungs, CFG, on_change=lambda *c: changes.append(c), clock=lambda: clock["t"]
        )
        made.append((backend, gate))
        return backend, {"state": state, "gate": gate, "clock": clock, "changes": changes}

    yield make
    for backend, gate in made:
        gate.set()
        backend.close()


def test_raising_accelerator_falls_back_to_real_cpu_with_identical_outputs(
    ladder_of: MakeLadder, person: Person
) -> None:
    # given a ladder whose accelerator raises CUDA errors, real ORT CPU below it
    tensor, expected = person
    backend, _ctl = ladder_of("raise")
    # when frames are inferred until the ladder degrades
    with pytest.raises(BackendError, match="illegal memory access"):
        backend.infer(tensor)
    outputs = backend.infer(tensor)
    # then the CPU rung answered with exactly what ORT gives directly
    assert backend.mode.rung == "onnxruntime:CPUExecutionProvider" and backend.mode.degraded
    assert backend.mode.code is LadderCode.INFER_ERROR
    assert backend.name == "onnxruntime:CPUExecutionProvider"
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_hanging_accelerator_times_out_and_detector_keeps_detecting(
    ladder_of: MakeLadder, model: ModelFolder, assets: Path
) -> None:
    # given a Detector over a ladder whose accelerator hangs
    backend, _ctl = ladder_of("hang")
    detector = Detector(model, backend)
    # when an image is detected
    t0 = time.monotonic()
    dets = detector.detect_image(load_image(assets / "person.jpg"))
    # then within the timeout (plus one CPU run) it is answered by the CPU rung
    assert time.monotonic() - t0 < CFG.inference_timeout_s + 2.0
    assert backend.mode.code is LadderCode.INFER_TIMEOUT
    classes = set(dets.class_ids[dets.scores > 0.5].tolist())
    assert {PERSON, DOG} <= classes


def test_climbs_back_to_the_accelerator_when_it_heals(
    ladder_of: MakeLadder, person: Person
) -> None:
    # given a ladder degraded onto the CPU by a faulty accelerator
    tensor, expected = person
    backend, ctl = ladder_of("raise")
    with pytest.raises(BackendError):
        backend.infer(tensor)
    backend.infer(tensor)
    assert backend.mode.degraded
    # when the accelerator heals and the climb-back delay passes
    ctl["state"]["mode"] = "ok"
    ctl["clock"]["t"] += CFG.climb_back_after_s
    deadline = time.monotonic() + 10
    outputs = backend.infer(tensor)
    while backend.mode.rung != "fake:gpu" and time.monotonic() < deadline:
        outputs = backend.infer(tensor)
    # then it runs on the accelerator again, with the same outputs
    assert backend.mode.rung == "fake:gpu" and not backend.mode.degraded
    assert ctl["changes"][-1][:3] == (
        "onnxruntime:CPUExecutionProvider",
        "fake:gpu",
        LadderCode.CLIMBED_BACK,
    )
    np.testing.assert_array_equal(outputs[0], expected[0])


def test_default_ladder_on_a_cpu_only_build_reports_missing_providers(
    model: ModelFolder, person: Person
) -> None:
    # given the default ladder (TensorRT EP, CUDA EP, CPU) on this CPU-only onnxruntime
    tensor, expected = person
    changes: list[tuple[Any, ...]] = []
    backend = build_ladder(LadderConfig(), model, on_change=lambda *c: changes.append(c))
    try:
        # then it starts degraded on the CPU rung, naming why each GPU rung failed
        mode = backend.mode
        assert mode.rung == "onnxruntime:CPUExecutionProvider"
        assert mode.degraded and mode.code is LadderCode.LOAD_FAILED
        assert "TensorrtExecutionProvider is not in this onnxruntime build" in mode.detail
        assert "CUDAExecutionProvider is not in this onnxruntime build" in mode.detail
        assert mode.max_fps == LadderConfig().cpu_fallback_max_fps
        assert changes == [(None, mode.rung, LadderCode.LOAD_FAILED, mode.detail)]
        # and its outputs are ORT's
        np.testing.assert_array_equal(backend.infer(tensor)[0], expected[0])
    finally:
        backend.close()

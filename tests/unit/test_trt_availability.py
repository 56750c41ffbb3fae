"""TensorRT presence detection, the clear fallback message, version split, build progress."""

from __future__ import annotations

import importlib.util
import io
import threading
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config.tensorrt import DEFAULT_ENGINE_DIR, TensorRTBackendConfig, engine_dir
from agent.inference.errors import BackendError
from agent.inference.model import load_model_folder
from agent.inference.tensorrt.availability import (
    TensorRTUnavailable,
    l4t_release,
    probe,
    require,
    trt_major,
)
from agent.inference.tensorrt.builder import (
    BuildProgress,
    EngineBuildError,
    Heartbeat,
    plan_build,
    version_tuple,
)
from agent.inference.tensorrt.cli_ops import build_engine_cmd
from agent.inference.tensorrt.engines import create_tensorrt_backend
from agent.inference.tensorrt.onnx_facts import OnnxFacts, read_onnx_facts
from tests.model_helpers import make_model_dir

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
needs_no_trt = pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")


class FakeDevice:
    def __init__(self, index: int) -> None:
        self.index = index

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def name(self) -> str:
        return "Orin (nvgpu)"


def fake_cuda(count: int = 1, init_error: Exception | None = None) -> Any:
    def init() -> None:
        if init_error is not None:
            raise init_error

    device = type("Device", (FakeDevice,), {"count": staticmethod(lambda: count)})
    return SimpleNamespace(init=init, Device=device)


def importer(modules: dict[str, Any]) -> Any:
    def load(name: str) -> ModuleType:
        if name not in modules:
            raise ImportError(f"No module named '{name}'")
        module: ModuleType = modules[name]
        return module

    return load


TRT = SimpleNamespace(__version__="10.3.0")


@needs_no_trt
def test_probe_here_says_tensorrt_is_missing_and_how_to_install_it() -> None:
    found = probe()
    assert not found.ok
    assert found.message().startswith("TensorRT unavailable: python module 'tensorrt'")
    assert "--system-site-packages" in found.reason


def test_missing_pycuda_is_named() -> None:
    found = probe(importer=importer({"tensorrt": TRT}))
    assert not found.ok
    assert found.trt_version == "10.3.0"
    assert "python module 'pycuda' not importable" in found.reason


def test_cuda_driver_failure_is_named() -> None:
    cuda = fake_cuda(init_error=RuntimeError("cuInit failed: no CUDA-capable device"))
    found = probe(importer=importer({"tensorrt": TRT, "pycuda.driver": cuda}))
    assert not found.ok
    assert "CUDA driver initialisation failed: cuInit failed" in found.reason


def test_no_device_at_the_configured_index() -> None:
    found = probe(1, importer=importer({"tensorrt": TRT, "pycuda.driver": fake_cuda(count=1)}))
    assert not found.ok
    assert found.reason == "no CUDA device 1 (the driver reports 1 device(s))"


def test_everything_present_reports_version_device_and_platform() -> None:
    found = probe(
        importer=importer({"tensorrt": TRT, "pycuda.driver": fake_cuda()}),
        platform=lambda: "# R36 (release), REVISION: 4.0",
    )
    assert found.ok
    assert found.message() == "TensorRT available"
    assert (found.trt_version, found.compute_capability, found.device_name) == (
        "10.3.0",
        "8.7",
        "Orin (nvgpu)",
    )
    assert found.platform.startswith("# R36")


def test_broken_tensorrt_install_is_reported_not_raised() -> None:
    def load(name: str) -> ModuleType:
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    found = probe(importer=load)
    assert not found.ok
    assert "OSError: libnvinfer.so.10" in found.reason


def test_require_raises_a_backend_error_with_the_reason() -> None:
    with pytest.raises(TensorRTUnavailable, match=r"^TensorRT unavailable: python module 'pycuda'"):
        require(importer=importer({"tensorrt": TRT}))
    assert issubclass(TensorRTUnavailable, BackendError)


@needs_no_trt
def test_create_backend_falls_back_with_a_clear_backend_error(tmp_path: Path, assets: Path) -> None:
    # given the real model and a tensorrt backend config on a machine without TensorRT
    model = load_model_folder(make_model_dir(tmp_path, assets))
    cfg = TensorRTBackendConfig(type="tensorrt", cache_dir=tmp_path / "engines")
    # when the ladder asks for the TensorRT backend
    with pytest.raises(BackendError) as info:
        create_tensorrt_backend(cfg, model)
    # then it gets a BackendError it can log and fall through on, and nothing was written
    assert str(info.value).startswith("TensorRT unavailable: python module 'tensorrt'")
    assert not (tmp_path / "engines").exists()


@needs_no_trt
def test_build_engine_command_fails_cleanly_without_tensorrt(tmp_path: Path, assets: Path) -> None:
    out = io.StringIO()
    cfg = TensorRTBackendConfig(type="tensorrt", cache_dir=tmp_path / "engines")
    rc = build_engine_cmd(make_model_dir(tmp_path, assets), cfg, out)
    assert rc == 1
    assert "build-engine: TensorRT unavailable" in out.getvalue()


def test_l4t_release_is_read_from_the_release_file(tmp_path: Path) -> None:
    path = tmp_path / "nv_tegra_release"
    path.write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\nmore\n")
    assert l4t_release(path) == "# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic"
    assert l4t_release(tmp_path / "absent") == ""


# -- version split ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "major", "parts"),
    [("8.6.2.3", 8, (8, 6, 2, 3)), ("10.3.0", 10, (10, 3, 0)), ("11.4.0.106", 11, (11, 4, 0, 106))],
)
def test_versions_parse(version: str, major: int, parts: tuple[int, ...]) -> None:
    assert trt_major(version) == major
    assert version_tuple(version) == parts


def test_garbage_version_is_refused() -> None:
    with pytest.raises(ValueError, match="not a TensorRT version"):
        trt_major("unknown")


@pytest.fixture(scope="module")
def facts(assets: Path) -> OnnxFacts:
    return read_onnx_facts(assets / "yolox_nano.onnx")[0]


def _with(facts: OnnxFacts, *, qdq: bool = False, fp16: bool = False) -> OnnxFacts:
    ops = facts.op_types | ({"QuantizeLinear", "DequantizeLinear"} if qdq else set())
    return OnnxFacts(facts.sha256, facts.inputs, frozenset(ops), fp16)


def test_trt86_fp16_uses_explicit_batch_and_the_fp16_flag(facts: OnnxFacts) -> None:
    plan = plan_build("8.6.2", "fp16", facts, 4)
    assert plan.network_flags == ("EXPLICIT_BATCH",)
    assert plan.builder_flags == ("FP16",)
    assert plan.precision == "fp16"
    assert not plan.strongly_typed


def test_trt10_drops_explicit_batch_and_fp32_clears_tf32(facts: OnnxFacts) -> None:
    plan = plan_build("10.3.0", "fp32", facts, 4)
    assert plan.network_flags == ()
    assert plan.builder_flags == ()
    assert plan.cleared_flags == ("TF32",)
    assert plan.precision == "fp32"


@pytest.mark.parametrize("version", ["8.6.1", "10.7.0"])
def test_qdq_onnx_enables_int8_without_calibration(facts: OnnxFacts, version: str) -> None:
    plan = plan_build(version, "fp16", _with(facts, qdq=True), 1)
    assert plan.builder_flags == ("FP16", "INT8")
    assert plan.precision == "fp16+qdq"


def test_trt11_is_strongly_typed_and_fp32_onnx_builds_fp32(facts: OnnxFacts) -> None:
    # given TensorRT 11 (no FP16 builder flag) and an FP32 ONNX with fp16 requested
    plan = plan_build("11.4.0.106", "fp16", facts, 1)
    # then no weak-typing flag is used, the key says fp32, and a note explains why
    assert plan.strongly_typed
    assert plan.builder_flags == ()
    assert plan.precision == "fp32"
    assert any("strongly typed" in n and "AutoCast" in n for n in plan.notes)


def test_trt11_fp16_onnx_builds_fp16(facts: OnnxFacts) -> None:
    plan = plan_build("11.4.0", "fp16", _with(facts, fp16=True, qdq=True), 1)
    assert (plan.precision, plan.builder_flags, plan.notes) == ("fp16+qdq", (), ())


def test_old_tensorrt_and_bad_precision_are_refused(facts: OnnxFacts) -> None:
    with pytest.raises(EngineBuildError, match=r"8\.6\+"):
        plan_build("8.4.1", "fp16", facts, 1)
    with pytest.raises(EngineBuildError, match="fp16 or fp32"):
        plan_build("10.3.0", "int8", facts, 1)


# -- build progress and time budget -----------------------------------------------------


def test_progress_cancels_once_the_budget_is_spent() -> None:
    now = [0.0]
    lines: list[str] = []
    progress = BuildProgress(budget_s=60, sink=lines.append, clock=lambda: now[0])
    progress.phase_start("Building engine", None, 10)
    progress.phase_start("Tactic timing", "Building engine", 4)
    assert progress.step_complete("Tactic timing", 0)
    assert "Building engine 0/10 > Tactic timing 1/4" in progress.snapshot()
    now[0] = 61.0
    assert not progress.step_complete("Tactic timing", 1)
    assert progress.cancelled
    assert lines == ["build phase started: Building engine (10 steps)"]


def test_heartbeat_reports_while_a_build_runs() -> None:
    beats = threading.Event()
    lines: list[str] = []

    def sink(line: str) -> None:
        lines.append(line)
        beats.set()

    progress = BuildProgress(budget_s=600, sink=sink)
    with Heartbeat(progress, interval_s=0.01) as heartbeat:
        assert beats.wait(timeout=5)
    assert heartbeat.beats >= 1
    assert lines[0].startswith("still building: elapsed=")


# -- config -----------------------------------------------------------------------------


def test_config_defaults_and_cache_dir_resolution(tmp_path: Path) -> None:
    cfg = TensorRTBackendConfig(type="tensorrt")
    assert (cfg.precision, cfg.max_batch, cfg.workspace_mb) == ("fp16", 4, 1024)
    assert engine_dir(cfg) == DEFAULT_ENGINE_DIR
    assert engine_dir(cfg, tmp_path) == tmp_path / "engines"
    explicit = TensorRTBackendConfig(type="tensorrt", cache_dir=tmp_path / "e")
    assert engine_dir(explicit, Path("/elsewhere")) == tmp_path / "e"


@pytest.mark.parametrize(
    "bad",
    [
        {"precision": "int8"},
        {"max_batch": 0},
        {"workspace_mb": 8},
        {"build_timeout_s": 1},
        {"x": 1},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TensorRTBackendConfig.model_validate({"type": "tensorrt", **bad})

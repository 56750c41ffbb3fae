"""The native TensorRT backend on a real GPU: build, accuracy against ONNX Runtime CPU, cache.

Every test here needs `tensorrt`, `pycuda` and a CUDA device; elsewhere the module's
fixture skips them with the reason `probe()` gives. Engine builds take tens of
seconds (minutes on a Jetson), so they are also marked slow; the engine cache is
shared by the whole module so each precision is built once.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from agent.config.tensorrt import Precision, TensorRTBackendConfig
from agent.inference.detector import Detector, load_image
from agent.inference.errors import BackendError
from agent.inference.model import ModelFolder, load_model_folder
from agent.inference.onnxrt import OnnxRuntimeBackend
from agent.inference.tensorrt.availability import Availability, probe
from agent.inference.tensorrt.backend import TensorRTBackend
from agent.inference.tensorrt.cli_ops import verify_cmd
from agent.inference.tensorrt.engine_cache import EngineCache
from agent.inference.tensorrt.engines import EngineReady, open_engine, plan_for
from agent.inference.verify import tolerance_for, verify_backend
from tests.model_helpers import make_model_dir

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

Inputs = list[tuple[str, npt.NDArray[np.float32]]]


@pytest.fixture(scope="module")
def gpu() -> Availability:
    found = probe()
    if not found.ok:
        pytest.skip(f"needs a CUDA GPU with TensorRT and pycuda: {found.message()}")
    return found


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> ModelFolder:
    return load_model_folder(make_model_dir(tmp_path_factory.mktemp("trt-model"), assets))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


def _cfg(cache_dir: Path, precision: Precision = "fp16") -> TensorRTBackendConfig:
    return TensorRTBackendConfig(
        type="tensorrt", precision=precision, cache_dir=cache_dir, build_timeout_s=900
    )


@pytest.fixture(scope="module")
def inputs(model: ModelFolder, assets: Path) -> Inputs:
    """Fresh random inputs (a new seed every run, printed) and real ones: photos, a video frame."""
    seed = int(np.random.default_rng().integers(2**32))
    print(f"random input seed={seed}")
    rng = np.random.default_rng(seed)
    prep = Detector(model, OnnxRuntimeBackend(model.onnx_path))
    real: Inputs = []
    for name in ("person.jpg", "horses.jpg"):
        real.append((name, prep.preprocess_image(load_image(assets / name))[0].copy()))
    with av.open(str(assets / "vtest.avi")) as container:
        frame = next(f for i, f in enumerate(container.decode(video=0)) if i == 100)
    real.append(("vtest#100", prep.preprocess_frame(frame)[0].copy()))
    prep.close()
    noise = [
        (f"random{i}", rng.uniform(0, 255, (1, 3, 416, 416)).astype(np.float32)) for i in range(2)
    ]
    return noise + real


@pytest.fixture
def opened(
    gpu: Availability, model: ModelFolder, cache_dir: Path
) -> Iterator[list[TensorRTBackend]]:
    """Backends opened by a test, closed after it (on the test's thread)."""
    backends: list[TensorRTBackend] = []
    yield backends
    for b in backends:
        b.close()


def _open(
    opened: list[TensorRTBackend], cfg: TensorRTBackendConfig, model: ModelFolder
) -> tuple[TensorRTBackend, EngineReady]:
    backend, ready = open_engine(cfg, model, allow_build=True)
    assert isinstance(backend, TensorRTBackend)
    opened.append(backend)
    return backend, ready


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_built_from_the_shared_onnx_matches_ort_cpu(
    opened: list[TensorRTBackend],
    model: ModelFolder,
    cache_dir: Path,
    inputs: Inputs,
    precision: Precision,
) -> None:
    # given an engine built (or reused) from yolox_nano.onnx at this precision
    backend, ready = _open(opened, _cfg(cache_dir, precision), model)
    reference = OnnxRuntimeBackend(model.onnx_path)
    # when its outputs are compared with ONNX Runtime CPU on random and real inputs
    tol = tolerance_for(ready.plan.precision)
    report = verify_backend(backend, reference, inputs, tol.atol, tol.rtol)
    print(report.format())
    # then every output is within the stated tolerance
    assert report.passed, report.format()


@pytest.fixture(scope="module")
def person(assets: Path) -> npt.NDArray[np.uint8]:
    return load_image(assets / "person.jpg")


def test_detections_agree_with_ort_on_a_real_photo(
    opened: list[TensorRTBackend],
    model: ModelFolder,
    cache_dir: Path,
    person: npt.NDArray[np.uint8],
) -> None:
    backend, _ = _open(opened, _cfg(cache_dir), model)
    got = Detector(model, backend).detect_image(person)
    want = Detector(model, OnnxRuntimeBackend(model.onnx_path)).detect_image(person)
    assert sorted(got.class_ids.tolist()) == sorted(want.class_ids.tolist())
    assert {0, 16} <= set(got.class_ids.tolist())  # person and dog
    np.testing.assert_allclose(np.sort(got.scores), np.sort(want.scores), atol=0.05)


def test_cached_engine_is_reused_on_second_start(
    opened: list[TensorRTBackend], gpu: Availability, model: ModelFolder, cache_dir: Path
) -> None:
    # given an engine from a first start
    cfg = _cfg(cache_dir)
    _first, ready1 = _open(opened, cfg, model)
    # when the backend starts again
    _second, ready2 = _open(opened, cfg, model)
    # then the same engine comes from the cache, no build
    assert not ready2.built
    assert ready2.record.sha256 == ready1.record.sha256
    key, _plan, _ = plan_for(cfg, model, gpu)
    assert key == ready2.key
    assert key.compute_capability == gpu.compute_capability
    assert key.trt_version == gpu.trt_version


def test_static_batch_model_runs_per_frame(
    opened: list[TensorRTBackend], model: ModelFolder, cache_dir: Path
) -> None:
    backend, ready = _open(opened, _cfg(cache_dir), model)
    assert ready.plan.input.per_frame
    assert (backend.max_batch, backend.dynamic_batch) == (1, False)
    with pytest.raises(BackendError, match=r"batch 2 outside 1\.\.1"):
        backend.infer(np.zeros((2, 3, 416, 416), np.float32))


def test_batch_above_one() -> None:
    pytest.skip(
        "yolox_nano.onnx has a static batch of 1: batch > 1 needs a dynamic-batch export "
        "(profile selection is covered by tests/unit/test_trt_batching.py)"
    )


def test_pinned_input_buffer_gives_the_same_outputs(
    opened: list[TensorRTBackend], model: ModelFolder, cache_dir: Path, inputs: Inputs
) -> None:
    backend, _ = _open(opened, _cfg(cache_dir), model)
    tensor = inputs[-1][1]
    copied = backend.infer(tensor)
    staged = backend.input_buffer(1)
    staged[...] = tensor
    in_place = backend.infer(staged)
    np.testing.assert_array_equal(in_place[0], copied[0])


def test_calls_from_another_thread_are_refused(
    opened: list[TensorRTBackend], model: ModelFolder, cache_dir: Path
) -> None:
    backend, _ = _open(opened, _cfg(cache_dir), model)
    errors: list[Exception] = []

    def call() -> None:
        try:
            backend.infer(np.zeros((1, 3, 416, 416), np.float32))
        except BackendError as exc:
            errors.append(exc)

    worker = threading.Thread(target=call, name="not-the-owner")
    worker.start()
    worker.join(timeout=30)
    assert len(errors) == 1
    assert "thread not-the-owner" in str(errors[0])


def test_engine_refused_by_tensorrt_is_rebuilt_not_loaded(
    opened: list[TensorRTBackend], gpu: Availability, model: ModelFolder, tmp_path: Path
) -> None:
    # given a cache entry whose bytes are consistent with the index but no engine
    cfg = _cfg(tmp_path / "engines")
    key, _plan, _ = plan_for(cfg, model, gpu)
    EngineCache(tmp_path / "engines").store(key, b"not an engine" * 64, 1.0)
    # when the backend starts
    backend, ready = _open(opened, cfg, model)
    # then TensorRT's refusal invalidated it and a real engine was built and loaded
    assert ready.built
    assert ready.record.size > 100_000
    assert len(backend.infer(np.zeros((1, 3, 416, 416), np.float32))) == 1


def test_models_verify_command_passes_for_tensorrt(
    gpu: Availability, model: ModelFolder, cache_dir: Path
) -> None:
    out = io.StringIO()
    rc = verify_cmd(model.path, _cfg(cache_dir), out)
    assert rc == 0, out.getvalue()

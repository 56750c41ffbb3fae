"""Backend verification on the real model: ONNX Runtime against ONNX Runtime, and against
backends of our own protocol that compute something else."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.config.inference import OnnxRuntimeBackendConfig
from agent.config.tensorrt import TensorRTBackendConfig
from agent.inference.detector import Detector, load_image
from agent.inference.errors import BackendError
from agent.inference.model import ModelFolder, load_model_folder
from agent.inference.onnxrt import OnnxRuntimeBackend
from agent.inference.tensorrt.cli_ops import verification_inputs, verify_cmd
from agent.inference.verify import tolerance_for, verify_backend
from tests.backend_helpers import WrappedBackend
from tests.model_helpers import make_model_dir


class PerturbedBackend(WrappedBackend):
    """A Backend (our protocol) that returns a real backend's outputs, one element shifted."""

    name = "perturbed"

    def __init__(
        self, inner: OnnxRuntimeBackend, delta: float, at: tuple[int, ...] = (0, 7, 4)
    ) -> None:
        super().__init__(inner)
        self.delta = delta
        self.at = at

    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        outputs = self.inner.infer(tensor)
        out = np.array(outputs[0], dtype=np.float32)
        out[self.at] += self.delta
        return [out, *outputs[1:]]


class FailingBackend(PerturbedBackend):
    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        raise BackendError("perturbed: CUDA error 700 (illegal address)")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> ModelFolder:
    return load_model_folder(make_model_dir(tmp_path_factory.mktemp("verify"), assets))


@pytest.fixture(scope="module")
def inputs(model: ModelFolder, assets: Path) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """Golden + random inputs from the manifest, and a real photograph."""
    ref = OnnxRuntimeBackend(model.onnx_path)
    tensor, _lb = Detector(model, ref).preprocess_image(load_image(assets / "person.jpg"))
    ref.close()
    return [*verification_inputs(model, seed=3), ("person.jpg", tensor.copy())]


def test_ort_against_a_second_ort_session_passes(
    model: ModelFolder, inputs: list[tuple[str, npt.NDArray[np.float32]]]
) -> None:
    # given two independent ONNX Runtime CPU sessions on the real model
    candidate = OnnxRuntimeBackend(model.onnx_path, intra_op_threads=2)
    reference = OnnxRuntimeBackend(model.onnx_path)
    # when they are compared at the strict FP32 tolerance
    tol = tolerance_for("fp32")
    report = verify_backend(candidate, reference, inputs, tol.atol, tol.rtol)
    # then every output of every input agrees
    assert report.passed, report.format()
    assert len(report.diffs) == 3
    assert report.max_abs_error <= 1e-4
    assert report.format().splitlines()[-1].startswith("PASS")


def test_a_perturbed_backend_fails_and_the_report_names_the_max_error(
    model: ModelFolder, inputs: list[tuple[str, npt.NDArray[np.float32]]]
) -> None:
    # given a backend whose output differs from the real one by 0.5 in one element
    candidate = PerturbedBackend(OnnxRuntimeBackend(model.onnx_path), delta=0.5)
    reference = OnnxRuntimeBackend(model.onnx_path)
    # when it is verified even at the loose FP16 tolerance
    tol = tolerance_for("fp16")
    report = verify_backend(candidate, reference, inputs, tol.atol, tol.rtol)
    # then it fails, and the report names the error, where it is, and how many elements
    assert not report.passed
    assert report.max_abs_error == pytest.approx(0.5, abs=1e-5)
    assert all(d.worst_at == (0, 7, 4) and d.mismatched == 1 for d in report.diffs)
    text = report.format()
    assert "max abs error 0.5 at [0, 7, 4]" in text
    assert "1 element(s) outside" in text
    assert text.splitlines()[-1] == "FAIL: max abs error 0.5 over 3 comparison(s)"
    assert "tolerance: |candidate - reference| <= 0.05 + 0.05 * |reference|" in text


def test_a_perturbation_within_tolerance_passes(
    model: ModelFolder, inputs: list[tuple[str, npt.NDArray[np.float32]]]
) -> None:
    candidate = PerturbedBackend(OnnxRuntimeBackend(model.onnx_path), delta=0.01)
    report = verify_backend(candidate, OnnxRuntimeBackend(model.onnx_path), inputs, 0.05, 0.05)
    assert report.passed
    assert report.max_abs_error == pytest.approx(0.01, abs=1e-5)


def test_non_finite_and_failing_candidates_fail(
    model: ModelFolder, inputs: list[tuple[str, npt.NDArray[np.float32]]]
) -> None:
    reference = OnnxRuntimeBackend(model.onnx_path)
    nan = PerturbedBackend(OnnxRuntimeBackend(model.onnx_path), delta=float("nan"))
    report = verify_backend(nan, reference, inputs[:1])
    assert not report.passed
    assert "1 non-finite value(s)" in report.format()
    failing = FailingBackend(OnnxRuntimeBackend(model.onnx_path), delta=0.0)
    report = verify_backend(failing, reference, inputs[:1])
    assert not report.passed
    assert "CUDA error 700" in report.error


def test_verify_command_with_onnxruntime_passes(model: ModelFolder) -> None:
    out = io.StringIO()
    rc = verify_cmd(model.path, OnnxRuntimeBackendConfig(type="onnxruntime"), out)
    assert rc == 0, out.getvalue()
    assert "\nPASS: max abs error" in out.getvalue()
    assert "golden" in out.getvalue()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here"
)
def test_verify_command_with_tensorrt_here_says_unavailable(model: ModelFolder) -> None:
    out = io.StringIO()
    cfg = TensorRTBackendConfig(type="tensorrt", cache_dir=model.path.parent / "engines")
    assert verify_cmd(model.path, cfg, out) == 1
    assert out.getvalue().startswith("verify failed: TensorRT unavailable:")


def test_verify_command_on_a_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    out = io.StringIO()
    rc = verify_cmd(tmp_path / "nope", OnnxRuntimeBackendConfig(type="onnxruntime"), out)
    assert rc == 1
    assert "does not exist" in out.getvalue()

"""Validation of a staged model before it may serve: it loads, it is right, it is fast enough.

1. `load_model_folder` with the sha256 check and an ONNX Runtime probe: a corrupt
   ONNX or outputs that do not fit the family fail here (`invalid_model`).
2. A backend is built with the same factory the pipeline uses (for TensorRT that
   is where the engine is built, off the serving path), and `check_golden` runs the
   manifest's golden input (`golden_failed`).
3. `runs` timed inferences on the golden input; the median must be within the
   budget (`too_slow`). The first run is a warm-up and is not timed.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.inference.backend import Backend
from agent.inference.detector import Detector
from agent.inference.errors import GoldenError, InferenceError, ModelError
from agent.inference.golden import check_golden, golden_image
from agent.inference.model import GoldenSpec, ModelFolder, load_model_folder
from agent.ota.errors import OtaError, ReasonCode

log = logging.getLogger(__name__)

BackendFactory = Callable[[ModelFolder], Backend]


@dataclass(frozen=True)
class ValidationReport:
    model: ModelFolder
    latency_ms_median: float
    latency_ms_max: float
    golden_checked: bool


def _load(path: Path, name: str, version: str) -> ModelFolder:
    try:
        model = load_model_folder(path, verify_sha256=True, probe=True)
    except ModelError as exc:
        raise OtaError(ReasonCode.INVALID_MODEL, str(exc)) from exc
    m = model.manifest
    if (m.name, m.version) != (name, version):
        raise OtaError(
            ReasonCode.MISMATCH,
            f"model.json says {m.name}@{m.version}, the signed manifest {name}@{version}",
        )
    return model


def _time_runs(detector: Detector, model: ModelFolder, runs: int) -> list[float]:
    spec = model.manifest.golden or GoldenSpec(image=None, expected=[])
    image = golden_image(model, spec)
    detector.detect_image(image)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        detector.detect_image(image)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def validate_model(
    path: Path,
    name: str,
    version: str,
    *,
    backend_factory: BackendFactory,
    latency_budget_ms: float,
    runs: int,
) -> ValidationReport:
    """Raise OtaError(invalid_model | mismatch | golden_failed | too_slow) or report."""
    model = _load(path, name, version)
    try:
        backend = backend_factory(model)
    except InferenceError as exc:
        raise OtaError(ReasonCode.INVALID_MODEL, f"backend refused the model: {exc}") from exc
    detector = Detector(model, backend)
    try:
        check_golden(detector, model)
        times = _time_runs(detector, model, runs)
    except GoldenError as exc:
        raise OtaError(ReasonCode.GOLDEN_FAILED, str(exc)) from exc
    except InferenceError as exc:
        raise OtaError(ReasonCode.INVALID_MODEL, f"inference failed: {exc}") from exc
    finally:
        detector.close()
    median = statistics.median(times)
    if median > latency_budget_ms:
        raise OtaError(
            ReasonCode.TOO_SLOW,
            f"median latency {median:.1f} ms over {runs} runs exceeds the "
            f"{latency_budget_ms:.1f} ms budget",
        )
    log.info(
        "model validated name=%s version=%s latency_ms_median=%.1f golden=%s",
        name, version, median, model.manifest.golden is not None,
    )  # fmt: skip
    return ValidationReport(model, median, max(times), model.manifest.golden is not None)


__all__ = ["BackendFactory", "ValidationReport", "validate_model"]

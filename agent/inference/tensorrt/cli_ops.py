"""The work behind `edge-agent models build-engine DIR` and `edge-agent models verify DIR`.

Both print human-readable progress and results to `out` and return a process exit
code (0 ok, 1 failed); neither raises for an expected failure (TensorRT missing, a
bad model folder, a failed build, outputs out of tolerance): the message says what
happened. `agent/cli.py` parses the arguments and calls these.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt

from agent.config.inference import OnnxRuntimeBackendConfig
from agent.config.tensorrt import TensorRTBackendConfig, engine_dir
from agent.inference.backend import Backend
from agent.inference.detector import Detector
from agent.inference.errors import InferenceError
from agent.inference.golden import check_golden, golden_image
from agent.inference.model import GoldenSpec, ModelFolder, load_model_folder
from agent.inference.onnxrt import CPU_PROVIDER, OnnxRuntimeBackend, create_backend
from agent.inference.preprocess import compute_letterbox, letterbox_array, to_nchw_float
from agent.inference.tensorrt.availability import probe
from agent.inference.tensorrt.engines import open_engine
from agent.inference.verify import tolerance_for, verify_backend

EXIT_OK = 0
EXIT_FAILED = 1

AnyBackendConfig = OnnxRuntimeBackendConfig | TensorRTBackendConfig


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def build_engine_cmd(
    model_dir: str | Path,
    cfg: TensorRTBackendConfig,
    out: TextIO,
    *,
    state_dir: Path | None = None,
) -> int:
    """Build (or reuse) the TensorRT engine for a model folder and prove it loads."""
    avail = probe(cfg.device_index)
    if not avail.ok:
        _say(out, f"build-engine: {avail.message()}")
        return EXIT_FAILED
    _say(
        out,
        f"TensorRT {avail.trt_version} on {avail.device_name} (compute {avail.compute_capability})"
        f"; engines in {engine_dir(cfg, state_dir)}",
    )
    try:
        model = load_model_folder(model_dir)
        backend, ready = open_engine(
            cfg, model, state_dir=state_dir, allow_build=True, sink=lambda s: _say(out, f"  {s}")
        )
        backend.close()
    except InferenceError as exc:
        _say(out, f"build-engine failed: {exc}")
        return EXIT_FAILED
    for note in ready.plan.notes:
        _say(out, f"note: {note}")
    how = f"built in {ready.record.build_s:.1f}s" if ready.built else "reused from the cache"
    p = ready.plan.input.profile
    _say(
        out,
        f"engine ok ({how}): {ready.path}\n  precision={ready.plan.precision} "
        f"batch min/opt/max={p.min}/{p.opt}/{p.max} "
        f"{'static (per frame)' if ready.plan.input.static_batch else 'dynamic'} "
        f"size={ready.record.size} bytes",
    )
    return EXIT_OK


def verification_inputs(
    model: ModelFolder, seed: int = 0
) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """The manifest's golden input (or a pad-value image) and one fixed random input."""
    inp = model.manifest.input
    spec = model.manifest.golden or GoldenSpec(image=None, expected=[])
    image = golden_image(model, spec)
    lb = compute_letterbox(image.shape[1], image.shape[0], inp.width, inp.height, inp.letterbox)
    padded = letterbox_array(image, lb, channel_order=inp.channel_order, pad_value=inp.pad_value)
    golden = to_nchw_float(padded, inp.scale)
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(inp.height, inp.width, 3), dtype=np.uint8)
    return [
        (f"golden({spec.image or 'pad'})", golden),
        (f"random(seed={seed})", to_nchw_float(noise, inp.scale)),
    ]


def _candidate(
    backend_cfg: AnyBackendConfig, model: ModelFolder, state_dir: Path | None
) -> tuple[Backend, str]:
    if isinstance(backend_cfg, TensorRTBackendConfig):
        backend, ready = open_engine(backend_cfg, model, state_dir=state_dir, allow_build=True)
        return backend, ready.plan.precision
    return create_backend(backend_cfg, model), "fp32"


def _golden_line(detector: Detector, model: ModelFolder) -> tuple[bool, str]:
    if model.manifest.golden is None:
        return True, "golden: none in the manifest"
    try:
        dets = check_golden(detector, model)
    except InferenceError as exc:
        return False, f"FAIL golden: {exc}"
    return True, f"ok   golden: {0 if dets is None else len(dets)} detection(s) as expected"


def verify_cmd(
    model_dir: str | Path,
    backend_cfg: AnyBackendConfig,
    out: TextIO,
    *,
    state_dir: Path | None = None,
    seed: int = 0,
) -> int:
    """Compare the configured backend with ONNX Runtime CPU on the model's golden inputs."""
    try:
        model = load_model_folder(model_dir)
        reference = OnnxRuntimeBackend(model.onnx_path, (CPU_PROVIDER,))
        candidate, precision = _candidate(backend_cfg, model, state_dir)
    except InferenceError as exc:
        _say(out, f"verify failed: {exc}")
        return EXIT_FAILED
    try:
        tol = tolerance_for(precision)
        report = verify_backend(
            candidate, reference, verification_inputs(model, seed), tol.atol, tol.rtol
        )
        golden_ok, golden_text = _golden_line(Detector(model, candidate), model)
    finally:
        candidate.close()
        reference.close()
    _say(out, report.format())
    _say(out, golden_text)
    return EXIT_OK if report.passed and golden_ok else EXIT_FAILED


__all__ = ["build_engine_cmd", "verification_inputs", "verify_cmd"]
